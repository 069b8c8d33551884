"""Replicas in several processes' shoes: convergence, snapshots + replay, version switches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.config import GalleryConfig
from faec_rec.errors import VersionMismatchError
from faec_rec.index import Gallery
from faec_rec.index.events import id_before
from faec_rec.index.snapshot import list_snapshots, load_newest, snapshot_position

pytestmark = pytest.mark.integration

CONFIG = GalleryConfig(threshold=0.6, snapshot_every=10_000)


class RotationHead:
    """A stand-in comparison head: a fixed rotation of the features, L2-normalised."""

    def __init__(self, version: str = "head-1", seed: int = 5) -> None:
        self.version = version
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(128, 128)))
        self.matrix = q.astype(np.float32)
        self.calls = 0

    def project(self, features: np.ndarray) -> np.ndarray:
        self.calls += 1
        y = features @ self.matrix
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def faces(rng: np.random.Generator, centre: np.ndarray, n: int) -> np.ndarray:
    x = centre + 0.35 * rng.normal(size=(n, 128)) / np.sqrt(128)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def centres() -> np.ndarray:
    c = np.random.default_rng(99).normal(size=(40, 128))
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def queries(centres: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([faces(rng, c, 2) for c in centres])  # includes never-enrolled identities


def answers(gallery: Gallery, features: np.ndarray) -> list[dict]:
    return [m.to_json() for m in gallery.identify_features(features)]


def churn(galleries: list[Gallery], centres: np.ndarray, rng: np.random.Generator, people: int = 24, tag: str = "P") -> None:
    """Interleaved changes from several processes: enrol, add, remove, rename, forget."""
    ids = []
    for i in range(people):
        g = galleries[i % len(galleries)]
        ids.append(g.enrol(f"{tag}{i}", faces(rng, centres[i], 3), sources=["s"] * 3,
                           content_hashes=[f"{i}-{j}" for j in range(3)]).person_id)
    for i in range(0, people, 3):
        g = galleries[(i + 1) % len(galleries)]
        g.add_templates(ids[i], faces(rng, centres[i], 2), sources=["t"] * 2, content_hashes=[f"{i}-x", f"{i}-y"])
    for i in range(1, people, 4):
        g = galleries[i % len(galleries)]
        g.remove_template(g.person(ids[i]).template_ids[0])
    galleries[0].rename(ids[2], f"Renamed {tag}2")
    galleries[-1].forget(ids[5])
    galleries[0].forget(ids[7])


def test_two_replicas_converge_after_interleaved_changes(redis_client, keys, tmp_path: Path, centres) -> None:
    a = Gallery(redis_client, keys, CONFIG, tmp_path / "a")
    b = Gallery(redis_client, keys, CONFIG, tmp_path / "b")
    churn([a, b], centres, np.random.default_rng(11))
    a.sync()
    b.sync()
    # 24 people x 3, +2 for 8 of them, -1 for 6 of them, then P5 (2 left) and P7 (3) forgotten
    assert a.size == b.size == 24 * 3 + 8 * 2 - 6 - 2 - 3
    assert a.replica.position == b.replica.position
    assert a.replica.digest() == b.replica.digest()
    q = queries(centres)
    assert answers(a, q) == answers(b, q)
    named = [m for m in answers(a, q) if m["decision"] == "known"]
    assert {m["name"] for m in named} >= {"Renamed P2", "P0"}
    assert not any(m["name"] in ("P5", "P7") for m in named)


def test_snapshot_plus_replay_equals_full_replay(redis_client, keys, tmp_path: Path, centres) -> None:
    config = CONFIG.model_copy(update={"trim_stream": False})  # keep the whole stream to replay it
    writer = Gallery(redis_client, keys, config, tmp_path / "w")
    rng = np.random.default_rng(12)
    churn([writer], centres[:20], rng, people=12)
    snap = writer.snapshot()
    churn([writer], centres[20:], rng, people=12, tag="Q")  # more changes after the snapshot, forgets included
    for i in range(3):
        writer.enrol(f"Late {i}", faces(rng, centres[30 + i], 2), sources=["l"] * 2, content_hashes=[f"late{i}a", f"late{i}b"])

    _, meta, _ = load_newest(writer.snapshot_dir)
    last = writer.replica.position
    assert meta["position"] != last  # the newest snapshot is behind the stream: replay needed
    from_snapshot = Gallery(redis_client, keys, config, tmp_path / "w")
    full = writer.fresh_replica("stream")
    records = writer.fresh_replica("records")
    assert from_snapshot.replica.position == full.position == last
    assert from_snapshot.replica.digest() == full.digest() == records.digest() == writer.replica.digest()
    q = writer.projector.project(queries(centres))
    expect = [m.to_json() for m in full.identify(q, "base", 0.6)]
    assert [m.to_json() for m in from_snapshot.identify(q, "base")] == expect
    assert [m.to_json() for m in records.identify(q, "base", 0.6)] == expect
    assert snap.exists() or list_snapshots(writer.snapshot_dir)


def test_torn_and_damaged_snapshots_do_not_stop_a_replica(redis_client, keys, tmp_path: Path, centres) -> None:
    writer = Gallery(redis_client, keys, CONFIG, tmp_path / "w")
    churn([writer], centres, np.random.default_rng(13), people=9)
    good = writer.snapshot()
    # A writer killed mid-write leaves only a temporary file; a damaged newer file is skipped.
    (writer.snapshot_dir / f".{good.name}.999999.tmp").write_bytes(b"PK\x03\x04 torn")
    newer = writer.snapshot_dir / "snapshot-9999999999999-000000.npz"
    newer.write_bytes(good.read_bytes()[:100])
    reader = Gallery(redis_client, keys, CONFIG, tmp_path / "w")
    assert reader.replica.digest() == writer.replica.digest()
    q = queries(centres)
    assert answers(reader, q) == answers(writer, q)


def test_snapshot_written_automatically_every_n_events(redis_client, keys, tmp_path: Path, centres) -> None:
    config = GalleryConfig(threshold=0.6, snapshot_every=5)
    g = Gallery(redis_client, keys, config, tmp_path / "g")
    rng = np.random.default_rng(14)
    for i in range(4):
        g.enrol(f"P{i}", faces(rng, centres[i], 1), sources=["s"], content_hashes=[f"h{i}"])
    g.sync()  # loads the replica from the records: no event applied yet
    for i in range(4, 8):
        g.enrol(f"P{i}", faces(rng, centres[i], 1), sources=["s"], content_hashes=[f"h{i}"])
    assert list_snapshots(g.snapshot_dir) == []  # 4 events applied
    g.enrol("P8", faces(rng, centres[8], 1), sources=["s"], content_hashes=["h8"])
    assert len(list_snapshots(g.snapshot_dir)) == 1  # the 5th
    assert redis_client.hget(keys.gallery_snapshot(), "version") == b"base"
    assert not redis_client.exists(keys.gallery_lock())


def test_version_switch_reprojects_and_every_replica_follows(redis_client, keys, tmp_path: Path, centres) -> None:
    head = RotationHead()
    leader = Gallery(redis_client, keys, CONFIG, tmp_path / "l")
    follower = Gallery(redis_client, keys, CONFIG, tmp_path / "f", projector_loader=lambda v: RotationHead(v))
    manual = Gallery(redis_client, keys, CONFIG, tmp_path / "m")
    churn([leader, follower], centres, np.random.default_rng(15), people=12)
    for g in (leader, follower, manual):
        g.sync()
    q = queries(centres)
    base_answers = answers(leader, q)

    leader.set_projector(head)
    assert leader.version == "head-1"
    assert redis_client.get(keys.gallery_version()) == b"head-1"
    with pytest.raises(VersionMismatchError):
        leader.identify(q[:1], "base")  # base vectors no longer accepted

    follower.sync()
    assert follower.version == "head-1"
    manual.sync()
    assert manual.version == "base" and manual.replica.pending_version == "head-1"
    assert answers(manual, q) == base_answers  # still consistent in its own version
    manual.set_projector(RotationHead())
    assert manual.replica.pending_version is None

    switched = answers(leader, q)
    assert answers(follower, q) == switched == answers(manual, q)
    # A rotation preserves cosines, so the people found are the same as before the switch.
    assert [m["nearest"]["person_id"] for m in switched] == [m["nearest"]["person_id"] for m in base_answers]
    # Enrolment after the switch is projected with the new head everywhere.
    leader.enrol("After", faces(np.random.default_rng(1), centres[39], 2), sources=["a"] * 2, content_hashes=["z1", "z2"])
    follower.sync()
    hit = follower.identify(head.project(faces(np.random.default_rng(2), centres[39], 1)), "head-1")[0]
    assert hit.name == "After" and hit.known
    # Only one version event, however many replicas switched.
    events = [f for _, f in redis_client.xrange(keys.gallery_events()) if b'"op":"version"' in f[b"e"]]
    assert len(events) == 1


def test_trimmed_stream_sends_stale_replicas_to_the_records(redis_client, keys, tmp_path: Path, centres) -> None:
    rng = np.random.default_rng(16)
    writer = Gallery(redis_client, keys, CONFIG, tmp_path / "w")
    stale = Gallery(redis_client, keys, CONFIG, tmp_path / "s")
    churn([writer], centres[:10], rng, people=9)
    stale.sync()
    for round_ in range(3):  # three snapshots: the stream is trimmed to the older of the two kept
        writer.enrol(f"R{round_}", faces(rng, centres[20 + round_], 2), sources=["r"] * 2,
                     content_hashes=[f"r{round_}a", f"r{round_}b"])
        writer.snapshot()
    assert redis_client.hget(keys.gallery_snapshot(), "trimmed") is not None
    oldest_kept = snapshot_position(list_snapshots(writer.snapshot_dir)[-1])
    first = redis_client.xrange(keys.gallery_events(), count=1)[0][0].decode()
    assert not id_before(first, oldest_kept)  # the older kept snapshot can still replay
    assert redis_client.xlen(keys.gallery_events()) < 9 + 3
    with pytest.raises(Exception, match="trimmed"):
        writer.fresh_replica("stream")
    stale.sync()  # its position was trimmed away: rebuilt from the records, then caught up
    assert stale.replica.digest() == writer.replica.digest()
    fresh = Gallery(redis_client, keys, CONFIG, tmp_path / "w")  # loads the newest snapshot
    q = queries(centres)
    assert answers(stale, q) == answers(writer, q) == answers(fresh, q)


@pytest.mark.parametrize("approximate", ["ivf", "hnsw"])
def test_approximate_replica_answers_like_the_exact_one(redis_client, keys, tmp_path: Path, centres, approximate: str) -> None:
    exact = Gallery(redis_client, keys, CONFIG, tmp_path / "e")
    approx = Gallery(redis_client, keys, CONFIG.model_copy(update={"hnsw_above": 30, "approximate": approximate}), tmp_path / "a")
    churn([exact, approx], centres, np.random.default_rng(17))
    exact.sync()
    approx.sync()
    assert exact.replica.index_kind == "flat" and approx.replica.index_kind == approximate
    q = queries(centres)
    a, e = answers(approx, q), answers(exact, q)
    # Candidates are re-scored exactly, so where the index finds the same people the answers are identical.
    same = sum(x == y for x, y in zip(a, e))
    assert same / len(q) >= 0.99
    assert [m["decision"] for m in a] == [m["decision"] for m in e]
