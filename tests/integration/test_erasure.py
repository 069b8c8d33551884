"""index.erasure on a real Redis with synthetic records: what names the forgotten
person goes, what names someone else (even a longer name containing theirs) stays."""
from __future__ import annotations

import json

from faec_rec.index.erasure import erase_person_traces
from faec_rec.workers.events import Event, publish_many

AL, ALICE = "a" * 32, "b" * 32


def test_erasure_takes_what_names_them_and_nothing_else(redis_client, keys) -> None:
    feats = keys.event_features("door", 7, 0)
    redis_client.set(feats, b"\x00" * 512)
    events = [
        Event(type="arrived", camera="door", frame=7, person_id=AL, person="Al", decision="known", features_key=feats),
        Event(type="arrived", camera="door", frame=8, person_id=ALICE, person="Alice", decision="known"),
        Event(type="left", camera="yard", frame=9, person_id=AL, person="Al", decision="known"),
    ]
    publish_many(redis_client, keys, events, maxlen=1000)
    redis_client.hset(keys.enrolment("r1"), mapping={"status": "done", "report": json.dumps({"person_id": AL, "name": "Al"})})
    redis_client.hset(keys.enrolment("r2"), mapping={"status": "done", "report": json.dumps({"person_id": ALICE, "name": "Alice"})})
    redis_client.set(keys.celery() + "celery-task-meta-t1", json.dumps({"result": {"name": "Al", "person_id": None}}))
    redis_client.set(keys.celery() + "celery-task-meta-t2", json.dumps({"result": {"name": "Alice"}}))
    redis_client.xadd(keys.job_results("j1"), {"result": json.dumps({"faces": [{"person": "Al", "person_id": AL}]})})
    redis_client.xadd(keys.job_results("j1"), {"result": json.dumps({"faces": []})})
    alice_ids = [i for i, f in redis_client.xrange(keys.events()) if b"Alice" in f[b"event"]]

    erased = erase_person_traces(redis_client, keys, AL, ["Al"])

    assert (erased.events, erased.features, erased.enrolment_reports, erased.task_results, erased.job_records) == \
        (4, 1, 1, 1, 1)  # 2 events x (combined + camera stream)
    assert not redis_client.exists(feats, keys.enrolment("r1"), keys.celery() + "celery-task-meta-t1")
    assert redis_client.exists(keys.enrolment("r2"), keys.celery() + "celery-task-meta-t2") == 2
    assert [i for i, _ in redis_client.xrange(keys.events())] == alice_ids  # same ids, untouched
    assert redis_client.xlen(keys.events("yard")) == 0 and redis_client.xlen(keys.events("door")) == 1
    assert redis_client.xlen(keys.job_results("j1")) == 1
    assert erase_person_traces(redis_client, keys, AL, ["Al"]).total() == 0  # idempotent
