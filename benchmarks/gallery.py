"""Gallery lookup speed and recall at scale, and replica replay speed.

    python -m benchmarks.gallery [--sizes 10000,100000,1000000] [--queries 1000]
                                 [--replay-events 100000] [--threads 2]

Prints one JSON line per size::

    {"bench": "search", "size": N, "index": "flat"|"ivf"|"hnsw", "build_s", "memory_mb",
     "single_p50_ms", "single_p95_ms", "batch100_p50_ms", "batch100_p95_ms",
     "recall_at_1", "identify_p50_ms", ...}

on *clustered* synthetic unit vectors shaped like face embeddings: identity
centres sharing a common direction (different people already score ~0.3
cosine, as real faces do), ``--per-identity`` templates per identity at ~0.89
cosine to their centre (~0.8 to each other), queries are fresh samples of
enrolled identities. The index kind is the one the gallery would choose
(``GalleryConfig.hnsw_above``, ``GalleryConfig.approximate``); ``k`` is ``GalleryConfig.search_k``;
``recall_at_1`` is the share of queries whose top result equals exact (flat)
search's; ``memory_mb`` is the resident-memory growth while building;
``identify_p50_ms`` is a full replica lookup (search, exact re-scoring, person
grouping, decision) of one face whose person's threshold is cached (as between
gallery changes); ``identify_cold_p50_ms`` includes computing that threshold
(one more search, of the person's own templates). ``load_avg_1m`` is the
machine's load when the line was printed: on a shared machine timings follow it.

Then one line ``{"bench": "replay", ...}``: ``--replay-events`` gallery events
(one "add" of one template each) written to Redis, then replayed into a fresh
replica (``replay_s``), bootstrapped from the Redis records (``records_s``),
written to and loaded from a snapshot, and re-projected into a new version
(``reproject_ms_per_10k``). Its keys live under a throw-away prefix, deleted after.

``--ef-sweep 128,256,512`` adds ``ef_sweep``: recall and single-query latency of
the same HNSW graph at each efSearch; ``--nprobe-sweep 256,320,384`` adds
``nprobe_sweep``, the same for the IVF index at each nprobe.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from faec_rec.config import GalleryConfig
from faec_rec.keys import Keys

log = logging.getLogger("benchmarks.gallery")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class FaceLikeVectors:
    """Seeded clustered unit vectors: ``centre(i)`` per identity, ``sample(ids)`` templates."""

    def __init__(self, identities: int, seed: int = 0, shared: float = 0.55, noise: float = 0.5, dim: int = 128) -> None:
        rng = np.random.default_rng(seed)
        common = unit(rng.normal(size=(1, dim)))
        own = unit(rng.normal(size=(identities, dim)))
        self.centres = unit(shared * common + np.sqrt(1 - shared**2) * own)
        self.noise = noise
        self.dim = dim

    def sample(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((len(ids), self.dim), np.float32)
        for start in range(0, len(ids), 200_000):  # bounded temporaries at 1M
            part = ids[start:start + 200_000]
            g = rng.normal(size=(len(part), self.dim)).astype(np.float32)
            out[start:start + len(part)] = unit(self.centres[part] + self.noise * g / np.sqrt(self.dim))
        return out


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000.0
    return round(float(np.percentile(a, 50)), 4), round(float(np.percentile(a, 95)), 4)


def bench_search(size: int, args: argparse.Namespace, config: GalleryConfig) -> dict[str, Any]:
    from faec_rec.index.vectors import build_index, index_kind

    per = args.per_identity
    identities = max(1, size // per)
    data = FaceLikeVectors(identities, seed=size)
    rng = np.random.default_rng(size + 1)
    ids = np.repeat(np.arange(identities), per)[:size]
    vectors = data.sample(ids, rng)
    queries = data.sample(rng.integers(0, identities, args.queries), rng)
    labels = np.arange(size, dtype=np.int64)
    kind = index_kind(size, config)
    k = config.search_k

    faiss.omp_set_num_threads(args.threads)
    before = rss_mb()
    started = time.perf_counter()
    index = build_index(vectors, labels, config, kind=kind)
    build_s = time.perf_counter() - started
    memory_mb = rss_mb() - before
    query_threads = config.faiss_threads or args.threads
    faiss.omp_set_num_threads(query_threads)  # what a worker process holding the gallery uses

    singles = []
    found = np.empty(len(queries), np.int64)
    for i in range(len(queries)):
        t = time.perf_counter()
        _, lab = index.search(queries[i:i + 1], k)
        singles.append(time.perf_counter() - t)
        found[i] = lab[0, 0]
    batches = []
    for start in range(0, len(queries) - 99, 100):
        t = time.perf_counter()
        index.search(queries[start:start + 100], k)
        batches.append(time.perf_counter() - t)

    if kind == "flat":
        exact = found.copy()
    else:
        exact_index = faiss.IndexFlatIP(vectors.shape[1])
        exact_index.add(vectors)
        faiss.omp_set_num_threads(args.threads)
        _, ex = exact_index.search(queries, 1)
        faiss.omp_set_num_threads(query_threads)
        exact = ex[:, 0]
        del exact_index
    recall = float(np.mean(found == exact))
    same_identity = float(np.mean(ids[found] == ids[exact]))

    out: dict[str, Any] = {
        "bench": "search", "size": size, "index": kind, "k": k,
        "hnsw_m": config.hnsw_m if kind == "hnsw" else None,
        "ef_search": config.hnsw_ef_search if kind == "hnsw" else None,
        "ef_construction": config.hnsw_ef_construction if kind == "hnsw" else None,
        "ivf_nlist": getattr(index, "nlist", None) if kind == "ivf" else None,
        "ivf_nprobe": config.ivf_nprobe if kind == "ivf" else None,
        "ivf_refine": config.ivf_refine if kind == "ivf" else None,
        "build_threads": args.threads, "query_threads": query_threads,
        "build_s": round(build_s, 3), "memory_mb": round(memory_mb, 1),
    }
    out["single_p50_ms"], out["single_p95_ms"] = percentiles(singles)
    out["batch100_p50_ms"], out["batch100_p95_ms"] = percentiles(batches)
    out["recall_at_1"] = round(recall, 4)
    out["same_identity_at_1"] = round(same_identity, 4)
    if kind == "hnsw" and args.ef_sweep:
        out["ef_sweep"] = ef_sweep(index, queries, exact, ids, k, [int(e) for e in args.ef_sweep.split(",")])
    if kind == "ivf" and args.nprobe_sweep:
        out["nprobe_sweep"] = ef_sweep(index, queries, exact, ids, k, [int(e) for e in args.nprobe_sweep.split(",")], knob="nprobe")
    if size <= args.identify_up_to:
        out.update(bench_identify(vectors, ids, queries, config, index))
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def ef_sweep(index: Any, queries: np.ndarray, exact: np.ndarray, ids: np.ndarray, k: int, efs: list[int],
             knob: str = "ef_search") -> list[dict[str, Any]]:
    """Recall and single-query latency of one index at several values of ``knob`` (HNSW efSearch, IVF nprobe)."""
    rows = []
    default = getattr(index, knob)
    for ef in efs:
        setattr(index, knob, ef)
        times, found = [], np.empty(len(queries), np.int64)
        for i in range(len(queries)):
            t = time.perf_counter()
            _, lab = index.search(queries[i:i + 1], k)
            times.append(time.perf_counter() - t)
            found[i] = lab[0, 0]
        p50, p95 = percentiles(times)
        rows.append({knob: ef, "single_p50_ms": p50, "single_p95_ms": p95,
                     "recall_at_1": round(float(np.mean(found == exact)), 4),
                     "same_identity_at_1": round(float(np.mean(ids[found] == ids[exact])), 4)})
    setattr(index, knob, default)
    return rows


def bench_identify(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, config: GalleryConfig, index: Any) -> dict[str, Any]:
    """Full replica lookups of one face (search, exact re-score, grouping, per-person threshold).

    The replica is filled with a flat index (cheap) and then given the index
    measured above, whose labels are the same row numbers (templates are
    added in row order), so an HNSW graph is not built twice.
    """
    from faec_rec.index.events import EventOp, GalleryEvent
    from faec_rec.index.projection import BaseProjector
    from faec_rec.index.replica import Replica

    replica = Replica(config.model_copy(update={"hnsw_above": len(vectors) + 1}), BaseProjector())
    tids = [f"t{i}" for i in range(len(vectors))]
    features = dict(zip(tids, vectors))
    bounds = np.flatnonzero(np.diff(ids)) + 1  # ids are sorted: one run of rows per identity
    events = []
    for n, group in enumerate(np.split(np.arange(len(ids)), bounds)):
        pid = int(ids[group[0]])
        events.append((f"{n + 1}-0", GalleryEvent(EventOp.ADD, person=f"p{pid}", name=f"P{pid}",
                                                  templates=tuple(tids[r] for r in group.tolist()))))
    replica.apply(events, features)
    del features
    replica.config = config
    replica._index = index  # same labels (row = slot); benchmark-only shortcut
    cold, warm = [], []
    for q in queries[:300]:
        t = time.perf_counter()
        replica.identify(q[None, :], "base", 0.6)  # first sight of a person: computes their threshold
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        replica.identify(q[None, :], "base", 0.6)  # threshold cached, as between gallery changes
        warm.append(time.perf_counter() - t)
    out: dict[str, Any] = {}
    out["identify_p50_ms"], out["identify_p95_ms"] = percentiles(warm)
    out["identify_cold_p50_ms"], out["identify_cold_p95_ms"] = percentiles(cold)
    return out


class LinearHead:
    """A stand-in comparison head (one 128x128 matrix, then L2-normalise) for re-projection timing."""

    version = "bench-head"

    def __init__(self) -> None:
        self.matrix = np.linalg.qr(np.random.default_rng(0).normal(size=(128, 128)))[0].astype(np.float32)

    def project(self, features: np.ndarray) -> np.ndarray:
        return unit(features @ self.matrix)


def bench_replay(events: int, args: argparse.Namespace, config: GalleryConfig) -> dict[str, Any]:
    import redis

    from faec_rec.index.gallery import Gallery
    from faec_rec.index.store import NewTemplates

    client = redis.Redis.from_url(args.redis_url)
    keys = Keys("bench" + uuid.uuid4().hex[:8])
    data = FaceLikeVectors(events, seed=7)
    rng = np.random.default_rng(8)
    feats = data.sample(np.arange(events), rng) * 0.9  # raw-scale features
    try:
        with tempfile.TemporaryDirectory() as tmp:
            gallery = Gallery(client, keys, config, Path(tmp))
            people = [(f"Person {i}", NewTemplates(feats[i:i + 1], ["bench"], [f"h{i}"], [1.0], None)) for i in range(events)]
            started = time.perf_counter()
            gallery.store.import_people(people, version="base", chunk=2000)
            import_s = time.perf_counter() - started
            written = client.xlen(keys.gallery_events())

            started = time.perf_counter()
            replica = gallery.fresh_replica("stream")
            replay_s = time.perf_counter() - started
            started = time.perf_counter()
            records = gallery.fresh_replica("records")
            records_s = time.perf_counter() - started
            assert replica.size == records.size == events, "replay lost templates"

            gallery._replica = replica  # install the replayed replica to snapshot it
            started = time.perf_counter()
            path = gallery.snapshot()
            snapshot_write_s = time.perf_counter() - started
            started = time.perf_counter()
            loaded = Gallery(client, keys, config, Path(tmp)).replica
            snapshot_load_s = time.perf_counter() - started
            assert loaded.size == events

            head = LinearHead()
            started = time.perf_counter()
            replica.switch(head)
            reproject_s = time.perf_counter() - started
            return {
                "bench": "replay", "events": int(written), "templates": replica.size,
                "import_s": round(import_s, 2), "replay_s": round(replay_s, 2),
                "replay_events_per_s": round(written / replay_s),
                "records_s": round(records_s, 2),
                "snapshot_mb": round(path.stat().st_size / 2**20, 1),
                "snapshot_write_s": round(snapshot_write_s, 2), "snapshot_load_s": round(snapshot_load_s, 2),
                "reproject_ms_per_10k": round(1000 * reproject_s * 10_000 / events, 2),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
    finally:
        doomed = list(client.scan_iter(match=keys.pattern(), count=10_000))
        for start in range(0, len(doomed), 10_000):
            client.unlink(*doomed[start:start + 10_000])
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated gallery sizes (templates)")
    parser.add_argument("--queries", type=int, default=1000, help="query faces per size")
    parser.add_argument("--per-identity", type=int, default=5, help="templates per synthetic identity")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS OpenMP threads for building (queries use GalleryConfig.faiss_threads)")
    parser.add_argument("--hnsw-above", type=int, default=None, help="override GalleryConfig.hnsw_above")
    parser.add_argument("--ef-search", type=int, default=None, help="override GalleryConfig.hnsw_ef_search")
    parser.add_argument("--ef-construction", type=int, default=None, help="override GalleryConfig.hnsw_ef_construction")
    parser.add_argument("--approximate", choices=("ivf", "hnsw"), default=None, help="override GalleryConfig.approximate")
    parser.add_argument("--nprobe", type=int, default=None, help="override GalleryConfig.ivf_nprobe")
    parser.add_argument("--nlist", type=int, default=None, help="override GalleryConfig.ivf_nlist (0 = 2*sqrt(n))")
    parser.add_argument("--nprobe-sweep", default="", help="comma-separated nprobe values to measure on the IVF index built")
    parser.add_argument("--ef-sweep", default="", help="comma-separated efSearch values to measure on the HNSW graph built")
    parser.add_argument("--identify-up-to", type=int, default=1_000_000, help="measure full replica lookups up to this size")
    parser.add_argument("--replay-events", type=int, default=100_000, help="gallery events to replay (0: skip)")
    parser.add_argument("--redis-url", default=os.environ.get("FAEC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = {k: v for k, v in {"hnsw_above": args.hnsw_above, "hnsw_ef_search": args.ef_search,
                                   "hnsw_ef_construction": args.ef_construction, "approximate": args.approximate,
                                   "ivf_nprobe": args.nprobe, "ivf_nlist": args.nlist}.items() if v is not None}
    config = GalleryConfig(**overrides)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        print(json.dumps({**bench_search(size, args, config), **machine}), flush=True)
    if args.replay_events:
        print(json.dumps({**bench_replay(args.replay_events, args, config), **machine}), flush=True)


if __name__ == "__main__":
    main()
