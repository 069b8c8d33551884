"""Snapshot files: atomic writes, a killed writer, damaged files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from faec_rec.index.snapshot import list_snapshots, load_newest, read_snapshot, write_snapshot


def test_write_and_read(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_snapshot(tmp_path, "17-2", {"version": "base"}, {"x": x})
    meta, arrays = read_snapshot(path)
    assert meta["position"] == "17-2" and meta["version"] == "base"
    np.testing.assert_array_equal(arrays["x"], x)


def test_keeps_the_newest_two(tmp_path: Path) -> None:
    for pos in ("1-0", "20-0", "3-0", "100-5"):
        write_snapshot(tmp_path, pos, {}, {"x": np.zeros(1)})
    names = [p.name for p in list_snapshots(tmp_path)]
    assert len(names) == 2 and "100" in names[0] and "20" in names[1]


def test_killed_writer_leaves_the_previous_snapshot_loadable(tmp_path: Path) -> None:
    write_snapshot(tmp_path, "5-0", {"n": 1}, {"x": np.ones(10, np.float32)})
    script = textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from faec_rec.index.snapshot import write_snapshot
        big = np.ones(25_000_000, np.float32)  # 100 MB: long enough to be killed mid-write
        write_snapshot(Path({str(tmp_path)!r}), "9-0", {{"n": 2}}, {{"x": big}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tmps = list(tmp_path.glob(".snapshot-*.tmp"))
            if tmps and tmps[0].stat().st_size > 1_000_000:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.glob(".snapshot-*.tmp")), "the torn temporary file should be left behind"
    path, meta, arrays = load_newest(tmp_path)
    assert meta["position"] == "5-0" and meta["n"] == 1
    np.testing.assert_array_equal(arrays["x"], np.ones(10, np.float32))
    # The next writer removes the dead writer's temporary file.
    write_snapshot(tmp_path, "10-0", {}, {"x": np.zeros(1)})
    assert not list(tmp_path.glob(".snapshot-*.tmp"))


def test_damaged_newest_falls_back_to_an_older_one(tmp_path: Path) -> None:
    write_snapshot(tmp_path, "1-0", {"n": 1}, {"x": np.ones(3)})
    newest = write_snapshot(tmp_path, "2-0", {"n": 2}, {"x": np.ones(3)})
    newest.write_bytes(newest.read_bytes()[:40])
    _, meta, _ = load_newest(tmp_path)
    assert meta["n"] == 1
    assert load_newest(tmp_path / "absent") is None
