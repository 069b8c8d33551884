"""Enrol / identify / forget against a real Redis: the gallery as workers and the CLI use it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from faec_rec.config import GalleryConfig
from faec_rec.errors import BackendUnavailable, GalleryError, UnknownPersonError, UnknownTemplateError, VectorError, VersionMismatchError
from faec_rec.index import Decision, Gallery

pytestmark = pytest.mark.integration


def faces(rng: np.random.Generator, centre: np.ndarray, n: int, noise: float = 0.3) -> np.ndarray:
    """Raw-scale 'backbone features' of one identity: (n, 128) float32."""
    x = centre + noise * rng.normal(size=(n, 128)) / np.sqrt(128)
    return (0.9 * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def centres(rng: np.random.Generator) -> np.ndarray:
    c = rng.normal(size=(6, 128))
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def gallery(redis_client, keys, tmp_path: Path) -> Gallery:
    return Gallery(redis_client, keys, GalleryConfig(threshold=0.6), tmp_path / "data")


def enrol(gallery: Gallery, rng, name: str, centre: np.ndarray, n: int = 3, tag: str | None = None, **kw):
    tag = tag or name
    return gallery.enrol(name, faces(rng, centre, n), sources=[f"{tag}/{i}.jpg" for i in range(n)],
                         content_hashes=[f"{tag}-{i}" for i in range(n)], **kw)


def test_enrol_identify_round_trip(gallery: Gallery, rng, centres) -> None:
    ids = [enrol(gallery, rng, f"Person {i}", centres[i]).person_id for i in range(5)]
    assert gallery.size == 15
    queries = np.vstack([faces(rng, c, 1) for c in centres])  # the sixth was never enrolled
    matches = gallery.identify(gallery.projector.project(queries), gallery.version)
    assert [m.person_id for m in matches[:5]] == ids
    assert [m.decision for m in matches] == [Decision.KNOWN] * 5 + [Decision.UNKNOWN]
    assert matches[2].name == "Person 2"
    assert [m.person_id for m in gallery.identify_features(queries[:5])] == ids
    person = gallery.person("person 3")  # names are case-insensitive
    assert person.id == ids[3] and len(person.template_ids) == 3
    assert [p.name for p in gallery.people()] == [f"Person {i}" for i in range(5)]


def test_existing_name_adds_templates_and_retries_add_nothing(gallery: Gallery, rng, centres) -> None:
    first = enrol(gallery, rng, "Ada", centres[0], n=2)
    assert first.created and len(first.added) == 2
    again = enrol(gallery, rng, "ADA ", centres[0], n=3, tag="Ada")  # same name, one new image
    assert again.person_id == first.person_id and not again.created
    assert again.duplicates == ("Ada-0", "Ada-1") and len(again.added) == 1
    replay = enrol(gallery, rng, "Ada", centres[0], n=3)
    assert replay.added == () and len(replay.duplicates) == 3
    assert gallery.size == 3
    within = gallery.enrol("Ada", faces(rng, centres[0], 2), sources=["a", "b"], content_hashes=["same", "same"])
    assert len(within.added) == 1 and within.duplicates == ("same",)


def test_add_remove_rename(gallery: Gallery, rng, centres) -> None:
    pid = enrol(gallery, rng, "Bob", centres[1], n=2).person_id
    added = gallery.add_templates(pid, faces(rng, centres[1], 1), sources=["x"], content_hashes=["bob-x"])
    assert len(added.added) == 1 and gallery.size == 3
    assert gallery.remove_template(added.added[0]) == pid
    assert gallery.size == 2
    with pytest.raises(UnknownTemplateError):
        gallery.remove_template(added.added[0])
    enrol(gallery, rng, "Carol", centres[2], n=1)
    with pytest.raises(GalleryError, match="already belongs"):
        gallery.rename(pid, "carol")
    gallery.rename(pid, "Robert")
    assert gallery.person("robert").id == pid
    with pytest.raises(UnknownPersonError):
        gallery.person("Bob")
    match = gallery.identify_features(faces(rng, centres[1], 1))[0]
    assert match.name == "Robert"


def test_forget_leaves_nothing_behind(gallery: Gallery, redis_client, keys, rng, centres, tmp_path: Path) -> None:
    keep = enrol(gallery, rng, "Keeper", centres[0], n=2, crops=[b"\xff\xd8keep"] * 2)
    gone = enrol(gallery, rng, "Gone Person", centres[1], n=3, crops=[b"\xff\xd8gone"] * 3, metadata={"team": "x"})
    gallery.rename(gone.person_id, "Gone For Good")
    gallery.snapshot()  # a snapshot holding their features, to be rewritten
    crops = tmp_path / "data" / "crops"
    assert len(list((crops / gone.person_id).iterdir())) == 3
    other = Gallery(redis_client, keys, GalleryConfig(threshold=0.6), tmp_path / "other")
    assert other.size == 5

    assert gallery.forget("gone for good") == 3

    # Redis: no key, no hash field, no stream entry mentions them.
    needles = [gone.person_id.encode(), b"Gone", *(t.encode() for t in gone.added)]
    for key in redis_client.scan_iter(match=f"{keys.prefix}:*"):
        assert gone.person_id.encode() not in key
        kind = redis_client.type(key)
        if kind == b"hash":
            blob = b" ".join(b"%s=%s" % kv for kv in redis_client.hgetall(key).items())
        elif kind == b"set":
            blob = b" ".join(redis_client.smembers(key))
        elif kind == b"stream":
            entries = redis_client.xrange(key)
            blob = b" ".join(v for _, f in entries for v in f.values())
            assert any(b'"op":"forget"' in f[b"e"] for _, f in entries)
            blob = blob.replace(b'"person":"' + gone.person_id.encode() + b'"', b"")  # the forget event itself
        else:
            blob = redis_client.get(key) or b""
        for needle in needles:
            assert needle not in blob, (key, needle)
    # Disk: no crop, and no snapshot still holding their features.
    assert not (crops / gone.person_id).exists()
    assert len(list((crops / keep.person_id).iterdir())) == 2
    snaps = list((tmp_path / "data" / "snapshots").rglob("snapshot-*.npz"))
    assert len(snaps) == 1
    with np.load(snaps[0]) as data:
        assert gone.person_id.encode() not in data["persons"].tobytes()
    # Every replica: the other process drops their vectors when it syncs.
    other.sync()
    assert other.size == 2 and gone.person_id not in other.replica.names
    match = other.identify_features(faces(rng, centres[1], 1))[0]
    assert match.person_id != gone.person_id and match.decision is Decision.UNKNOWN
    with pytest.raises(UnknownPersonError):
        gallery.forget(gone.person_id)


def test_bad_input(gallery: Gallery, rng, centres) -> None:
    with pytest.raises(VectorError):
        gallery.enrol("X", np.zeros((1, 128), np.float32), sources=["a"], content_hashes=["h"])
    with pytest.raises(VectorError):
        gallery.enrol("X", np.ones((1, 64), np.float32), sources=["a"], content_hashes=["h"])
    with pytest.raises(VectorError):
        gallery.enrol("X", np.ones((1, 128), np.float64), sources=["a"], content_hashes=["h"])
    with pytest.raises(GalleryError, match="one per face"):
        gallery.enrol("X", faces(rng, centres[0], 2), sources=["a"], content_hashes=["h", "i"])
    with pytest.raises(GalleryError):
        gallery.enrol("   ", faces(rng, centres[0], 1), sources=["a"], content_hashes=["h"])
    with pytest.raises(UnknownPersonError):
        gallery.add_templates("nobody", faces(rng, centres[0], 1), sources=["a"], content_hashes=["h"])
    with pytest.raises(UnknownPersonError):
        gallery.person("nobody at all")
    bad = faces(rng, centres[0], 1)
    bad[0, 3] = np.nan
    with pytest.raises(VectorError):
        gallery.identify_features(bad)
    with pytest.raises(VectorError):
        gallery.identify(faces(rng, centres[0], 1) * 3, "base")  # not L2-normalised
    assert gallery.size == 0


def test_empty_gallery_and_version_mismatch(gallery: Gallery, rng, centres) -> None:
    unit = gallery.projector.project(faces(rng, centres[0], 2))
    matches = gallery.identify(unit, "base")
    assert [m.decision for m in matches] == [Decision.UNKNOWN] * 2
    assert matches[0].to_json()["person_id"] is None
    with pytest.raises(VersionMismatchError):
        gallery.identify(unit, "head-7")


def test_redis_unreachable_is_a_clear_error(tmp_path: Path, keys, rng, centres) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    gallery = Gallery(dead, keys, GalleryConfig(), tmp_path)
    with pytest.raises(BackendUnavailable, match="unreachable"):
        gallery.enrol("X", faces(rng, centres[0], 1), sources=["a"], content_hashes=["h"])
    with pytest.raises(BackendUnavailable):
        gallery.sync()


def test_connection_lost_at_commit_writes_nothing(gallery: Gallery, redis_client, keys, rng, centres, monkeypatch, tmp_path: Path) -> None:
    def lost(self, *args, **kwargs):
        raise redis.ConnectionError("connection reset by peer")

    monkeypatch.setattr(redis.client.Pipeline, "execute", lost)
    with pytest.raises(BackendUnavailable):
        enrol(gallery, rng, "Half", centres[0], n=2, crops=[b"a", b"b"])
    monkeypatch.undo()
    assert list(redis_client.scan_iter(match=f"{keys.prefix}:*")) == []
    crops = tmp_path / "data" / "crops"
    assert not crops.exists() or not any(p.is_file() for p in crops.rglob("*"))
    assert enrol(gallery, rng, "Half", centres[0], n=2).created  # and it works once Redis is back


def test_import_people_in_bulk(gallery: Gallery, redis_client, keys, rng, centres) -> None:
    rows = [(f"Imported {i}", faces(rng, centres[i], 2), ["a", "b"], [f"i{i}a", f"i{i}a"]) for i in range(4)]
    results = gallery.import_people(rows, chunk=3)
    assert [len(r.added) for r in results] == [1, 1, 1, 1]  # the repeated hash is skipped
    assert results[0].duplicates == ("i0a",)
    assert redis_client.xlen(keys.gallery_events()) == 4  # one event per person
    match = gallery.identify_features(faces(rng, centres[2], 1))[0]
    assert match.name == "Imported 2" and match.known
    with pytest.raises(GalleryError, match="already enrolled"):
        gallery.import_people([("imported 1", faces(rng, centres[5], 1), ["c"], ["c"])])
    assert gallery.size == 4


def test_editing_people_does_not_load_the_replica(redis_client, keys, tmp_path: Path, rng, centres) -> None:
    """A CLI process that renames or forgets people never pays for the index."""
    worker = Gallery(redis_client, keys, GalleryConfig(threshold=0.6), tmp_path / "worker")
    pid = enrol(worker, rng, "Dora", centres[0], n=2).person_id
    cli = Gallery(redis_client, keys, GalleryConfig(threshold=0.6), tmp_path / "cli")
    cli.rename(pid, "Dorothy")
    assert cli.person(pid).name == "Dorothy"
    assert cli.forget("dorothy") == 2
    assert cli._replica is None
    worker.sync()
    assert worker.size == 0
