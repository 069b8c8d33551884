"""The folder walk (faec_rec.files.iter_files) streams: a generator over os.scandir that
holds one folder's names at a time, in the order sorted(rglob) gives. Real files in tmp_path."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

from faec_rec.files import iter_files, walk_images


def _tree(root: Path, folders: int, files: int) -> None:
    for f in range(folders):
        sub = root / f"d{f:04d}"
        sub.mkdir()
        for i in range(files):
            (sub / f"photo_{i:05d}_with_a_long_name_like_a_camera_gives.jpg").touch()


def test_the_walk_is_a_generator_that_reads_folders_as_it_goes(tmp_path: Path) -> None:
    _tree(tmp_path, folders=3, files=2)
    walk = iter_files(tmp_path)
    assert inspect.isgenerator(walk)
    first, is_image = next(walk)
    assert first == tmp_path / "d0000" / "photo_00000_with_a_long_name_like_a_camera_gives.jpg" and is_image
    # a file added to a folder the walk has not opened yet is still found: nothing was listed ahead
    (tmp_path / "d0002" / "late.png").touch()
    (tmp_path / "d0002" / "notes.txt").touch()
    rest = list(walk)
    assert (tmp_path / "d0002" / "late.png", True) in rest and (tmp_path / "d0002" / "notes.txt", False) in rest
    assert len(rest) == 3 * 2 + 2 - 1


def test_the_walk_keeps_the_sorted_rglob_order_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ("b/x.jpg", "a.jpg", "a/z.PNG", "a/y.txt", "a b/c.webp", ".hidden/h.jpg", "a/.h.jpg", "a-b.gif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "dirlink").symlink_to(tmp_path / "b")  # a symlinked folder is not walked (as rglob)
    expected = [p for p in sorted(tmp_path.rglob("*"))
                if not any(part.startswith(".") for part in p.relative_to(tmp_path).parts) and p.is_file()]
    assert [p for p, _ in iter_files(tmp_path)] == expected
    images, others = walk_images(tmp_path)
    assert others == [tmp_path / "a" / "y.txt"] and len(images) == len(expected) - 1


_PEAKS = """
import json, sys, tracemalloc
from pathlib import Path
from faec_rec.files import iter_files, walk_images
root = Path(sys.argv[1])
for _ in iter_files(root / "d0000"):  # first-use imports and caches are not the walk's
    pass
tracemalloc.start()
count = sum(1 for _ in iter_files(root))
_, streamed = tracemalloc.get_traced_memory()
tracemalloc.reset_peak()
images, _ = walk_images(root)
_, listed = tracemalloc.get_traced_memory()
print(json.dumps({"count": count, "listed_count": len(images), "streamed": streamed, "listed": listed}))
"""


def test_walking_a_big_tree_holds_one_folder_of_names_not_the_tree(tmp_path: Path) -> None:
    """20,000 files in 200 folders: counting them through the walk peaks under 1 MB and at a
    fraction of what listing them takes, so a 100,000-photo folder streams in bounded memory.
    Measured in a fresh interpreter, so no other test's threads allocate meanwhile. (Most of
    the walk's peak is pathlib interning each name, sys.intern's table: measured 0.43 MB at
    10,000 files, 0.84 MB at 20,000 and 0.87 MB at 60,000, where listing took 19 MB.)"""
    _tree(tmp_path, folders=200, files=100)
    run = subprocess.run([sys.executable, "-c", _PEAKS, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    peaks = json.loads(run.stdout)
    assert peaks["count"] == peaks["listed_count"] == 20_000
    assert peaks["streamed"] < 1_000_000, peaks
    assert peaks["streamed"] * 5 < peaks["listed"], peaks


def test_an_unreadable_folder_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.jpg").touch()
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "b.jpg").touch()
    locked.chmod(0)
    try:
        found = [p for p, _ in iter_files(tmp_path)]
    finally:
        locked.chmod(0o700)
    assert tmp_path / "ok" / "a.jpg" in found
    if os.geteuid() != 0:  # root reads it anyway
        assert found == [tmp_path / "ok" / "a.jpg"]
