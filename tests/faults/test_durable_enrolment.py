"""An enrolment reported "done" survives ``kill -9`` of Redis right after the report.

Two Redis setups, each a PRIVATE redis-server (own port, own folder):

* a deployment-style server with ``appendonly yes`` and ``appendfsync always``
  (this machine's Redis is 7.0, which has no WAITAOF): the gallery write is on
  disk before the worker reads the reply, so the report says ``local: fsync``;
* the embedded default itself (:class:`faec_rec.redis_server.PrivateRedis`:
  ``appendonly yes``, fsync ``everysec``, password, ACL): Redis write()s the AOF
  before replying, so a ``kill -9`` of the server loses nothing either (the
  report says ``local: written``: a *host* crash could lose ~1 s).

After each report the server is killed with SIGKILL at once and restarted on the
same folder; the person, every template and the report must be there, and the
same worker (which reconnects by itself) enrols the next person.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.cluster.servers import RedisProcess
from tests.faults.harness import audit_gallery
from tests.faults.scenarios import Deployment

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

SETUPS = {
    "deployment-fsync-always": (("--appendonly", "yes", "--appendfsync", "always"), "fsync"),
    "embedded-default-everysec": (None, "written"),  # the embedded default's own PrivateRedis
}


class EmbeddedRedis:
    """The embedded default's PrivateRedis, killed with SIGKILL like RedisProcess."""

    def __init__(self, directory: Path) -> None:
        from faec_rec.redis_server import PrivateRedis

        self.server = PrivateRedis(directory)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "EmbeddedRedis":
        self.server.start()
        return self

    def kill(self) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            os.killpg(self.server.process.pid, signal.SIGKILL)
            self.server.process.wait()
        self.server.process = None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_done_enrolment_survives_kill_9(setup: str, tmp_path: Path, photos: list[Path]) -> None:
    extra, expected_local = SETUPS[setup]
    server = (RedisProcess(tmp_path / "redis", extra=extra) if extra else EmbeddedRedis(tmp_path / "redis")).start()
    dep = Deployment(server.url, tmp_path)
    try:
        dep.start_worker().wait_ready()
        for round_no, batch in enumerate((photos[:2], photos[2:4])):
            name = f"Durable {round_no}"
            report = dep.client.enrol(name, batch, timeout=180)
            assert report.status == "done", report
            server.kill()  # right after the report: nothing gets a chance to flush
            assert report.durability is not None and report.durability["local"] == expected_local, report.durability
            server.start()
            dep.client.redis.connection_pool.disconnect()
            audit = audit_gallery(dep.redis, dep.keys)
            stored = dep.client.person(name)
            assert set(stored.template_ids) == {i.template_id for i in report.accepted}, (stored, report)
            assert audit.templates_of(name) == set(stored.template_ids)
            again = dep.client.enrol_report(report.request_id, timeout=5)
            assert again.status == "done" and again.person_id == report.person_id
        assert {p.name for p in dep.client.people()} == {"Durable 0", "Durable 1"}
    finally:
        dep.close()
        server.kill()
