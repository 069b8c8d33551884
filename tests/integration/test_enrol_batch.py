"""Enrolment of a folder of people in batches (issue 14): ``Client.enrol_batch`` sends several
people in one task and the worker embeds all their faces in one model call; every person gets
the report and the templates that enrolling them one by one gives. A REAL worker subprocess,
real Redis, real LFW photos."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from faec_rec.config import load_settings
from tests.integration.worker_proc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEOPLE = ("Arnold_Schwarzenegger", "Andre_Agassi", "David_Beckham", "AJ_Lamas", "Ashraf_Ghani")
WAIT_S = 240.0


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import redis

    prefix = "t" + uuid.uuid4().hex[:10]
    data_dir = tmp_path_factory.mktemp("enrol_batch")
    proc = WorkerProcess(redis_url, prefix, data_dir, queues=("frames", "enrol"), concurrency=1).start()
    try:
        proc.wait_ready()
        yield {"redis_url": redis_url, "prefix": prefix, "data_dir": data_dir}
    finally:
        proc.stop()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


def _people(faces_dir: Path) -> list[tuple[str, list[Path]]]:
    people = [(folder.replace("_", " "), sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[:3]) for folder in PEOPLE]
    # refusals travel in a batch too: a photo without a face, one with several, a corrupt file
    people[0][1].append(faces_dir / "no_face" / "darknet__dog.jpg")
    people[1][1].append(faces_dir / "group_photos" / "faceapi__bbt1.jpg")
    return people


def _templates(client: Any, name: str) -> dict[str, np.ndarray]:
    """Stored features of a person's templates by template id."""
    person = client.person(f"name:{name}")
    features = client.gallery.store.fetch_features(list(person.template_ids))
    return {t: features[t] for t in person.template_ids}


def test_a_batch_of_people_gets_the_reports_and_templates_of_one_by_one(worker: dict[str, Any], faces_dir: Path,
                                                                        tmp_path: Path) -> None:
    from faec_rec.client import Client

    people = _people(faces_dir)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated, not a jpeg")
    people[2][1].append(corrupt)

    def settings(sub: str, batch: int) -> Any:
        return load_settings(redis_url=worker["redis_url"], prefix=worker["prefix"], data_dir=worker["data_dir"],
                             workers={"folder_batch": batch})

    with Client(settings=settings("one", 16)) as client:
        # one by one, under names of their own
        single = {name: client.enrol(f"single {name}", photos, timeout=WAIT_S) for name, photos in people}
        ids = client.enrol_batch([(f"batch {name}", photos) for name, photos in people])
        assert client.redis.llen(client.keys.celery() + "enrol") <= 1  # one task for all five (if not yet taken)
        batched = {name: client.enrol_report(rid, timeout=WAIT_S) for (name, _), rid in zip(people, ids)}
        for name, _ in people:
            a, b = single[name], batched[name]
            assert b.name == f"batch {name}" and b.status == a.status == "done", (a, b)
            assert [(i.name, i.accepted, i.reason) for i in a.images] == [(i.name, i.accepted, i.reason) for i in b.images]
            assert b.accepted  # (AJ Lamas has one LFW photo)
            fa, fb = _templates(client, a.name), _templates(client, b.name)
            by_source_a = [fa[i.template_id] for i in a.images if i.accepted]
            by_source_b = [fb[i.template_id] for i in b.images if i.accepted]
            for x, y in zip(by_source_a, by_source_b):  # the same photo gives the same template
                cos = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))
                assert cos >= 0.999, (name, cos)
        reasons = {i.reason for r in batched.values() for i in r.refused}
        assert {"no_face", "several_faces", "bad_image"} <= reasons
        # a person can be identified after a batched enrolment
        faces = client.identify(sorted((faces_dir / "lfw" / PEOPLE[2]).glob("*.jpg"))[5], timeout=WAIT_S)
        assert [f.person for f in faces if f.decision == "known"][0] in {"batch David Beckham", "single David Beckham"}


def test_a_redelivered_batch_returns_the_stored_reports(worker: dict[str, Any], faces_dir: Path) -> None:
    from faec_rec.client import Client

    people = _people(faces_dir)[:2]
    with Client(settings=load_settings(redis_url=worker["redis_url"], prefix=worker["prefix"],
                                       data_dir=worker["data_dir"])) as client:
        ids = client.enrol_batch([(f"again {n}", p) for n, p in people], request_ids=["rq-a1", "rq-a2"])
        first = [client.enrol_report(rid, timeout=WAIT_S) for rid in ids]
        templates = {p.name: list(p.template_ids) for p in client.people()}
        # the same batch again (a redelivery), with one new person so its end can be seen
        third = _people(faces_dir)[3]
        client.enrol_batch([*[(f"again {n}", p) for n, p in people], (f"again {third[0]}", third[1])],
                           request_ids=["rq-a1", "rq-a2", "rq-a3"])
        assert client.enrol_report("rq-a3", timeout=WAIT_S).status == "done"
        assert [client.enrol_report(rid, timeout=WAIT_S).to_json() for rid in ids] == [r.to_json() for r in first]
        after = {p.name: list(p.template_ids) for p in client.people()}
        assert {name: after[name] for name in templates} == templates  # nothing stored twice
