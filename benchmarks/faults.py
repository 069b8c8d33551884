"""The fault suite at the issue's sizes, as one JSON summary.

    python -m benchmarks.faults [--kills 50] [--bad-inputs 1000] [--overload-s 120]
                                [--restarts 1] [--only kills,restart,bad_input,overload,races]

Runs the scenarios of ``tests/faults/scenarios.py`` against real worker
processes (``celery -A faec_rec.workers.app worker``) and real Redis:

* ``kills``: SIGKILL mid-enrolment (alternately the whole worker and the pool
  process under the task) while frames wait; lost / duplicated enrolment images
  and frames. Target: 0 lost, 0 duplicated over 50 kills.
* ``restart``: a PRIVATE redis-server (AOF, own port) stopped for ``--down-s``
  and started again during a camera run; recovery_s. Target: within 10 s.
* ``bad_input``: damaged images through the recognition task; crashed.
  Target: 0 crashes on 1,000 inputs.
* ``overload``: two cameras offering ``--overload-factor`` x the measured
  capacity for ``--overload-s``; worker RSS, drops, latency. Target: bounded memory.
* ``races``: the same person enrolled by two clients at once; a person
  forgotten while their face is being recognised.

Prints one JSON object: the sizes run and one summary per fault (trials, lost,
duplicated, crashed, recovery_s where they apply, and the details behind them),
plus the seconds each took. Uses its own key prefixes on ``--redis-url``
(default: the tests' database 13) and deletes its keys afterwards; the shared
Redis is never stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces"))
DEFAULT_REDIS = os.environ.get("FAEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
FAULTS = ("kills", "restart", "bad_input", "overload", "races")
PERSON, OTHER = "Arnold_Schwarzenegger", "Andre_Agassi"
VIDEO = "face_recognition__short_hamilton_clip.mp4"

log = logging.getLogger("benchmarks.faults")


def _photos(folder: str) -> list[Path]:
    photos = sorted((FACES / "lfw" / folder).glob("*.jpg"))
    if len(photos) < 10:
        raise SystemExit(f"need the LFW photos of {folder} under {FACES / 'lfw'} (set FAEC_TEST_FACES)")
    return photos


def _timed(name: str, run: Callable[[], dict[str, Any]], out: dict[str, Any]) -> None:
    start = time.monotonic()
    log.info("fault %s: running", name)
    try:
        out[name] = run()
    except Exception as exc:  # one fault failing must not hide the others' numbers
        log.exception("fault %s failed", name)
        out[name] = {"failed": f"{type(exc).__name__}: {exc}"}
    out[name]["wall_s"] = round(time.monotonic() - start, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    person, other = _photos(PERSON), _photos(OTHER)
    frame, other_frame = person[10].read_bytes(), other[-1].read_bytes()
    only = set(args.only.split(",")) if args.only else set(FAULTS)
    unknown = only - set(FAULTS)
    if unknown:
        raise SystemExit(f"--only: unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    out: dict[str, Any] = {"sizes": {"kills": args.kills, "bad_inputs": args.bad_inputs, "overload_s": args.overload_s,
                                     "overload_factor": args.overload_factor, "restarts": args.restarts,
                                     "down_s": args.down_s, "concurrency": args.concurrency}}
    root = Path(tempfile.mkdtemp(prefix="faec-faults-"))
    try:
        _run_faults(args, only, out, root, person, other, frame, other_frame)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # worker logs, crops, converted models
    return out


def _run_faults(args: argparse.Namespace, only: set[str], out: dict[str, Any], root: Path,
                person: list[Path], other: list[Path], frame: bytes, other_frame: bytes) -> None:
    from tests.faults import scenarios

    if "kills" in only and args.kills:
        def kills() -> dict[str, Any]:
            dep = scenarios.Deployment(args.redis_url, root / "kills")
            try:
                return scenarios.worker_kills(dep, person[:4], frame, args.kills, frames_per_trial=args.frames_per_kill,
                                              report_wait_s=args.report_wait_s)
            finally:
                dep.close()
        _timed("kills", kills, out)

    if "restart" in only and args.restarts:
        def restart() -> dict[str, Any]:
            trials = [scenarios.redis_restart(root / f"restart{i}", person[:3], FACES / "videos" / VIDEO,
                                              down_s=args.down_s, before_s=3.0, after_s=4.0)
                      for i in range(args.restarts)]
            return {
                "trials": len(trials),
                "lost": sum(t["lost"] for t in trials),
                "duplicated": sum(t["duplicated"] for t in trials),
                "crashed": sum(t["crashed"] for t in trials),
                "recovery_s": max(t["recovery_s"] for t in trials),
                "frames_unsettled": sum(t["frames_unsettled"] for t in trials),
                "runs": trials,
            }
        _timed("restart", restart, out)

    shared_needed = only & {"bad_input", "overload", "races"}
    if shared_needed:
        dep = scenarios.Deployment(args.redis_url, root / "shared")
        try:
            worker = dep.start_worker(concurrency=args.concurrency).wait_ready()
            if "bad_input" in only and args.bad_inputs:
                _timed("bad_input", lambda: scenarios.bad_input_run(dep, worker, frame, args.bad_inputs), out)
            if "overload" in only and args.overload_s:
                _timed("overload", lambda: scenarios.overload(dep, worker, frame, seconds=args.overload_s,
                                                              factor=args.overload_factor), out)
            if "races" in only:
                _timed("same_person_twice", lambda: scenarios.same_person_twice(dep, person[:6]), out)
                _timed("forget_during_recognition", lambda: scenarios.forget_during_recognition(
                    dep, worker, other[:3], other_frame), out)
        finally:
            dep.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="worker kills mid-enrolment (issue target: 50)")
    parser.add_argument("--frames-per-kill", type=int, default=6, help="frames queued with each killed enrolment")
    parser.add_argument("--report-wait-s", type=float, default=180.0,
                        help="seconds to wait for a killed enrolment's report before counting it stuck (lost)")
    parser.add_argument("--bad-inputs", type=int, default=1000, help="damaged images through recognition (target: 1000)")
    parser.add_argument("--overload-s", type=float, default=120.0, help="seconds of overload (target: 120)")
    parser.add_argument("--overload-factor", type=float, default=2.0, help="offered load over measured capacity")
    parser.add_argument("--restarts", type=int, default=1, help="Redis stop/start cycles (one private Redis each)")
    parser.add_argument("--down-s", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes of the shared worker")
    parser.add_argument("--only", default="", help=f"comma list of faults to run ({', '.join(FAULTS)})")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="Redis for everything but the restart fault")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(run(args), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
