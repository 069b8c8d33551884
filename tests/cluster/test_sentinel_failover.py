"""Redis Sentinel: a real worker and client on a ``redis+sentinel://`` URL (gallery,
Celery broker and result backend), three real sentinels, a master and a replica on
private ports. The master is killed with SIGKILL during an enrolment burst: the
sentinels promote the replica, the worker and the client follow by themselves,
and no enrolment reported done is lost or doubled (each "done" waited for the
replica: durability.enrolments=auto WAITs for connected replicas).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.sentinel_bed import SentinelBed, failover_burst
from tests.faults.scenarios import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEOPLE = ("George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon", "Hugo_Chavez", "Junichiro_Koizumi")


@pytest.mark.timeout(420)
def test_enrolments_survive_a_sentinel_failover(tmp_path: Path, faces_dir: Path) -> None:
    people = {name.replace("_", " "): sorted((faces_dir / "lfw" / name).glob("*.jpg"))[:1] for name in PEOPLE}
    bed = SentinelBed(tmp_path / "redis").start()
    dep = Deployment(bed.url, tmp_path / "data")
    try:
        # a short visibility timeout: a task taken from the dead master is handed back soon
        dep.start_worker(env={"FAEC_WORKERS__VISIBILITY_TIMEOUT_S": "10"}).wait_ready(timeout=180)
        summary = failover_burst(bed, dep, people, kill_after=3)
        print(summary)
        assert summary["durability_before_kill"]["replicas"] == 1, summary
        assert summary["not_reported"] == 0, summary
        assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
        assert summary["reported_done"] == len(people) and summary["stored_people"] == len(people), summary
        assert summary["resume_s"] is not None, summary
    finally:
        dep.close(clean=False)
        bed.close()
