"""Enrol people one after another with the real client, retrying each request
(same request id) through network faults; one JSON line per finished enrolment.

    python -m tests.cluster.enrol_driver OUT.jsonl --every 2 "Name=photo.jpg" ...

Run by the cluster test bed on the producer host (its own network namespace);
settings come from the environment (FAEC_REDIS_URL, FAEC_PREFIX).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from faec_rec.client import Client
    from faec_rec.config import load_settings
    from tests.cluster.sentinel_bed import enrol_with_retries

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between enrolment starts")
    parser.add_argument("people", nargs="+", help="NAME=PHOTO")
    args = parser.parse_args()
    settings = load_settings()
    for item in args.people:
        name, _, photo = item.partition("=")
        started = time.time()
        try:
            report, attempts = enrol_with_retries(lambda: Client(settings=settings), name, [Path(photo)], deadline_s=300)
            line = {"name": name, "report": report.to_json(), "attempts": attempts, "started": started, "done": time.time()}
        except Exception as exc:
            line = {"name": name, "error": repr(exc), "started": started, "done": time.time()}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        time.sleep(max(0.0, args.every - (time.time() - started)))


if __name__ == "__main__":
    main()
