"""One enrolment of many photos goes through the client's upload window (issue 17
item 2), like an identify batch: Redis never holds more than the window's uploads of
it at once, and every photo is still enrolled, into one person. Real Redis, a REAL
worker process, real LFW photos."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from faec_rec.client import Client
from faec_rec.config import load_settings
from tests.integration.worker_proc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PERSON = "Andre_Agassi"  # 10 photos in lfw/, every one passes the gate
WINDOW = 4
WAIT_S = 240.0


class UploadWatch:
    """Wraps the client's ``redis.set`` (the only way an upload enters Redis) and, after
    every upload, counts the upload keys and their bytes. Workers only ever delete
    uploads, so the largest figure seen right after an upload is the true peak."""

    def __init__(self, client: Client) -> None:
        self.client, self.peak_count, self.peak_bytes, self.uploads = client, 0, 0, 0
        self._set = client.redis.set
        client.redis.set = self._watched_set  # type: ignore[method-assign]

    def _watched_set(self, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        out = self._set(key, value, *args, **kwargs)
        pattern = self.client.keys.upload("x")[:-1] + "*"
        if (key.decode() if isinstance(key, bytes) else str(key)).startswith(pattern[:-1]):
            self.uploads += 1
            found = list(self.client.redis.scan_iter(match=pattern, count=1000))
            self.peak_count = max(self.peak_count, len(found))
            self.peak_bytes = max(self.peak_bytes, sum(int(self.client.redis.strlen(k)) for k in found))
        return out


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[Client]:
    import redis

    prefix = "t" + uuid.uuid4().hex[:10]
    data_dir = tmp_path_factory.mktemp("enrol-window")
    worker = WorkerProcess(redis_url, prefix, data_dir, queues=("enrol",), concurrency=1).start()
    client = Client(settings=load_settings(redis_url=redis_url, prefix=prefix, data_dir=data_dir))
    try:
        worker.wait_ready()
        yield client
    finally:
        client.close()
        worker.stop()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


def test_an_enrolment_larger_than_the_window_never_holds_more_than_the_window(service: Client, faces_dir: Path) -> None:
    photos = sorted((faces_dir / "lfw" / PERSON).glob("*.jpg"))
    assert len(photos) > 2 * WINDOW, "the case needs more than two windows of photos"
    sizes = sorted((p.stat().st_size for p in photos), reverse=True)
    watch = UploadWatch(service)

    report = service.enrol("Andre Agassi", photos, timeout=WAIT_S, window=WINDOW, request_id="agassi-many")

    assert watch.uploads == len(photos)
    assert watch.peak_count == WINDOW  # the window was used, never exceeded
    assert watch.peak_bytes <= sum(sizes[:WINDOW])  # the window's bytes: at most its largest photos
    # still every photo enrolled, into one person, in order, under the caller's request id
    assert report.request_id == "agassi-many" and report.status == "done", report
    assert [i.name for i in report.images] == [str(p) for p in photos]
    assert all(i.accepted for i in report.images), [(Path(i.name).name, i.reason, i.detail) for i in report.images if not i.accepted]
    people = service.people()
    assert len(people) == 1 and people[0].name == "Andre Agassi" and people[0].id == report.person_id
    assert len(people[0].template_ids) == len(photos)
    assert not list(service.redis.scan_iter(match=service.keys.upload("x")[:-1] + "*"))  # nothing left behind

    # the merged report is there for a later look, and a retried call uploads nothing again
    assert service.enrol_report("agassi-many", timeout=5).to_json() == report.to_json()
    again = service.enrol("Andre Agassi", photos, timeout=WAIT_S, window=WINDOW, request_id="agassi-many")
    assert watch.uploads == len(photos) and again.to_json() == report.to_json()
