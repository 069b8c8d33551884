"""Visitor grouping quality and speed, printed as JSON.

    python -m benchmarks.visitors --data ../shared/data/faces/lfw [--limit-people N]

Grouping quality: LFW people with at least two photos (the gallery knows none
of them), shuffled with a fixed seed and fed one at a time through the same
rule the workers use (:class:`faec_rec.visitors.replica.VisitorReplica`),
then scored with BCubed and pairwise precision/recall and the share of faces
left alone (in no visitor, or alone in one). Side by side on the same faces:
dlib's ``chinese_whispers_clustering`` at 0.5 (all faces at once) and DBSCAN
(numpy, cosine, all at once). The "two halves" case feeds half the faces, then
rebuilds the replica from its events (a restart) and feeds the rest.

Features are computed once with the real engine (detector, alignment,
backbone, flip averaging: the worker's settings) and cached under ``.cache/``.

``--model FILE --card CARD`` adds the same grouping with a supplied backbone (benchmarks
only: the research-only reference model), its visitor thresholds mapped from the built-in
ones as ``models add-backbone`` maps them, and a held-out check of a stricter shift.

Speed: joining one face at 100k and 1M stored synthetic faces (clustered
face-like vectors), and re-grouping 100k from scratch. The machine is shared:
the JSON records the load average.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"
log = logging.getLogger("benchmarks.visitors")


# ---- features ----------------------------------------------------------------------
def lfw_people(data: Path, min_photos: int = 2, limit_people: int = 0) -> tuple[list[str], list[str]]:
    """(relative image paths, labels) of people with at least ``min_photos`` photos."""
    paths, labels = [], []
    people = sorted(p for p in data.iterdir() if p.is_dir())
    kept = 0
    for person in people:
        images = sorted(f.name for f in person.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if len(images) < min_photos:
            continue
        kept += 1
        if limit_people and kept > limit_people:
            break
        for name in images:
            paths.append(f"{person.name}/{name}")
            labels.append(person.name)
    return paths, labels


def describe(data: Path, paths: list[str], embedder=None) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Features (n, 128) raw, found flags, quality (face_px, yaw, sharpness, good) per image."""
    from tqdm import tqdm

    from benchmarks.lfw import central_face
    from faec_rec.config import FacesConfig
    from faec_rec.faces.engine import FaceEngine
    from faec_rec.faces.image import load_image
    from faec_rec.visitors.quality import assess_face

    engine = FaceEngine(FacesConfig())
    if embedder is not None:  # a supplied backbone, fed the engine's chips as a deployment feeds it
        engine.set_embedder(embedder)
    n = len(paths)
    feats = np.zeros((n, 128), np.float32)
    found = np.zeros(n, bool)
    quality = np.zeros((n, 4), np.float32)
    batch = 32
    for start in tqdm(range(0, n, batch), desc="faces", file=sys.stderr):
        chips, idx = [], []
        for i in range(start, min(start + batch, n)):
            image = load_image(data / paths[i])
            faces = engine.detect(image)
            if not faces:
                continue
            face = central_face(faces, image.shape)
            chip = engine.align(image, [face])[0]
            q = assess_face(face.box, face.landmarks, chip)
            quality[i] = (q.face_px, q.yaw, q.sharpness, float(q.good))
            chips.append(chip)
            idx.append(i)
        if idx:
            feats[idx] = engine.features(np.stack(chips))
            found[idx] = True
    return {"features": feats, "found": found, "quality": quality}


def cached_features(data: Path, paths: list[str], model: Path | None = None, card: Path | None = None) -> dict[str, np.ndarray]:
    """The built-in backbone's features of ``paths`` (or, with ``model`` and ``card``, a supplied
    backbone's, from the same chips), computed once and cached under ``.cache/``."""
    from benchmarks.lfw import cache_key
    from faec_rec.config import FacesConfig

    import hashlib

    embedder, tag = None, ""
    if model is not None:
        from faec_rec.faces.card import parse_card
        from faec_rec.faces.supplied import SuppliedEmbedder

        blob = model.read_bytes()
        embedder = SuppliedEmbedder(blob, parse_card(json.loads(card.read_text())), flip_average=FacesConfig().flip_average)
        tag = "-" + hashlib.sha256(blob).hexdigest()[:12]
    key = hashlib.sha256(("|".join(paths) + cache_key(FacesConfig())).encode()).hexdigest()[:16]
    CACHE_DIR.mkdir(exist_ok=True)
    path = CACHE_DIR / f"visitors-lfw-{key}{tag}.npz"
    if path.is_file():
        return dict(np.load(path))
    arrays = describe(data, paths, embedder)
    np.savez(path, **arrays)
    return arrays


