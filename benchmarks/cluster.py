"""Operations across machines, at the issue's sizes, as one JSON summary.

    python -m benchmarks.cluster [--partitions 20] [--partition-s 60] [--kills 10]
                                 [--producer-cut-s 30] [--delay-ms 50] [--failovers 1]
                                 [--only hosts,delay,failover]

* ``hosts`` (tests/cluster/netbed.py, needs root): a Redis host, two worker hosts
  and a producer host as network namespaces running the real commands, a camera
  on a looped video and an enrolment every few seconds throughout. Faults in
  turn: ``--partitions`` cut/heal cycles of a worker host (``--partition-s``
  each; recovery_s = heal -> that host finishes a task again), ``--kills`` whole
  worker-host kills (every process, SIGKILL; the host restarts its worker before
  the next kill), the producer host cut off for ``--producer-cut-s``, and the
  Redis link delayed by ``--delay-ms`` ± 10 ms with netem where the kernel has
  it. Counts lost/duplicated enrolments, frames and events at the end.
  Targets: 0 lost and 0 duplicated enrolments; every frame processed once or
  counted as dropped; work resumes within 10 s of a partition healing.
* ``delay``: the same bed with Redis behind tests/cluster/delay_proxy.py (this
  kernel has no ``sch_netem``): p50/p95 capture-to-event with the link direct, then
  ``--delay-ms`` ± 10 ms each way, then also ``--loss-pct`` (as retransmission delay),
  ``--delay-processes`` worker processes on each of the two worker hosts.
  Target: p95 <= 250 ms at 50 ± 10 ms.
* ``failover``: tests/cluster/sentinel_bed.py, three sentinels, master + replica,
  the master SIGKILLed during an enrolment burst ``--failovers`` times (a fresh
  bed each); lost/duplicated, failover_s, resume_s. Target: resume within 30 s.

Benchmarks share this machine with others: ratios and counts matter, the load
average is recorded with the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces"))
VIDEO = "face_recognition__short_hamilton_clip.mp4"


def _people(n: int, offset: int = 0) -> dict[str, Path]:
    folders = sorted(p for p in (FACES / "lfw").iterdir() if p.is_dir())
    out: dict[str, Path] = {}
    for folder in folders[offset:]:
        photos = sorted(folder.glob("*.jpg"))
        if photos:
            out[folder.name.replace("_", " ")] = photos[0]
        if len(out) >= n:
            break
    return out


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_hosts(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.cluster.netbed import netem_available, unavailable_reason
    from tests.cluster.scenario import ClusterRun

    reason = unavailable_reason()
    if reason:
        return {"skipped": reason}
    run = ClusterRun(root / "hosts").start()
    started = time.monotonic()
    out: dict[str, Any] = {"load_avg_1m_start": _load()}
    try:
        run.start_worker("w1")
        run.start_worker("w2")
        run.wait_workers(["w1", "w2"])
        camera = run.start_camera(FACES / "videos" / VIDEO, duration_s=24 * 3600)
        enrol = run.start_enrolments(_people(args.enrolments), every_s=args.enrol_every_s)
        time.sleep(5)
        partitions = []
        for i in range(args.partitions):
            partitions.append(run.partition("w1" if i % 2 == 0 else "w2", args.partition_s))
            time.sleep(args.settle_s)
        kills = []
        for i in range(args.kills):
            host = "w2" if i % 2 == 0 else "w1"
            kills.append(run.kill_host(host))
            run.restart_worker(host)
            run.wait_workers([host])
            time.sleep(args.settle_s)
        producer = None
        if args.producer_cut_s:
            r, keys = run.redis(), run.keys()
            pushed = int(r.hget(keys.camera_stats("door"), "pushed") or 0)
            run.bed.cut("prod")
            time.sleep(args.producer_cut_s)
            pushed_cut = int(r.hget(keys.camera_stats("door"), "pushed") or 0)
            run.bed.heal("prod")
            healed = time.monotonic()
            from tests.cluster.netbed import wait_for

            try:
                wait_for(lambda: int(r.hget(keys.camera_stats("door"), "pushed") or 0) > pushed_cut, 180,
                         "the producer to push after the cut", every=0.1)
                recovery = round(time.monotonic() - healed, 2)
            except AssertionError:
                recovery = None
            producer = {"cut_s": args.producer_cut_s, "pushed_during_cut": pushed_cut - pushed, "recovery_s": recovery}
            time.sleep(args.settle_s)
        delay: dict[str, Any] = {"skipped": "the kernel has no sch_netem (tc netem)"}
        if args.delay_ms and netem_available():
            from tests.faults.harness import latency_ms

            run.bed.delay("redis", args.delay_ms, 10.0, args.loss_pct)
            time.sleep(args.delay_s)
            delay = {"delay_ms": args.delay_ms, "jitter_ms": 10, "loss_pct": args.loss_pct,
                     "latency_ms": latency_ms(run.redis(), run.keys(), "door")}
        camera.send_signal(signal.SIGINT)
        camera.wait(timeout=120)
        enrol.send_signal(signal.SIGTERM)
        enrol.wait(timeout=60)
        recoveries = [p["recovery_s"] for p in partitions if p["recovery_s"] is not None]
        out.update({
            "partitions": len(partitions), "partition_s": args.partition_s,
            "partition_recovery_s": {"max": max(recoveries, default=None),
                                     "mean": round(sum(recoveries) / len(recoveries), 2) if recoveries else None,
                                     "unrecovered": len(partitions) - len(recoveries)},
            "kills": len(kills), "kill_resume_s_max": max((k["resume_s"] or 0 for k in kills), default=None),
            "producer_cut": producer, "redis_link_delay": delay,
            **run.account(),
            "details": {"partitions": partitions, "kills": kills},
        })
    finally:
        run.close()
    out["seconds"] = round(time.monotonic() - started, 1)
    out["load_avg_1m_end"] = _load()
    return out


def run_delay(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Capture-to-event latency with the Redis link direct, delayed (``--delay-ms`` ± 10 ms
    each way) and delayed + lossy, through tests/cluster/delay_proxy.py (netem's stand-in:
    this kernel has no sch_netem), one camera run of ``--delay-s`` each, side by side."""
    from tests.cluster.netbed import unavailable_reason, wait_for
    from tests.cluster.scenario import ClusterRun
    from tests.faults.harness import camera_account, frames_left, latency_ms

    reason = unavailable_reason()
    if reason:
        return {"skipped": reason}
    run = ClusterRun(root / "delay", proxied=True).start()
    out: dict[str, Any] = {"emulation": "userspace TCP proxy, per chunk each direction (not netem)",
                           "load_avg_1m_start": _load()}
    try:
        run.start_worker("w1", args.delay_processes)
        run.start_worker("w2", args.delay_processes)
        run.wait_workers(["w1", "w2"])
        out["worker_processes_per_host"] = args.delay_processes
        r, keys = run.redis(), run.keys()
        for label, link in (("direct", (0.0, 0.0, 0.0)), ("delayed", (args.delay_ms, 10.0, 0.0)),
                            ("delayed_lossy", (args.delay_ms, 10.0, args.loss_pct))):
            run.set_link(*link)
            time.sleep(1.0)
            camera = f"cam-{label.replace('_', '-')}"
            proc = run.start_camera(FACES / "videos" / VIDEO, duration_s=args.delay_s, camera=camera)
            proc.wait(timeout=args.delay_s + 180)
            try:
                wait_for(lambda: frames_left(r, keys, camera) == 0, 60, f"{camera} to settle")
            except AssertionError:
                pass
            out[label] = {"link_ms": link[0], "jitter_ms": link[1], "loss_pct": link[2],
                          "latency_ms": latency_ms(r, keys, camera), **camera_account(r, keys, camera)}
        run.set_link(0.0)
    finally:
        run.close()
    out["load_avg_1m_end"] = _load()
    return out


