"""The in-memory replica: applying events, open-set answers, order independence."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.config import GalleryConfig
from faec_rec.errors import VersionMismatchError
from faec_rec.index.decision import Decision
from faec_rec.index.events import EventOp, GalleryEvent
from faec_rec.index.projection import BaseProjector
from faec_rec.index.replica import Replica


class ScaledProjector:
    """A stand-in trained head: a fixed random rotation, then L2-normalised."""

    def __init__(self, version: str, seed: int = 3) -> None:
        self.version = version
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(128, 128)))
        self.matrix = q.astype(np.float32)

    def project(self, features: np.ndarray) -> np.ndarray:
        y = features @ self.matrix
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def add(person: str, name: str, tids: list[str]) -> GalleryEvent:
    return GalleryEvent(EventOp.ADD, person=person, name=name, templates=tuple(tids))


def populated(rng: np.random.Generator, config: GalleryConfig, people: int = 20, per: int = 3) -> tuple[Replica, np.ndarray, list]:
    centres = unit(rng.normal(size=(people, 128)))
    replica = Replica(config, BaseProjector())
    events, feats = [], {}
    for p in range(people):
        tids = [f"t{p}-{j}" for j in range(per)]
        for t in tids:
            feats[t] = (centres[p] + 0.3 * rng.normal(size=128) / np.sqrt(128)).astype(np.float32) * 2.5
        events.append((f"{p + 1}-0", add(f"p{p}", f"Person {p}", tids)))
    replica.apply(events, feats)
    return replica, centres, events


def test_identify_known_and_unknown(rng: np.random.Generator) -> None:
    replica, centres, _ = populated(rng, GalleryConfig())
    queries = unit(centres[:5] + 0.3 * rng.normal(size=(5, 128)) / np.sqrt(128))
    strangers = unit(rng.normal(size=(3, 128)))
    matches = replica.identify(np.vstack([queries, strangers]), "base", 0.6)
    assert [m.person_id for m in matches[:5]] == [f"p{i}" for i in range(5)]
    assert all(m.decision is Decision.KNOWN for m in matches[:5])
    assert all(m.decision is Decision.UNKNOWN for m in matches[5:])
    assert all(m.runner_up is not None and m.runner_up.person_id != m.person_id for m in matches)
    assert matches[0].name == "Person 0" and matches[0].template_id.startswith("t0-")


def test_empty_gallery_answers_unknown() -> None:
    replica = Replica(GalleryConfig(), BaseProjector())
    matches = replica.identify(unit(np.ones((2, 128))), "base", 0.6)
    assert [m.decision for m in matches] == [Decision.UNKNOWN, Decision.UNKNOWN]
    assert matches[0].person_id is None


def test_version_mismatch_raises(rng: np.random.Generator) -> None:
    replica, centres, _ = populated(rng, GalleryConfig(), people=3)
    with pytest.raises(VersionMismatchError):
        replica.identify(centres[:1], "head-1", 0.6)


def test_per_person_threshold_rejects_a_look_alike_the_global_one_accepts() -> None:
    e = np.eye(128, dtype=np.float32)
    a = e[0]
    b = 0.8 * e[0] + 0.6 * e[1]          # an enrolled look-alike of A (cos 0.8)
    stranger = unit(0.7 * e[0] + np.sqrt(1 - 0.49) * e[2])  # cos 0.70 to A, 0.56 to B
    genuine = unit(0.95 * e[0] + np.sqrt(1 - 0.95**2) * e[3])  # cos 0.95 to A, 0.76 to B
    others = [unit(e[10 + i] + e[40 + i]) for i in range(5)]
    feats = {"ta": a, "tb": b, **{f"to{i}": v for i, v in enumerate(others)}}
    events = [("1-0", add("A", "A", ["ta"])), ("2-0", add("B", "B", ["tb"]))]
    events += [(f"{3 + i}-0", add(f"O{i}", f"O{i}", [f"to{i}"])) for i in range(5)]
    queries = np.vstack([stranger, genuine])

    plain = Replica(GalleryConfig(per_person_thresholds=False), BaseProjector())
    plain.apply(events, feats)
    strict = Replica(GalleryConfig(per_person_thresholds=True, max_raise=0.15), BaseProjector())
    strict.apply(events, feats)

    loose = plain.identify(queries, "base", 0.6)
    assert loose[0].person_id == "A" and loose[0].decision is Decision.KNOWN  # the stranger passes 0.6
    guarded = strict.identify(queries, "base", 0.6)
    assert guarded[0].person_id == "A" and guarded[0].decision is Decision.UNKNOWN
    assert guarded[0].threshold == pytest.approx(0.75)  # min(0.6 + 0.15, 0.8 + 0.02)
    assert guarded[1].person_id == "A" and guarded[1].decision is Decision.KNOWN
    # A person nobody resembles keeps the global threshold.
    assert strict.threshold_for("O0", 0.6) == pytest.approx(0.6)


def test_margin_makes_close_calls_unknown() -> None:
    e = np.eye(128, dtype=np.float32)
    feats = {"t1": e[0], "t2": unit(0.9 * e[0] + np.sqrt(0.19) * e[1])}
    events = [("1-0", add("A", "A", ["t1"])), ("2-0", add("B", "B", ["t2"]))]
    query = unit(0.97 * e[0] + np.sqrt(1 - 0.97**2) * e[2])[None, :]
    no_margin = Replica(GalleryConfig(per_person_thresholds=False), BaseProjector())
    no_margin.apply(events, feats)
    assert no_margin.identify(query, "base", 0.5)[0].decision is Decision.KNOWN
    margin = Replica(GalleryConfig(per_person_thresholds=False, margin=0.2), BaseProjector())
    margin.apply(events, feats)
    assert margin.identify(query, "base", 0.5)[0].decision is Decision.UNKNOWN


def test_runner_up_found_when_one_person_fills_the_candidates(rng: np.random.Generator) -> None:
    e = np.eye(128, dtype=np.float32)
    many = {f"a{i}": unit(e[0] + 0.01 * rng.normal(size=128)) for i in range(40)}
    feats = {**many, "b": unit(e[0] + e[1])}
    replica = Replica(GalleryConfig(search_k=8), BaseProjector())
    replica.apply([("1-0", add("A", "A", list(many))), ("2-0", add("B", "B", ["b"]))], feats)
    match = replica.identify(e[:1], "base", 0.5)[0]
    assert match.person_id == "A"
    assert match.runner_up is not None and match.runner_up.person_id == "B"
    assert match.runner_up.score == pytest.approx(np.sqrt(0.5), abs=1e-5)


def test_removal_forget_and_rename(rng: np.random.Generator) -> None:
    replica, centres, _ = populated(rng, GalleryConfig(), people=5)
    replica.apply([
        ("10-0", GalleryEvent(EventOp.REMOVE, person="p0", templates=("t0-0", "t0-1"))),
        ("11-0", GalleryEvent(EventOp.FORGET, person="p1")),
        ("12-0", GalleryEvent(EventOp.RENAME, person="p2", name="Renamed")),
    ], {})
    assert replica.size == 15 - 2 - 3
    assert replica.person_of("t0-2") == "p0" and replica.person_of("t0-0") is None
    assert "p1" not in replica.names and replica.names["p2"] == "Renamed"
    matches = replica.identify(centres[:3], "base", 0.6)
    assert matches[1].person_id != "p1"
    assert matches[2].name == "Renamed"
    assert replica.position == "12-0"


def test_replay_is_idempotent_and_skips_deleted_templates(rng: np.random.Generator) -> None:
    replica, _, events = populated(rng, GalleryConfig(), people=4)
    before = replica.digest()
    replica.apply(events, {})  # the same events again, features gone meanwhile: nothing changes
    assert replica.digest() == before
    late = Replica(GalleryConfig(), BaseProjector())
    late.apply([("1-0", add("p9", "Nine", ["gone"]))], {})  # template deleted before replay
    assert late.size == 0 and late.names == {"p9": "Nine"}


def test_snapshot_arrays_round_trip_and_answer_identically(rng: np.random.Generator) -> None:
    config = GalleryConfig()
    replica, centres, _ = populated(rng, config, people=30)
    replica.apply([("99-0", GalleryEvent(EventOp.REMOVE, person="p3", templates=("t3-1",)))], {})
    meta, arrays = replica.to_arrays()
    meta["position"] = replica.position
    again = Replica.from_arrays(meta, arrays, config, BaseProjector())
    assert again.digest() == replica.digest() and again.position == "99-0"
    queries = unit(centres + 0.3 * rng.normal(size=centres.shape) / np.sqrt(128))
    assert [m.to_json() for m in again.identify(queries, "base", 0.6)] == [m.to_json() for m in replica.identify(queries, "base", 0.6)]


def test_version_event_reprojects_or_waits_for_a_projector(rng: np.random.Generator) -> None:
    replica, centres, _ = populated(rng, GalleryConfig(), people=6)
    head = ScaledProjector("head-1")
    waiting, _, _ = populated(np.random.default_rng(1234), GalleryConfig(), people=6)
    version = [("50-0", GalleryEvent(EventOp.VERSION, version="head-1"))]
    waiting.apply(version, {})
    assert waiting.version == "base" and waiting.pending_version == "head-1"
    replica.apply(version, {}, loader=lambda v: head if v == "head-1" else None)
    assert replica.version == "head-1" and replica.pending_version is None
    with pytest.raises(VersionMismatchError):
        replica.identify(centres[:1], "base", 0.6)
    matches = replica.identify(head.project(centres), "head-1", 0.6)
    assert [m.person_id for m in matches] == [f"p{i}" for i in range(6)]


@pytest.mark.parametrize("approximate", ["ivf", "hnsw"])
def test_switch_to_approximate_past_the_threshold_and_back(rng: np.random.Generator, approximate: str) -> None:
    config = GalleryConfig(hnsw_above=50, approximate=approximate)
    replica, centres, _ = populated(rng, config, people=30)  # 90 templates
    assert replica.index_kind == approximate
    matches = replica.identify(centres, "base", 0.6)
    assert [m.person_id for m in matches] == [f"p{i}" for i in range(30)]
    meta, arrays = replica.to_arrays()  # the trained index travels in the snapshot
    meta["position"] = replica.position
    again = Replica.from_arrays(meta, arrays, config, BaseProjector())
    assert again.index_kind == approximate and again.size == replica.size
    assert [m.score for m in again.identify(centres, "base", 0.6)] == [m.score for m in matches]
    removes = [(f"{100 + p}-0", GalleryEvent(EventOp.FORGET, person=f"p{p}")) for p in range(25)]
    replica.apply(removes, {})
    assert replica.size == 15 and replica.index_kind == "flat"
    matches = replica.identify(centres[25:], "base", 0.6)
    assert [m.person_id for m in matches] == [f"p{i}" for i in range(25, 30)]


def test_snapshot_of_a_gallery_whose_only_template_was_removed() -> None:
    replica = Replica(GalleryConfig(), BaseProjector())
    replica.apply([("1-0", add("A", "A", ["t"]))], {"t": unit(np.ones(128))})
    replica.apply([("2-0", GalleryEvent(EventOp.REMOVE, person="A", templates=("t",)))], {})
    meta, arrays = replica.to_arrays()
    meta["position"] = replica.position
    again = Replica.from_arrays(meta, arrays, GalleryConfig(), BaseProjector())
    assert again.size == 0 and again.names == {"A": "A"}
