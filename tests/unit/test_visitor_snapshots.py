"""Visitor replica snapshots (the gallery's file format, faec_rec.index.snapshot): a replica
round-trips through its arrays with its IVF index, a starting worker loads the newest snapshot
plus the events after it instead of every record, falls back to the records when the snapshot
cannot be trusted, and a forgotten face's features do not stay in a snapshot on disk."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.config import VisitorsConfig
from faec_rec.errors import VisitorError
from faec_rec.index.snapshot import list_snapshots, read_snapshot
from faec_rec.visitors.replica import VisitorReplica
from faec_rec.visitors.service import Visitors
from tests.unit.test_visitors import _face, feed, people

SMALL_IVF = VisitorsConfig(approximate_above=40, ivf_nprobe=8, snapshot_every=10)


class CountingLoads(Visitors):
    """A worker that counts how often it reads every face record from Redis."""

    loads = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        inner = self.store.load_all

        def counted(*a, **k):
            CountingLoads.loads += 1
            return inner(*a, **k)

        self.store.load_all = counted  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _reset_count():
    CountingLoads.loads = 0


def test_replica_round_trips_through_its_arrays_with_the_ivf_index(rng) -> None:
    feats, _ = people(rng, 8, 12)
    replica = VisitorReplica(SMALL_IVF)
    ids = feed(replica, feats)
    replica.remove_many(ids[:5])
    some = next(iter(replica.groups()))
    replica.persons[some] = "person-ada"
    replica.manual.add(some)
    replica.position = "1700000000000-7"
    replica.rebuild_index()
    assert replica.index_kind == "ivf"
    meta, arrays = replica.to_arrays()
    back = VisitorReplica.from_arrays({**meta, "position": replica.position}, arrays, SMALL_IVF)
    assert back.digest() == replica.digest() and back.manual == replica.manual
    assert back.position == replica.position and back.index_kind == "ivf"
    assert back._index.trained_on == replica._index.trained_on  # loaded, not trained again
    for q in [*feats[::7], *rng.normal(size=(5, 128)).astype(np.float32)]:
        a, b = back.decide(q, True), replica.decide(q, True)
        # centres are sums rebuilt in another order: equal to float32 rounding
        assert (a.visitor, a.new, a.merge, a.links) == (b.visitor, b.new, b.merge, b.links)
        assert (a.centre is None) == (b.centre is None) and abs((a.centre or 0) - (b.centre or 0)) < 1e-5
    with pytest.raises(VisitorError, match="not a visitor replica"):
        VisitorReplica.from_arrays({"kind": "gallery", "position": "0-0"}, arrays, SMALL_IVF)


def test_a_starting_worker_loads_the_snapshot_plus_the_events_after_it(redis_client, keys, tmp_path, rng) -> None:
    feats, labels = people(rng, 4, 10)
    first = Visitors(redis_client, keys, SMALL_IVF, tmp_path)
    for i in range(25):
        first.join(_face(f"f{i}", feats[i]))
    written = list_snapshots(first.snapshot_dir)
    assert written, "a snapshot is written every snapshot_every events"
    meta, _ = read_snapshot(written[0])
    assert meta["kind"] == "visitors" and 10 <= meta["faces"] <= 25
    first.mark_named(first.face("f0")["visitor"], "person-ada")
    for i in range(25, 40):  # events after the newest snapshot
        first.join(_face(f"f{i}", feats[i]))

    second = CountingLoads(redis_client, keys, SMALL_IVF, tmp_path)
    assert second.replica.digest() == first.replica.digest()
    assert CountingLoads.loads == 0  # no face record was read: snapshot + stream
    # it joins as the first would
    assert second.join(_face("g", feats[39] + 0.001)).visitor == first.replica.visitor_of("f39")


def test_an_untrustworthy_snapshot_is_passed_over_for_the_records(redis_client, keys, tmp_path, rng) -> None:
    feats, _ = people(rng, 3, 6)
    first = Visitors(redis_client, keys, VisitorsConfig(snapshot_every=1000), tmp_path)
    for i in range(9):
        first.join(_face(f"f{i}", feats[i]))
    path = first.snapshot()
    for i in range(9, 18):
        first.join(_face(f"f{i}", feats[i]))
    # the stream was trimmed past the snapshot: events it would need are gone
    newest = redis_client.xrevrange(keys.visitor_events(), count=1)[0][0]
    redis_client.xtrim(keys.visitor_events(), minid=newest, approximate=False)
    second = CountingLoads(redis_client, keys, VisitorsConfig(), tmp_path)
    assert second.replica.digest() == first.replica.digest()
    assert CountingLoads.loads == 1
    # damaged snapshots: none is used (the records are)
    for p in [path, *list_snapshots(path.parent)]:
        p.write_bytes(b"not a zip")
    third = CountingLoads(redis_client, keys, VisitorsConfig(), tmp_path)
    assert third.replica.digest() == first.replica.digest()
    assert CountingLoads.loads == 2


def test_forgotten_faces_leave_the_snapshots_on_disk(redis_client, keys, tmp_path, rng) -> None:
    feats, labels = people(rng, 2, 8)
    worker = Visitors(redis_client, keys, SMALL_IVF, tmp_path)
    for i in range(16):
        worker.join(_face(f"f{i}", feats[i]))
    worker.snapshot()
    gone = worker.face("f0")["visitor"]
    gone_faces = set(worker.replica.faces_of(gone))
    assert gone_faces
    worker.forget(gone)  # this process applies its REMOVE and rewrites its snapshot
    kept = list_snapshots(worker.snapshot_dir)
    assert len(kept) == 1
    _, arrays = read_snapshot(kept[0])
    names = set(arrays["fids"].tobytes().decode().split("\n"))
    assert not names & gone_faces
    rows = arrays["vectors"]
    for i in range(16):
        if f"f{i}" in gone_faces:
            unit = feats[i] / np.linalg.norm(feats[i])
            assert not np.any(np.abs(rows @ unit - 1.0) < 1e-5)
    # a worker that starts afterwards agrees with the live one
    assert Visitors(redis_client, keys, SMALL_IVF, tmp_path).replica.digest() == worker.replica.digest()
