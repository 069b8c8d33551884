"""Visitors end to end: a real worker process, real Redis, real photos.

Photos of two people nobody enrolled are identified one at a time through the
worker: they become two visitors holding exactly their own faces; a camera
frame of one of them gives an "arrived" event naming that visitor; naming the
visitor enrols it through the queue and the next photo of them is recognised;
``feedback --not`` on that match moves the face into a visitor, records the
negative pair the next retraining reads, and the same face is no longer
accepted as that person.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faec_rec.config import load_settings
from faec_rec.keys import Keys
from tests.integration.worker_proc import WorkerProcess
from tests import waiting

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Chosen from LFW for seven sharp, frontal photos each (see benchmarks.visitors' cache).
STRANGERS = ("Hillary_Clinton", "Bill_Gates")
KNOWN = "Arnold_Schwarzenegger"
WAIT_S = 240.0


def wait_for(predicate: Any, timeout: float = WAIT_S, what: str = "condition", every: float = 0.2) -> Any:
    return waiting.wait_for(predicate, timeout, what, every)


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[dict[str, Any]]:
    import redis

    from faec_rec.client import Client

    prefix = "t" + uuid.uuid4().hex[:10]
    data_dir = tmp_path_factory.mktemp("visitors")
    worker = WorkerProcess(redis_url, prefix, data_dir, queues=("frames", "enrol"), concurrency=1).start()
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=data_dir)
    client = Client(settings=settings)
    try:
        worker.wait_ready()
        client.enrol("Arnold", sorted((faces_dir / "lfw" / KNOWN).glob("*.jpg"))[:3], timeout=WAIT_S)
        yield {"client": client, "keys": Keys(prefix), "redis": client.redis, "data_dir": data_dir, "worker": worker}
    finally:
        client.close()
        worker.stop()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


def photos(faces_dir: Path, person: str) -> list[Path]:
    return sorted((faces_dir / "lfw" / person).glob("*.jpg"))


def main_face(faces: list[Any]) -> Any:
    """The largest face of an image (LFW photos may show someone behind)."""
    assert faces, "no face found"
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def _frame(r: Any, keys: Keys, camera: str, n: int, data: bytes) -> dict[str, Any]:
    key = keys.frame(camera, n)
    r.set(key, data, ex=120)
    r.lpush(keys.in_flight(camera), key)
    return {"camera": camera, "frame": n, "key": key, "captured_at": time.time(), "width": 250, "height": 250}


def test_strangers_become_visitors_that_can_be_named_and_corrected(service: dict[str, Any], faces_dir: Path) -> None:
    from faec_rec.training.negatives import read_negative_pairs
    from faec_rec.workers.app import TASK_RECOGNISE

    client, r, keys = service["client"], service["redis"], service["keys"]
    hillary, gates = (photos(faces_dir, p) for p in STRANGERS)

    # 1. Five photos of each, interleaved, identified one at a time.
    visitor_of: dict[str, str | None] = {}
    for a, b in zip(hillary[:5], gates[:5]):
        for path in (a, b):
            face = main_face(client.identify(path, timeout=WAIT_S))
            assert face.decision == "unknown" and face.visitor is not None, (path, face)
            visitor_of[path.name] = face.visitor
    h_ids = {visitor_of[p.name] for p in hillary[:5]}
    g_ids = {visitor_of[p.name] for p in gates[:5]}
    assert len(h_ids) == 1 and len(g_ids) == 1 and h_ids != g_ids, visitor_of
    (vh,), (vg,) = h_ids, g_ids
    listed = {v["id"]: v for v in client.visitors()}
    assert set(listed) == {vh, vg} and listed[vh]["faces"] == listed[vg]["faces"] == 5
    shown = client.visitor(vh)
    assert sorted(Path(f["source"]).name for f in shown["face_list"]) == sorted(p.name for p in hillary[:5])
    assert client.unknown_face_crop(shown["face_list"][0]["id"])[:2] == b"\xff\xd8"

    # 2. A camera sees Bill Gates (a photo not sent before): the "arrived" event names his visitor.
    data = gates[5].read_bytes()
    for n in (1, 2):
        client.app.send_task(TASK_RECOGNISE, args=[_frame(r, keys, "door", n, data)], queue="frames")
    wait_for(lambda: int(r.hget(keys.camera_stats("door"), "processed") or 0) >= 2, what="door frames")
    arrived = [json.loads(v[b"event"]) for _, v in r.xrange(keys.events("door"))]
    arrived = [e for e in arrived if e["type"] == "arrived"]
    assert [(e["decision"], e["visitor"]) for e in arrived] == [("unknown", vg)]
    assert client.visitor(vg)["cameras"] == ["door"]
    # ...and so does that track's "left" event (a later frame without him, past the track timeout)
    time.sleep(2.5)
    empty = sorted((faces_dir / "no_face").glob("*.jpg"))[0].read_bytes()
    client.app.send_task(TASK_RECOGNISE, args=[_frame(r, keys, "door", 3, empty)], queue="frames")
    wait_for(lambda: int(r.hget(keys.camera_stats("door"), "processed") or 0) >= 3, what="empty door frame")
    left = [json.loads(v[b"event"]) for _, v in r.xrange(keys.events("door"))]
    assert [(e["decision"], e["visitor"]) for e in left if e["type"] == "left"] == [("unknown", vg)]

    # 3. Naming: Hillary's visitor is enrolled through the queue; her next photo is recognised.
    with pytest.raises(Exception, match="into_existing"):
        client.name_visitor(vh, "Arnold")
    report = client.name_visitor(vh, "Hillary", timeout=WAIT_S)
    assert report.status == "done" and len(report.accepted) == 5, report
    assert client.visitor(vh)["person"] == "Hillary"
    face = main_face(client.identify(hillary[6], timeout=WAIT_S))
    assert face.decision == "known" and face.person == "Hillary", face

    # 4. A correction: a camera match of Hillary is said to be NOT Hillary.
    data = hillary[5].read_bytes()
    for n in (1, 2):
        client.app.send_task(TASK_RECOGNISE, args=[_frame(r, keys, "hall", n, data)], queue="frames")
    wait_for(lambda: int(r.hget(keys.camera_stats("hall"), "processed") or 0) >= 2, what="hall frames")
    # feedback takes the combined stream's id (the camera stream's id is its own XADD and can
    # differ by a millisecond under load)
    [(event_id, fields)] = [(i.decode(), f) for i, f in r.xrange(keys.events())
                            if json.loads(f[b"event"])["type"] == "arrived" and json.loads(f[b"event"])["camera"] == "hall"]
    assert json.loads(fields[b"event"])["person"] == "Hillary"
    out = client.feedback(event_id, not_="Hillary")
    assert out["usable"] and out["visitor"] is not None and out["negative_id"]
    assert "fb-" + event_id in {f["id"] for f in client.visitor(out["visitor"])["face_list"]}
    [pair] = read_negative_pairs(r, keys)  # what the next retraining reads
    assert pair.event_id == event_id and pair.person_id == report.person_id
    # the same face is no longer accepted as Hillary (her threshold rose around it)
    again = main_face(client.identify(hillary[5], timeout=WAIT_S))
    assert again.decision == "unknown", again
    # ...while her other photos still are
    other = main_face(client.identify(hillary[6], timeout=WAIT_S))
    assert other.decision == "known" and other.person == "Hillary"

    # 5. Forgetting Bill Gates' visitor leaves no key of his faces.
    gone = client.forget_visitor(vg)
    assert gone == 6
    left = [k.decode() for k in r.scan_iter(match=f"{keys.prefix}:*")]
    assert not any(k.startswith(f"{keys.prefix}:visitor:{vg}") for k in left)
    assert vg not in {v["id"] for v in client.visitors()}


def test_naming_a_visitor_into_an_existing_person_from_the_command_line(
    service: dict[str, Any], faces_dir: Path, tmp_path: Path
) -> None:
    """``faec-rec visitors name ID NAME --into-existing`` adds the visitor's faces to the
    person already enrolled under NAME (no second person), the next photo of the stranger
    is recognised as that person, and the visitor's past camera events resolve to them.

    LFW gives no photo that is certain to miss its own person's templates, so the existing
    person "Pat" is enrolled from another man's photos: whose face a name holds is the
    operator's word, and what is tested is where the faces go."""
    import os
    import subprocess
    import sys

    from faec_rec.workers.app import TASK_RECOGNISE

    client, r, keys = service["client"], service["redis"], service["keys"]
    pat = client.enrol("Pat", photos(faces_dir, "Colin_Powell")[:3], timeout=WAIT_S)
    assert pat.status == "done", pat
    before = client.gallery.person("Pat")
    blair = photos(faces_dir, "Tony_Blair")

    # A camera sees a stranger: the arrival names his visitor.
    data = blair[4].read_bytes()
    for n in (1, 2):
        client.app.send_task(TASK_RECOGNISE, args=[_frame(r, keys, "gate", n, data)], queue="frames")
    wait_for(lambda: int(r.hget(keys.camera_stats("gate"), "processed") or 0) >= 2, what="gate frames")
    [arrival] = [e for e in client.events(camera="gate") if e["type"] == "arrived"]
    vb = arrival["visitor"]
    assert (arrival["decision"], arrival["visitor_person"]) == ("unknown", None) and vb, arrival
    # Four more photos of him, identified one at a time. The rule is careful (his first
    # four LFW photos make two visitors), so the operator merges what it kept apart.
    seen = {main_face(client.identify(p, timeout=WAIT_S)).visitor for p in blair[:4]}
    assert None not in seen, seen
    if seen - {vb}:
        assert client.merge_visitors([vb, *sorted(seen - {vb})]) == vb
    faces_before = client.visitor(vb)["faces"]
    assert faces_before == 5

    script = Path(sys.executable).with_name("faec-rec")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "faec_rec.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update(FAEC_REDIS_URL=client.settings.redis_url, FAEC_PREFIX=keys.prefix,
               FAEC_DATA_DIR=str(service["data_dir"]), HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")

    def cli_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=WAIT_S, cwd=tmp_path)

    # Without the flag the name is refused (a second "Pat" would be a different person).
    refused = cli_run("visitors", "name", vb, "pat")
    assert refused.returncode == 2 and "--into-existing" in refused.stderr, (refused.returncode, refused.stderr)
    assert client.visitor(vb)["person_id"] is None
    named = cli_run("visitors", "name", vb, "pat", "--into-existing", "--timeout", str(WAIT_S))
    assert named.returncode == 0, named.stderr
    assert f"visitor {vb} is now Pat ({before.id})" in named.stdout, named.stdout

    # Still one Pat, holding her own templates and the visitor's good faces.
    assert [p.id for p in client.gallery.people() if p.name == "Pat"] == [before.id]
    after = client.gallery.person("Pat")
    added = len(after.template_ids) - len(before.template_ids)
    assert 1 <= added <= faces_before, (added, faces_before)
    assert (client.visitor(vb)["person_id"], client.visitor(vb)["person"]) == (before.id, "Pat")
    # The next photo of the stranger is Pat now, and so are Pat's own photos still.
    nxt = main_face(client.identify(blair[5], timeout=WAIT_S))
    assert (nxt.decision, nxt.person_id, nxt.person) == ("known", before.id, "Pat"), nxt
    own = main_face(client.identify(photos(faces_dir, "Colin_Powell")[4], timeout=WAIT_S))
    assert (own.decision, own.person_id) == ("known", before.id), own
    # His past camera event resolves to Pat, in the client and in `faec-rec events --visitor`.
    [past] = [e for e in client.events(camera="gate") if e["type"] == "arrived"]
    assert (past["visitor"], past["visitor_person"]) == (vb, "Pat")
    listed = cli_run("events", "--visitor", vb, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert rows and all(row["visitor"] == vb and row["visitor_person"] == "Pat" for row in rows), rows