# ---- scores ------------------------------------------------------------------------
def bcubed(clusters: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """BCubed (precision, recall): ``clusters`` (n,) int ids (each unclustered face its own id)."""
    from collections import Counter

    both = Counter(zip(clusters.tolist(), labels.tolist()))
    size_c = Counter(clusters.tolist())
    size_l = Counter(labels.tolist())
    p = np.mean([both[(c, l)] / size_c[c] for c, l in zip(clusters.tolist(), labels.tolist())])
    r = np.mean([both[(c, l)] / size_l[l] for c, l in zip(clusters.tolist(), labels.tolist())])
    return float(p), float(r)


def pairwise(clusters: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Pairwise (precision, recall) over pairs of faces put in one cluster."""
    from collections import Counter

    def pairs(counter: Counter) -> int:
        return sum(n * (n - 1) // 2 for n in counter.values())

    both = pairs(Counter(zip(clusters.tolist(), labels.tolist())))
    in_c = pairs(Counter(clusters.tolist()))
    in_l = pairs(Counter(labels.tolist()))
    return (both / in_c if in_c else 1.0), (both / in_l if in_l else 1.0)


def scores(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from collections import Counter

    bp, br = bcubed(clusters, labels)
    pp, pr = pairwise(clusters, labels)
    sizes = Counter(clusters.tolist())
    alone = float(np.mean([sizes[c] == 1 for c in clusters.tolist()]))
    return {"bcubed_precision": round(bp, 4), "bcubed_recall": round(br, 4), "pairwise_precision": round(pp, 4),
            "pairwise_recall": round(pr, 4), "alone_share": round(alone, 4), "clusters": len(sizes)}


# ---- the three groupings -------------------------------------------------------------
def feed_incremental(feats: np.ndarray, good: np.ndarray, config=None, replica=None):  # noqa: ANN001
    """Feed faces one at a time through the visitor rule; returns (cluster ids, replica, join times s)."""
    from faec_rec.visitors.replica import VisitorReplica

    replica = replica or VisitorReplica(config) if config is not None else (replica or VisitorReplica())
    counter = [len(replica.members) + 10_000_000]
    times = []
    for i in range(len(feats)):
        fid = f"f{len(replica._slot_of)}-{i}"
        t0 = time.perf_counter()
        d = replica.decide(feats[i], bool(good[i]))
        vid = d.visitor
        if vid is None and d.new:
            counter[0] += 1
            vid = f"v-{counter[0]}"
        replica.add(fid, feats[i], vid, bool(good[i]))
        for other in d.merge:
            replica.assign(replica.faces_of(other), vid)
        times.append(time.perf_counter() - t0)
    return replica, np.array(times)


def clusters_of(replica, face_ids: list[str]) -> np.ndarray:  # noqa: ANN001
    """Cluster id per face (faces in no visitor get their own id)."""
    ids, out = {}, []
    for n, fid in enumerate(face_ids):
        v = replica.visitor_of(fid)
        key = v if v is not None else f"alone-{n}"
        out.append(ids.setdefault(key, len(ids)))
    return np.array(out)


def chinese_whispers(feats: np.ndarray, threshold: float = 0.5) -> np.ndarray | None:
    """dlib's chinese_whispers_clustering at Euclidean distance ``threshold`` (None without dlib)."""
    try:
        import dlib
    except ImportError:
        return None
    vectors = [dlib.vector(row.astype(float).tolist()) for row in feats]
    return np.array(dlib.chinese_whispers_clustering(vectors, threshold))


def dbscan(feats: np.ndarray, eps_cos: float, min_samples: int = 2) -> np.ndarray:
    """DBSCAN with cosine similarity >= ``eps_cos`` as the neighbourhood (numpy, all at once);
    noise points get their own ids."""
    u = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = u @ u.T
    neigh = [np.flatnonzero(row >= eps_cos) for row in sims]
    core = np.array([len(nb) >= min_samples for nb in neigh])
    labels = np.full(len(feats), -1)
    cid = 0
    for i in range(len(feats)):
        if labels[i] != -1 or not core[i]:
            continue
        labels[i] = cid
        stack = [i]
        while stack:
            j = stack.pop()
            if not core[j]:
                continue
            for nb in neigh[j]:
                if labels[nb] == -1:
                    labels[nb] = cid
                    stack.append(nb)
        cid += 1
    noise = labels == -1
    labels[noise] = cid + np.arange(noise.sum())
    return labels


def synthetic(n: int, per: int = 10, seed: int = 0) -> np.ndarray:
    """``n`` face-like raw vectors: identities of ``per`` faces around a shared mean (impostor cosine ~0.8)."""
    rng = np.random.default_rng(seed)
    ids = max(1, n // per)
    mean = rng.normal(size=128).astype(np.float32)
    mean /= np.linalg.norm(mean)
    centres = rng.normal(size=(ids, 128)).astype(np.float32)
    centres = mean + 0.6 * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n, 128)).astype(np.float32)
    noise = 0.15 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return centres[np.arange(n) % ids] + noise


def join_latency(n: int, queries: int = 500) -> dict[str, float]:
    """ms per join (rule decision + add to the replica, no Redis) with ``n`` good faces stored."""
    from faec_rec.visitors.replica import VisitorReplica

    import faiss

    feats = synthetic(n + queries, seed=n)
    replica = VisitorReplica()
    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    groups = [f"v-{i % max(1, n // 10)}" for i in range(n)]
    replica.load_bulk([f"f{i}" for i in range(n)], feats[:n], groups, np.ones(n, bool))
    build = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)  # what a worker process uses (gallery.faiss_threads)
    times = []
    for i in range(n, n + queries):
        t = time.perf_counter()
        d = replica.decide(feats[i], True)
        replica.add(f"f{i}", feats[i], d.visitor or f"new-{i}", True)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"stored": n, "index": replica.index_kind, "build_s": round(build, 1), "p50_ms": round(float(np.median(ms)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def join_latency_redis(n: int, queries: int = 200) -> dict[str, float]:
    """ms per join through Redis (WATCH/MULTI transaction + rule) with ``n`` faces stored in a real Redis."""
    import uuid

    import redis

    from faec_rec.keys import Keys
    from faec_rec.visitors.service import Visitors
    from faec_rec.visitors.store import NewFace

    url = os.environ.get("FAEC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    client = redis.Redis.from_url(url)
    keys = Keys("bv" + uuid.uuid4().hex[:8])
    feats = synthetic(n + queries, seed=7)
    now = time.time()
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(n):  # bulk load, as if joined earlier
            vid = f"v-{i % max(1, n // 10) + 1}"
            pipe.hset(keys.unknown_face(f"f{i}"), mapping={"features": feats[i].tobytes(), "visitor": vid, "good": 1, "at": now})
            pipe.zadd(keys.unknown_faces(), {f"f{i}": now})
            pipe.sadd(keys.visitor_faces(vid), f"f{i}")
            pipe.sadd(keys.visitors(), vid)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        client.set(keys.visitor_counter(), n)
        from faec_rec.visitors.events import VisitorEvent, VisitorLog, VisitorOp

        with client.pipeline() as pipe:  # a stream position for the snapshot (an event that changes nothing)
            VisitorLog(client, keys).append(pipe, VisitorEvent(VisitorOp.ASSIGN))
            pipe.execute()
        import faiss

        visitors = Visitors(client, keys, data_dir=CACHE_DIR / "bench-crops", auto_expire=False)
        faiss.omp_set_num_threads(2)
        t0 = time.perf_counter()
        visitors.replica  # from the Redis records, then a snapshot is written for the next start
        boot = time.perf_counter() - t0
        snaps = visitors.snapshot_dir
        snap_bytes = sum(p.stat().st_size for p in snaps.glob("snapshot-*.npz"))
        t0 = time.perf_counter()
        restarted = Visitors(client, keys, data_dir=CACHE_DIR / "bench-crops", auto_expire=False)
        restarted.replica  # a worker starting now: the snapshot plus the events after it
        boot_snapshot = time.perf_counter() - t0
        assert restarted.replica.size == visitors.replica.size
        faiss.omp_set_num_threads(1)
        times = []
        for i in range(n, n + queries):
            t = time.perf_counter()
            visitors.join(NewFace(face_id=f"q{i}", features=feats[i], good=True, at=time.time()))
            times.append(time.perf_counter() - t)
        ms = np.array(times) * 1000
        return {"stored": n, "bootstrap_s": round(boot, 1), "bootstrap_from_snapshot_s": round(boot_snapshot, 2),
                "snapshot_mb": round(snap_bytes / 1e6, 1), "p50_ms": round(float(np.median(ms)), 3),
                "p95_ms": round(float(np.percentile(ms, 95)), 3)}
    finally:
        import shutil

        shutil.rmtree(CACHE_DIR / "bench-crops" / "visitor-snapshots" / keys.prefix, ignore_errors=True)
        for key in client.scan_iter(match=f"{keys.prefix}:*", count=5000):
            client.delete(key)
        client.close()


def regroup_time(n: int) -> dict[str, float]:
    """Seconds to regroup ``n`` faces from scratch (the rule over every face; no Redis)."""
    from faec_rec.config import VisitorsConfig
    from faec_rec.visitors.service import regroup_faces

    feats = synthetic(n, seed=3)
    ids = [f"f{i}" for i in range(n)]
    counter = iter(range(1, 10**9))
    t0 = time.perf_counter()
    groups, alone = regroup_faces(VisitorsConfig(), ids, feats, [None] * n, np.ones(n, bool), set(), {},
                                  new_id=lambda: f"v-{next(counter)}")
    return {"faces": n, "seconds": round(time.perf_counter() - t0, 1), "visitors": len(groups), "alone": len(alone)}


def naming_gain(feats: np.ndarray, good: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, object]:
    """Known-person recognition of held-out photos before and after naming visitors.

    People with >= 4 good photos: each is enrolled from their first photo; their
    last photo is held out. "After naming": the photos in between, grouped by the
    rule into visitors as a camera would see them, are named, i.e. the good faces
    of each visitor whose majority is that person become their templates (as
    ``name_visitor`` enrols them). Identification: best template's person if its
    cosine >= the model card's threshold.
    """
    from faec_rec.faces.engine import FaceEngine  # noqa: F401 - the card lives with the engine
    from faec_rec.visitors.replica import VisitorReplica, unit

    if threshold is None:
        card = json.loads((Path(__file__).resolve().parent.parent / "faec_rec/faces/model_card.json").read_text())
        threshold = float(card["projections"]["base"]["threshold"])
    u = unit(feats)
    people = [p for p in np.unique(labels) if good[labels == p].sum() >= 4]
    enrol, held, middle = [], [], []
    for p in people:
        idx = np.flatnonzero((labels == p) & good)
        enrol.append(idx[0])
        held.append(idx[-1])
        middle.extend(idx[1:-1].tolist())
    replica = VisitorReplica()
    for n, i in enumerate(middle):
        d = replica.decide(feats[i], True)
        replica.add(f"m{n}", feats[i], d.visitor or (f"v{n}" if d.new else None), True)
    extra_idx, extra_lab = [], []
    for vid, faces in replica.groups().items():
        members = [middle[int(f[1:])] for f in faces]
        votes = np.bincount(labels[members])
        owner = int(np.argmax(votes))
        if labels[enrol].tolist().count(owner):  # named as the person of most of its faces
            extra_idx.extend(members)
            extra_lab.extend([owner] * len(members))

    def rate(template_idx: list[int], template_lab: list[int]) -> dict[str, float]:
        sims = u[held] @ u[template_idx].T
        best = sims.argmax(1)
        ok = (np.array(template_lab)[best] == labels[held]) & (sims.max(1) >= threshold)
        wrong = (np.array(template_lab)[best] != labels[held]) & (sims.max(1) >= threshold)
        return {"recognised": round(float(ok.mean()), 4), "wrongly_named": round(float(wrong.mean()), 4),
                "templates": len(template_idx)}

    before = rate(enrol, labels[enrol].tolist())
    after = rate(list(enrol) + extra_idx, labels[enrol].tolist() + extra_lab)
    wrong_templates = int(sum(labels[i] != l for i, l in zip(extra_idx, extra_lab)))
    return {"people": len(people), "threshold": threshold, "before_naming": before, "after_naming": after,
            "templates_from_visitors": len(extra_idx), "of_which_another_person": wrong_templates}


def quality(feats: np.ndarray, good: np.ndarray, labels: np.ndarray, cfg=None, peer_feats=None) -> dict[str, object]:  # noqa: ANN001
    """Grouping figures: one at a time, in two halves (a restart between), dlib, DBSCAN.
    ``cfg``: the rule's settings (default: the built-in ones); ``peer_feats``: the built-in
    backbone's features of the same faces, for dlib's and DBSCAN's figures (default ``feats``)."""
    from faec_rec.config import VisitorsConfig
    from faec_rec.visitors.replica import VisitorReplica

    cfg = cfg or VisitorsConfig()
    peer = feats if peer_feats is None else peer_feats
    out: dict[str, object] = {"faces": len(feats), "people": int(len(np.unique(labels))),
                              "good_share": round(float(good.mean()), 4)}
    t0 = time.perf_counter()
    replica, _ = feed_incremental(feats, good, cfg)
    ids = [f"f{i}-{i}" for i in range(len(feats))]
    out["visitors_one_at_a_time"] = {**scores(clusters_of(replica, ids), labels), "seconds": round(time.perf_counter() - t0, 1)}
    # two halves, two runs: the second starts from the first's stored state (a restart)
    half = len(feats) // 2
    first, _ = feed_incremental(feats[:half], good[:half], cfg)
    groups = first.groups()
    restarted = VisitorReplica(cfg)
    kept = [f for fs in groups.values() for f in fs] + [f"f{i}-{i}" for i in range(half) if first.visitor_of(f"f{i}-{i}") is None]
    index = {f"f{i}-{i}": i for i in range(half)}
    restarted.load_bulk(kept, feats[[index[f] for f in kept]], [first.visitor_of(f) for f in kept], good[[index[f] for f in kept]])
    second, _ = feed_incremental(feats[half:], good[half:], cfg, replica=restarted)
    ids2 = [f"f{i}-{i}" for i in range(half)] + [f"f{half + i}-{i}" for i in range(len(feats) - half)]
    out["visitors_two_halves"] = scores(clusters_of(second, ids2), labels)
    t0 = time.perf_counter()
    cw = chinese_whispers(peer, 0.5)
    out["dlib_chinese_whispers_0.5"] = None if cw is None else {**scores(cw, labels), "seconds": round(time.perf_counter() - t0, 1)}
    for eps in (0.94, 0.95):
        out[f"dbscan_cos{eps}_min2"] = scores(dbscan(peer, eps, 2), labels)
    if peer_feats is None:
        out["naming_gain"] = naming_gain(feats, good, labels)
    return out


def supplied_quality(args, paths, found, order, builtin, good, labels) -> dict[str, object]:  # noqa: ANN001
    """The same grouping with a supplied backbone, its visitor thresholds mapped from the
    built-in ones as ``models add-backbone`` maps them (quantile matching on impostor pairs
    of the same faces under both backbones), here on 1,000,000 impostor pairs of these faces."""
    from faec_rec.config import VisitorsConfig
    from faec_rec.training.backbones import VISITOR_THRESHOLDS, map_thresholds, mapped_settings

    if args.card is None:
        raise SystemExit("--model needs --card")
    arrays = cached_features(args.data, paths, args.model, args.card)
    feats = arrays["features"][found][order]
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, len(feats), (2, 2_000_000))
    keep = labels[i] != labels[j]
    i, j = i[keep][:1_000_000], j[keep][:1_000_000]

    def cos(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.einsum("nd,nd->n", x[i], x[j])

    base = VisitorsConfig()
    wanted = {k: getattr(base, k) for k in VISITOR_THRESHOLDS}
    mapped = map_thresholds(cos(builtin), cos(feats), wanted, base.ambiguity_margin)
    update = mapped_settings(mapped)  # what a deployment serving this backbone would read
    if update is None:
        return {"model": str(args.model), "mapping": mapped}
    cfg = base.model_copy(update=update)
    return {"model": str(args.model), "mapped": {k: round(float(v), 4) for k, v in update.items()},
            **quality(feats, good, labels, cfg, peer_feats=builtin),
            "stricter_held_out": stricter_held_out(feats, good, labels, update)}


def stricter_held_out(feats: np.ndarray, good: np.ndarray, labels: np.ndarray, mapped: dict[str, float],
                      shifts: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05), want: float = 0.995) -> dict[str, object]:
    """The mapped thresholds raised by a shift chosen on half the people (the smallest whose
    BCubed precision there is >= ``want``), scored on the other half and on all faces: how
    far the quantile mapping is from a calibration on held-out people."""
    from faec_rec.config import VisitorsConfig

    def run(mask: np.ndarray, shift: float) -> dict[str, float]:
        update = {k: (v + shift if k.endswith("_threshold") else v) for k, v in mapped.items()}
        replica, _ = feed_incremental(feats[mask], good[mask], VisitorsConfig().model_copy(update=update))
        ids = [f"f{i}-{i}" for i in range(int(mask.sum()))]
        got = scores(clusters_of(replica, ids), np.unique(labels[mask], return_inverse=True)[1])
        return {k: got[k] for k in ("bcubed_precision", "bcubed_recall", "alone_share")}

    tune = labels % 2 == 0  # people split by id: no person on both sides
    tried = {shift: run(tune, shift) for shift in shifts}
    chosen = next((x for x in shifts if tried[x]["bcubed_precision"] >= want), shifts[-1])
    everyone = np.ones(len(labels), bool)
    return {"wanted_tune_precision": want, "tune": {str(k): v for k, v in tried.items()}, "chosen_shift": chosen,
            "held_out": run(~tune, chosen), "held_out_unshifted": run(~tune, 0.0), "all_faces": run(everyone, chosen)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/faces/lfw")
    parser.add_argument("--limit-people", type=int, default=0)
    parser.add_argument("--features-only", action="store_true")
    parser.add_argument("--sizes", default="100000,1000000", help="stored faces for the join latency, comma-separated")
    parser.add_argument("--redis-size", type=int, default=100_000, help="stored faces for the join through Redis (0: skip)")
    parser.add_argument("--regroup", type=int, default=100_000, help="faces regrouped from scratch (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-lfw", action="store_true", help="only the speed figures")
    parser.add_argument("--model", type=Path, help="also group with this supplied backbone (TFLite/ONNX; benchmarks only)")
    parser.add_argument("--card", type=Path, help="the supplied backbone's model card (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    paths, labels = lfw_people(args.data, limit_people=args.limit_people)
    arrays = cached_features(args.data, paths)
    if args.features_only:
        print(json.dumps({"images": len(paths), "found": int(arrays["found"].sum()),
                          "good": int(arrays["quality"][:, 3].sum())}))
        return
    found = arrays["found"]
    feats = arrays["features"][found]
    good = arrays["quality"][found, 3] > 0
    names = np.array(labels)[found]
    order = np.random.default_rng(args.seed).permutation(len(feats))
    feats, good, names = feats[order], good[order], names[order]
    label_ids = np.unique(names, return_inverse=True)[1]
    from faec_rec.config import VisitorsConfig

    result: dict[str, object] = {
        "benchmark": "visitors",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "rule": VisitorsConfig().model_dump(),
    }
    if not args.skip_lfw:
        result["lfw"] = {"images_with_2plus": len(paths), "faces_found": int(found.sum()), "seed": args.seed,
                         **quality(feats, good, label_ids)}
    if args.model is not None:
        result["supplied"] = supplied_quality(args, paths, found, order, feats, good, label_ids)
    result["join_in_memory"] = [join_latency(int(n)) for n in args.sizes.split(",") if n]
    if args.redis_size:
        result["join_through_redis"] = join_latency_redis(args.redis_size)
    if args.regroup:
        result["regroup_in_memory"] = regroup_time(args.regroup)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
