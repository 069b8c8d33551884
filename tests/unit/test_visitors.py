"""Visitors: the grouping rule on seeded synthetic faces, and the Redis store (real Redis)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from faec_rec.config import VisitorsConfig
from faec_rec.errors import UnknownVisitorError, VisitorError
from faec_rec.visitors.events import VisitorOp
from faec_rec.visitors.replica import VisitorReplica, unit
from faec_rec.visitors.service import Visitors
from faec_rec.visitors.store import NewFace

DIM = 128


def people(rng: np.random.Generator, n_people: int, per: int, noise: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """Face-like raw features: a shared mean (impostors at cosine ~0.8, as dlib's are) plus
    a per-person direction plus per-photo noise. Returns ((n, 128) float32, (n,) labels)."""
    mean = unit(rng.normal(size=DIM)) * 1.0
    feats, labels = [], []
    for p in range(n_people):
        centre = mean + unit(rng.normal(size=DIM)) * 0.6
        for _ in range(per):
            feats.append(centre + unit(rng.normal(size=DIM)) * noise)
            labels.append(p)
    return np.array(feats, np.float32), np.array(labels)


def feed(replica: VisitorReplica, feats: np.ndarray, good: np.ndarray | None = None, prefix: str = "f") -> list[str]:
    ids = []
    counter = len(replica.members)
    for i, f in enumerate(feats):
        g = True if good is None else bool(good[i])
        d = replica.decide(f, g)
        vid = d.visitor
        if vid is None and d.new:
            counter += 1
            vid = f"v-{prefix}{counter}"
        fid = f"{prefix}{i}"
        replica.add(fid, f, vid, g)
        for other in d.merge:
            replica.assign(replica.faces_of(other), vid)
        ids.append(fid)
    return ids


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a) @ unit(b))


# ---- the rule --------------------------------------------------------------------

def test_interleaved_people_become_one_visitor_each(rng):
    feats, labels = people(rng, 6, 8)
    order = rng.permutation(len(feats))
    replica = VisitorReplica(VisitorsConfig())
    ids = feed(replica, feats[order])
    groups = replica.groups()
    by_label: dict[int, set[str]] = {}
    for fid, lab in zip(ids, labels[order]):
        by_label.setdefault(int(lab), set()).add(replica.visitor_of(fid))
    # precision: no visitor holds two people
    for vid, faces in groups.items():
        assert len({int(labels[order][ids.index(f)]) for f in faces}) == 1, vid
    # recall: each person ends in one visitor
    assert all(len(v) == 1 for v in by_label.values()), by_label


def test_poor_face_never_starts_a_visitor_but_may_join_one(rng):
    feats, _ = people(rng, 1, 5)
    replica = VisitorReplica(VisitorsConfig())
    feed(replica, feats[:1], good=np.array([False]), prefix="p")
    assert replica.visitor_of("p0") is None
    feed(replica, feats[1:4], prefix="g")
    vid = replica.visitor_of("g0")
    assert vid is not None and {replica.visitor_of("g1"), replica.visitor_of("g2")} == {vid}
    d = replica.decide(feats[4], good=False)
    assert d.visitor == vid and not d.merge


def test_poor_face_is_no_link_for_later_faces(rng):
    feats, _ = people(rng, 1, 2, noise=0.02)
    replica = VisitorReplica(VisitorsConfig())
    feed(replica, feats[:1], good=np.array([False]), prefix="p")
    d = replica.decide(feats[1], good=True)
    assert cos(feats[0], feats[1]) > 0.99
    assert d.visitor is None and d.new  # the close poor face was not a neighbour


def test_one_ordinary_link_does_not_pair_two_faces():
    cfg = VisitorsConfig(link_threshold=0.9, strong_threshold=0.97)
    base = np.zeros(DIM, np.float32)
    base[0] = 1.0
    other = base.copy()
    other[1] = 0.35  # cosine ~0.944: a link, not a strong one
    replica = VisitorReplica(cfg)
    feed(replica, np.stack([base]), prefix="a")
    d = replica.decide(other, True)
    assert 0.9 < cos(base, other) < 0.97
    assert d.visitor is None and d.new


def test_a_chain_of_lookalikes_cannot_drag_a_group_along():
    """Faces drifting step by step away from a group: each step links to the last
    faces, but the mean similarity to the group falls below the bar and a new visitor starts."""
    cfg = VisitorsConfig(link_threshold=0.95, strong_threshold=0.97, centre_threshold=0.95, min_links=2)
    replica = VisitorReplica(cfg)
    angles = np.arange(0, 40) * 0.06  # radians between successive faces ~0.06 -> cosine 0.998
    rows = np.zeros((len(angles), DIM), np.float32)
    rows[:, 0], rows[:, 1] = np.cos(angles), np.sin(angles)
    ids = feed(replica, rows)
    first, last = replica.visitor_of(ids[0]), replica.visitor_of(ids[-1])
    assert first is not None and last is not None and first != last
    for faces in replica.groups().values():
        idx = [ids.index(f) for f in faces]
        assert cos(rows[min(idx)], rows[max(idx)]) > 0.8  # no visitor spans the whole chain


def test_replay_gives_the_same_grouping(rng):
    feats, _ = people(rng, 4, 6)
    a = VisitorReplica(VisitorsConfig())
    feed(a, feats)
    b = VisitorReplica(VisitorsConfig())
    groups = a.groups()
    fids = [f for fs in groups.values() for f in fs]
    vids = [v for v, fs in groups.items() for _ in fs]
    b.load_bulk(fids, feats[[int(f[1:]) for f in fids]], vids, np.ones(len(fids), bool))
    assert b.digest() == a.digest()
    q = feats[3] + 0.001
    assert a.decide(q, True) == b.decide(q, True)


# ---- the store (real Redis) ------------------------------------------------------------

NOW = __import__("time").time()


def _face(fid: str, f: np.ndarray, at: float = NOW, good: bool = True, camera: str | None = "door") -> NewFace:
    return NewFace(face_id=fid, features=f, good=good, quality={"score": 0.5}, source=f"door/{fid}",
                   camera=camera, at=at, crop=b"\xff\xd8jpeg" + fid.encode())


@pytest.fixture
def visitors(redis_client, keys, tmp_path):
    return Visitors(redis_client, keys, VisitorsConfig(), tmp_path)


def test_join_is_idempotent_and_ids_are_stable(visitors, redis_client, keys, tmp_path, rng):
    feats, _ = people(rng, 2, 4)
    first = visitors.join(_face("a", feats[0]))
    assert first.stored and first.created and first.visitor == "v-1"
    again = visitors.join(_face("a", feats[0]))
    assert not again.stored and again.visitor == "v-1"
    for i in range(1, 4):
        assert visitors.join(_face(f"a{i}", feats[i])).visitor == "v-1"
    other = visitors.join(_face("b", feats[4]))
    assert other.visitor == "v-2"
    # a fresh process (new replica from Redis) sees the same and keeps numbering
    fresh = Visitors(redis_client, keys, VisitorsConfig(), tmp_path)
    assert fresh.replica.digest() == visitors.replica.digest()
    assert fresh.join(_face("b1", feats[5])).visitor == "v-2"
    listed = fresh.list()
    assert [v["id"] for v in listed] == ["v-1", "v-2"] and listed[0]["faces"] == 4
    assert listed[0]["cameras"] == ["door"] and listed[0]["crop"].endswith(".jpg")
    assert redis_client.zcard(keys.unknown_faces()) == 6


def test_concurrent_workers_neither_duplicate_nor_lose_joins(redis_client, keys, tmp_path, rng, redis_url):
    import redis

    feats, labels = people(rng, 3, 10)
    order = rng.permutation(len(feats))
    workers = [Visitors(redis.Redis.from_url(redis_url), keys, VisitorsConfig(), tmp_path) for _ in range(3)]
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            for n, i in enumerate(order):
                if n % 3 == w or n % 5 == 0:  # some faces are sent twice, to two workers
                    workers[w].join(_face(f"f{i}", feats[i]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert redis_client.zcard(keys.unknown_faces()) == len(feats)
    adds = [e for _, e in workers[0].store.log.read("0-0", count=10_000) if e.op is VisitorOp.ADD]
    assert len(adds) == len(feats)  # one add per face, whichever worker won
    for w in workers:
        w.sync()
    assert workers[0].replica.digest() == workers[1].replica.digest() == workers[2].replica.digest()
    fresh = Visitors(redis_client, keys, VisitorsConfig(), tmp_path)
    assert fresh.replica.digest() == workers[0].replica.digest()
    for vid in fresh.store.visitor_ids():
        faces = fresh.store.visitor_record(vid)["faces"]
        assert len({int(labels[int(f[1:])]) for f in faces}) == 1
        for f in faces:
            assert fresh.face(f)["visitor"] == vid


def test_merge_split_and_their_errors(visitors, rng):
    feats, _ = people(rng, 2, 3)
    for i in range(6):
        visitors.join(_face(f"f{i}", feats[i]))
    a, b = visitors.face("f0")["visitor"], visitors.face("f3")["visitor"]
    assert a != b
    with pytest.raises(VisitorError, match="itself"):
        visitors.merge([a, a])
    with pytest.raises(UnknownVisitorError):
        visitors.merge([a, "v-999"])
    assert visitors.merge([a, b]) == a
    got = visitors.get(a)
    assert got["faces"] == 6 and got["manual"] and {f["id"] for f in got["face_list"]} == {f"f{i}" for i in range(6)}
    with pytest.raises(UnknownVisitorError):
        visitors.get(b)
    with pytest.raises(VisitorError, match="every face"):
        visitors.split(a, [f"f{i}" for i in range(6)])
    with pytest.raises(VisitorError, match="not faces of"):
        visitors.split(a, ["nope"])
    new = visitors.split(a, ["f3", "f4", "f5"])
    assert sorted(visitors.store.visitor_record(new)["faces"]) == ["f3", "f4", "f5"]
    visitors.sync()
    assert visitors.replica.visitor_of("f4") == new and visitors.replica.visitor_of("f0") == a
    # hand-shaped visitors are never merged again by the rule
    d = visitors.replica.decide((feats[0] + feats[3]) / 2, True)
    assert not d.merge


def test_forget_leaves_no_key_and_no_crop(visitors, redis_client, keys, tmp_path, rng):
    feats, _ = people(rng, 2, 3)
    for i in range(6):
        visitors.join(_face(f"face{i}", feats[i]))
    vid = visitors.face("face0")["visitor"]
    crop = visitors.face("face0")["crop"]
    assert (tmp_path / crop).is_file() if not crop.startswith("/") else __import__("pathlib").Path(crop).is_file()
    gone = visitors.forget(vid)
    assert gone == 3
    left = [k.decode() for k in redis_client.scan_iter(match=f"{keys.prefix}:*")]
    blobs = b"".join(redis_client.dump(k) or b"" for k in left if redis_client.type(k) != b"stream")
    for i in range(3):
        assert not any(f"face{i}" in k for k in left)
        assert f"face{i}".encode() not in blobs
    assert not list((tmp_path / "unknown").glob("face0*"))
    assert not any(vid in k for k in left)
    with pytest.raises(UnknownVisitorError):
        visitors.forget(vid)
    visitors.sync()
    assert visitors.replica.size == 3


def test_regroup_keeps_names_manual_groups_and_ids(visitors, rng):
    feats, _ = people(rng, 3, 4)
    for i in range(12):
        visitors.join(_face(f"f{i}", feats[i]))
    v0, v1, v2 = (visitors.face(f"f{i}")["visitor"] for i in (0, 4, 8))
    visitors.mark_named(v0, "person-ada")
    odd = visitors.split(v1, ["f5"])  # a manual split the rule would undo
    before = visitors.replica.digest()
    out = visitors.regroup()
    assert out["faces"] == 12
    visitors.sync()
    after = visitors.replica.digest()
    assert after["groups"][odd] == ["f5"] and after["persons"] == {v0: "person-ada"}
    assert after["groups"] == before["groups"]
    assert {v0, v1, v2, odd} == set(visitors.store.visitor_ids())
    assert visitors.get(v0)["person_id"] == "person-ada"


def test_retention_expires_old_and_excess_faces_but_not_named_ones(redis_client, keys, tmp_path, rng):
    feats, _ = people(rng, 2, 3)
    vis = Visitors(redis_client, keys, VisitorsConfig(retention_days=1, max_faces=5), tmp_path, auto_expire=False)
    now = 10 * 86400.0
    for i in range(3):  # old
        vis.join(_face(f"old{i}", feats[i], at=now - 3 * 86400 + i))
    for i in range(3):  # new
        vis.join(_face(f"new{i}", feats[3 + i], at=now - 100 + i))
    named = vis.face("old0")["visitor"]
    vis.mark_named(named, "person-x")
    # the old ones are too old but named (kept); 6 > 5: the oldest unnamed face goes
    assert vis.expire(now=now) == 1
    assert sorted(vis.store.all_face_ids()) == ["new1", "new2", "old0", "old1", "old2"]
    vis.mark_named(named, None)
    assert vis.expire(now=now) == 3
    assert sorted(vis.store.all_face_ids()) == ["new1", "new2"]
    assert not list((tmp_path / "unknown").glob("old*"))


def test_report_groups_strangers_by_visitor_with_crops():
    from faec_rec.report import build_report, render_html

    def face(visitor, decision="unknown", person=None):
        return {"box": [10, 10, 60, 60], "decision": decision, "person": person, "score": 0.5, "visitor": visitor}

    records = [
        {"path": "a.jpg", "faces": [face("v-3"), face(None, "known", "Ada")]},
        {"path": "b.jpg", "faces": [face("v-3")]},
        {"path": "c.jpg", "faces": [face("v-7")]},
    ]
    report = build_report(records)
    assert report["summary"]["visitors"] == {"v-3": 2, "v-7": 1}
    assert report["images"][0]["faces"][1]["visitor"] is None  # a known face names no visitor
    page = render_html(report, loader=lambda path: np.full((100, 100, 3), 128, np.uint8))
    assert "<b>visitor v-3</b>: 2 photos" in page and "<b>visitor v-7</b>: 1 photo " in page
    assert page.index("visitor v-3</b>") < page.index("visitor v-7</b>")
    assert page.count('class="vc"') == 3


def test_workers_apply_retention_as_they_join(redis_client, keys, tmp_path, rng):
    feats, _ = people(rng, 1, 2)
    vis = Visitors(redis_client, keys, VisitorsConfig(retention_days=1), tmp_path)  # auto_expire, as workers run
    vis.join(_face("old", feats[0], at=NOW - 3 * 86400))
    assert vis.store.all_face_ids() == []  # the sweep after the join removed the too-old face
    vis.join(_face("new", feats[1]))
    assert vis.store.all_face_ids() == ["new"] and vis.replica.size == 1


def test_a_merged_away_visitor_resolves_to_the_one_it_joined(redis_url, prefix, keys, redis_client, tmp_path, rng):
    """A stranger's past event names the visitor it was grouped into; that visitor is later
    merged into another (twice over), which is then named: the event resolves to the person
    (events, search by visitor and by person). Forgetting the visitor drops those aliases."""
    import time

    from faec_rec.client import Client
    from faec_rec.config import load_settings
    from faec_rec.workers.events import Event, publish_many

    client = Client(settings=load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path))
    try:
        store = client.visitors_store
        feats, _ = people(rng, 3, 3)
        for i in range(9):
            store.join(_face(f"f{i}", feats[i]))
        a, b, c = (store.face(f"f{i}")["visitor"] for i in (0, 3, 6))
        assert len({a, b, c}) == 3
        publish_many(redis_client, keys, [Event(type="arrived", camera="gate", decision="unknown", visitor=b,
                                                captured_at=time.time())], 1000)
        assert client.merge_visitors([c, b]) == c  # b's faces go into c
        assert client.merge_visitors([a, c]) == a  # and c's into a: b resolves through two merges
        assert (store.resolve(a), store.resolve(b), store.resolve(c)) == (a, a, a)
        assert [e["visitor"] for e in client.search_events(visitor=a)[0]] == [b]
        assert [e["visitor"] for e in client.search_events(visitor=c)[0]] == [b]
        assert client.search_events(person="ada")[0] == []

        person = client.gallery.enrol("Ada", feats[:1], sources=["a.jpg"], content_hashes=["h1"], qualities=[0.9])
        store.mark_named(a, person.person_id)  # what naming the visitor records once its faces are enrolled
        [past] = [e for e in client.events(camera="gate")]
        assert (past["visitor"], past["visitor_person"]) == (b, "Ada")
        assert [e["visitor"] for e in client.search_events(person="ada")[0]] == [b]
        assert [e["visitor"] for e in client.search_events(person=person.person_id)[0]] == [b]

        client.forget_visitor(a)
        assert redis_client.hgetall(keys.visitor_aliases()) == {}
        assert client.search_events(person="ada")[0] == []
        assert client.search_events(visitor=a)[0] == []
    finally:
        client.close()
