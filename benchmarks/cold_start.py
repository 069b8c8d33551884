"""Cold start: `faec-rec identify one.jpg` with nothing running (embedded default: the command
starts its private Redis and its in-process worker, loads TensorFlow and the model, identifies
one photo, stops everything), as a new user runs it.

    python -m benchmarks.cold_start [--runs 5] [--image PATH]

Prints JSON: every run's wall time and its median (after one setup run in the same fresh home,
which also builds the model caches: ``setup_run_s``), the floor that importing TensorFlow
alone sets in a fresh interpreter (``import_tensorflow_s``, median of 3), the load average
before and after, the machine and the date. The machine is shared: read the load with the times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "faces" / "lfw" / "David_Beckham" / "David_Beckham_0001.jpg"
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if run.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr[-2000:]}")
    return time.perf_counter() - start, run.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", type=Path, default=Path(os.environ.get("FAEC_BENCH_IMAGE", DEFAULT_IMAGE)))
    args = ap.parse_args(argv)
    out: dict[str, object] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                              "load_avg_before": os.getloadavg(), "image": str(args.image)}
    root = Path(tempfile.mkdtemp(prefix="faec-cold-"))
    try:
        (root / "home").mkdir()
        shutil.copy(args.image, root / "one.jpg")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
        env["HOME"] = str(root / "home")
        cmd = [str(BIN / "faec-rec"), "identify", "one.jpg", "--report", "r.json"]
        out["setup_run_s"] = round(timed(cmd, env, root)[0], 2)
        runs = [round(timed(cmd, env, root)[0], 2) for _ in range(args.runs)]
        out["runs_s"] = runs
        out["median_s"] = statistics.median(runs)
        tf = [round(timed([sys.executable, "-c", "import tensorflow"], env, root)[0], 2) for _ in range(3)]
        out["import_tensorflow_s"] = statistics.median(tf)
    finally:
        out["load_avg_after"] = os.getloadavg()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