def run_failover(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.cluster.sentinel_bed import SentinelBed, failover_burst
    from tests.faults.scenarios import Deployment

    trials = []
    for i in range(args.failovers):
        bed = SentinelBed(root / f"failover-{i}" / "redis").start()
        dep = Deployment(bed.url, root / f"failover-{i}" / "data")
        try:
            dep.start_worker(env={"FAEC_WORKERS__VISIBILITY_TIMEOUT_S": "10"}).wait_ready(timeout=240)
            trials.append(failover_burst(bed, dep, {k: [v] for k, v in _people(12, offset=100 + 20 * i).items()},
                                         kill_after=4))
        finally:
            dep.close(clean=False)
            bed.close()
    return {"trials": len(trials), "lost": sum(t["lost"] for t in trials),
            "duplicated": sum(t["duplicated"] for t in trials),
            "resume_s_max": max((t["resume_s"] or 0 for t in trials), default=None),
            "failover_s_max": max((t["failover_s"] for t in trials), default=None), "details": trials,
            "load_avg_1m": _load()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--partition-s", type=float, default=60.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--producer-cut-s", type=float, default=30.0)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--loss-pct", type=float, default=1.0)
    parser.add_argument("--delay-s", type=float, default=30.0)
    parser.add_argument("--delay-processes", type=int, default=1,
                        help="worker processes per worker host in the delay phase: a frame's requests "
                             "wait on the link, so more processes than cores keep up over a slow one")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--enrolments", type=int, default=400)
    parser.add_argument("--enrol-every-s", type=float, default=3.0)
    parser.add_argument("--failovers", type=int, default=1)
    parser.add_argument("--only", default="hosts,delay,failover")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    root = Path(tempfile.mkdtemp(prefix="faec-bench-cluster-"))
    result: dict[str, Any] = {"sizes": {k: v for k, v in vars(args).items()}, "cores": os.cpu_count()}
    try:
        wanted = set(args.only.split(","))
        if "hosts" in wanted:
            result["hosts"] = run_hosts(root, args)
        if "delay" in wanted:
            result["delay"] = run_delay(root, args)
        if "failover" in wanted:
            result["failover"] = run_failover(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
