"""Supplied backbones with a REAL worker process, real Redis and real photos.

A tiny model the test builds itself (tests/tiny_backbone.py, exported with the real
TFLite converter) is added with its card; a mismatched card and a corrupt file are
refused; a switch that fails half way changes nothing; the switch re-embeds every
template from its stored crop (no re-enrolment) and the running worker then embeds with
the new backbone and names the enrolled people; the strangers' unknown faces are
re-embedded from their crops too, keep their visitors, and a new photo of a stranger
joins that stranger's visitor under the visitor thresholds mapped to the new backbone;
switching back to the built-in backbone restores its scores.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faec_rec.config import load_settings
from faec_rec.errors import GalleryError, ModelError
from faec_rec.keys import Keys
from tests.integration.worker_proc import WorkerProcess
from tests.tiny_backbone import build_tflite, write_card

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 240.0
PEOPLE = ("Tony_Blair", "Colin_Powell", "Gerhard_Schroeder")
STRANGERS = ("Hillary_Clinton", "Bill_Gates")  # sharp, frontal photos (tests/integration/test_visitors_service.py)
PHOTOS = 15  # enrolled per person: ~500 impostor pairs, to map the visitor thresholds on
# Visitor thresholds (built-in scale) mapped at add time. The defaults (0.92-0.95) sit where
# ~3e-4 of impostor pairs reach: mapping them needs hundreds of enrolled people. On these
# three (impostor median 0.87, 95th percentile 0.91) pass rates of ~5% resolve: thresholds
# that strict under the tiny model keep the two strangers apart (whose crops it scores ~0.95).
VISITOR_SCALE = {"link_threshold": 0.9, "strong_threshold": 0.905, "centre_threshold": 0.9, "merge_threshold": 0.905, "rival_threshold": 0.895}


def _identify(client: Any, photo: Path) -> tuple[dict[str, Any], str]:
    job = client.submit_images([photo])
    record = client.job_results(job, wait=True, timeout=WAIT_S)[0]
    assert not record.get("error"), record
    assert record["faces"], f"no face found in {photo.name}"
    best = max(record["faces"], key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
    return best, record["model_version"]


def _features(r: Any, keys: Keys, tid: str) -> np.ndarray:
    return np.frombuffer(r.hget(keys.template(tid), "features"), np.float32)


def _ufeatures(r: Any, keys: Keys, fid: str) -> np.ndarray:
    return np.frombuffer(r.hget(keys.unknown_face(fid), "features"), np.float32)


def test_add_refuse_switch_and_identify(redis_url: str, tmp_path: Path, faces_dir: Path) -> None:
    import redis

    from faec_rec.client import Client
    from faec_rec.faces.card import read_card
    from faec_rec.faces.supplied import SuppliedEmbedder
    from faec_rec.index.backbone_swap import read_crops

    prefix = "t" + uuid.uuid4().hex[:10]
    keys = Keys(prefix)
    data_dir = tmp_path / "data"
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=data_dir)
    settings = settings.model_copy(update={"visitors": settings.visitors.model_copy(update=VISITOR_SCALE)})
    # Scores against the best template alone: the tiny model tells photos apart, not people
    # (a person's centroid of other photos would score it low), so it is probed with
    # enrolled photos, whose stored crops it must have re-embedded.
    worker = WorkerProcess(redis_url, prefix, data_dir, queues=("frames", "enrol"), concurrency=1,
                           env={"FAEC_GALLERY__CENTROID_WEIGHT": "0"}).start()
    client = Client(settings=settings)
    r = redis.Redis.from_url(redis_url)
    models = tmp_path / "supplied"
    models.mkdir()
    try:
        model = build_tflite(models)
        good_card = write_card(models)
        worker.wait_ready()
        photos = {p: sorted((faces_dir / "lfw" / p).glob("*.jpg")) for p in PEOPLE}
        enrolled: dict[str, list[Path]] = {}
        for person, files in photos.items():
            report = client.enrol(person, files[:PHOTOS], timeout=WAIT_S)
            enrolled[person] = [Path(i.name) for i in report.accepted]
            assert report.status == "done" and len(enrolled[person]) >= 2, report
        tids = [t for p in client.people() for t in p.template_ids]
        before = {t: _features(r, keys, t).copy() for t in tids}
        dlib_probe, version = _identify(client, enrolled["Colin_Powell"][0])
        assert version == "dlib-resnet-v1/base" and dlib_probe["person"] == "Colin_Powell"
        strangers = {p: sorted((faces_dir / "lfw" / p).glob("*.jpg"))[0] for p in STRANGERS}
        visitor_of: dict[str, str] = {}
        ufaces: dict[str, str] = {}
        for person, photo in strangers.items():  # unknown under dlib: each starts a visitor
            face, _ = _identify(client, photo)
            assert face["decision"] == "unknown" and face["visitor"], (person, face)
            visitor_of[person], ufaces[person] = face["visitor"], face["face_id"]
        assert len(set(visitor_of.values())) == 2
        every_uface = [f.decode() for f in r.zrange(keys.unknown_faces(), 0, -1)]  # (photos may hold other faces too)
        assert set(ufaces.values()) <= set(every_uface)
        ubefore = {f: _ufeatures(r, keys, f).copy() for f in every_uface}

        # ---- refused: nothing is stored -------------------------------------------------
        with pytest.raises(ModelError, match=r"takes input of shape \[1, 64, 64, 3\].*input_size \[112, 112\]"):
            client.add_backbone(model, write_card(models, name="wrong-size", input_size=[112, 112]))
        with pytest.raises(ModelError, match="gives output of shape .*embedding_size 128"):
            (models / "dim64").mkdir()
            client.add_backbone(build_tflite(models / "dim64", dim=64), write_card(models, name="wrong-dim"))
        corrupt = models / "corrupt.tflite"
        corrupt.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 3])
        with pytest.raises(ModelError, match="does not load as a TFLite model"):
            client.add_backbone(corrupt, write_card(models, name="corrupt"))
        listing = client.backbones()
        assert [b["name"] for b in listing["backbones"]] == ["dlib-resnet-v1"]
        assert listing["current"]["name"] == "dlib-resnet-v1" and "CC0" in listing["current"]["licence"]

        # ---- added, calibrated on the gallery's crops ----------------------------------
        row = client.add_backbone(model, good_card)
        assert row["name"] == "tiny-test" and row["licence"] == "CC0-1.0 (built by the test)"
        cal = row["calibration"]
        n = len(tids)
        assert cal["genuine_pairs"] + cal["impostor_pairs"] == n * (n - 1) // 2 and cal["impostor_pairs"] > 0
        assert isinstance(row["threshold"], float) and -1.0 <= row["threshold"] <= 1.0
        assert "only" in cal["calibrated_on"]  # too few pairs for 0.1%: said so
        assert cal["raise_scale"] > 0 and cal["raise_scale"] != 1.0  # measured against the built-in on the same pairs
        # a handful of people cannot measure a search table of its own: the scaled raise serves, and it says so
        assert cal["search"] is None and cal["search_calibrated_on"].startswith("built-in search raise x raise_scale"), cal
        mapped = cal["visitors"]  # the visitor thresholds, quantile-matched on the same impostor pairs
        assert mapped["paused"] is None and mapped["impostor_pairs"] == cal["impostor_pairs"], mapped
        assert mapped["builtin"] == VISITOR_SCALE and set(mapped["thresholds"]) == set(VISITOR_SCALE)
        assert all(mapped["thresholds"][k] != VISITOR_SCALE[k] for k in VISITOR_SCALE)
        assert client.backbones()["current"]["name"] == "dlib-resnet-v1"  # added, not in service

        # ---- a switch that fails half way changes nothing --------------------------------
        def interrupted(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            client.use_backbone("tiny-test", progress=interrupted)
        assert client.backbones()["current"]["name"] == "dlib-resnet-v1"
        assert all(np.array_equal(_features(r, keys, t), before[t]) for t in tids)
        assert all(np.array_equal(_ufeatures(r, keys, f), ubefore[f]) for f in every_uface)
        _, version = _identify(client, enrolled["Tony_Blair"][0])
        assert version == "dlib-resnet-v1/base"  # the old backbone keeps serving

        # ---- switched: every template re-embedded from its crop ---------------------------
        result = client.use_backbone("tiny-test")
        assert result == {"backbone": "tiny-test", "previous": "dlib-resnet-v1", "generation": 1, "templates": n,
                          "unknown_faces": len(every_uface)}
        embedder = SuppliedEmbedder.from_file(model, read_card(good_card))
        crops = {t: r.hget(keys.template(t), "crop").decode() for t in tids}
        expected = embedder.features(np.stack(list(read_crops(data_dir, crops).values())))
        for t, want in zip(crops, expected):
            assert r.hget(keys.template(t), "backbone") == b"tiny-test"
            np.testing.assert_allclose(_features(r, keys, t), want, rtol=1e-5, atol=1e-5)
            assert want.shape == (128,) and not np.allclose(want, before[t][: want.size])
        for person, files in enrolled.items():
            face, version = _identify(client, files[0])  # an enrolled photo: its crop's twin
            assert version == "tiny-test/base"
            assert face["person"] == person and face["decision"] == "known", (person, face)
        current = client.backbones()["current"]
        assert (current["name"], current["licence"], current["generation"]) == ("tiny-test", "CC0-1.0 (built by the test)", 1)

        # ---- the unknown faces too, from their crops; each stays in its visitor -----------
        ucrops = {f: r.hget(keys.unknown_face(f), "crop").decode() for f in every_uface}
        uexpected = embedder.features(np.stack(list(read_crops(data_dir, ucrops).values())))
        for f, want in zip(ucrops, uexpected):
            assert r.hget(keys.unknown_face(f), "backbone") == b"tiny-test"
            np.testing.assert_allclose(_ufeatures(r, keys, f), want, rtol=1e-5, atol=1e-5)
            assert not np.allclose(want, ubefore[f])
        for person, f in ufaces.items():
            assert r.hget(keys.unknown_face(f), "visitor") == visitor_of[person].encode()
        # a new photo job of a stranger who has a visitor joins it, under the mapped thresholds
        again, version = _identify(client, strangers["Hillary_Clinton"])
        assert version == "tiny-test/base" and again["decision"] == "unknown", again
        assert again["face_id"] != ufaces["Hillary_Clinton"] and again["visitor"] == visitor_of["Hillary_Clinton"], again
        assert r.hget(keys.unknown_face(again["face_id"]), "backbone") == b"tiny-test"
        assert sorted(r.smembers(keys.visitor_faces(visitor_of["Hillary_Clinton"]))) == sorted(
            [ufaces["Hillary_Clinton"].encode(), again["face_id"].encode()]), (visitor_of, mapped)
        assert r.smembers(keys.visitor_faces(visitor_of["Bill_Gates"])) == {ufaces["Bill_Gates"].encode()}

        from faec_rec.training.retrain import run as retrain

        skipped = retrain(settings, redis=r)  # heads train on the built-in backbone's features only
        assert skipped["status"] == "skipped" and "backbone tiny-test" in skipped["reason"], skipped

        # ---- and back to the built-in backbone, from the same crops -----------------------
        back = client.use_backbone("dlib-resnet-v1")
        assert back["previous"] == "tiny-test" and back["generation"] == 2
        for t in tids:  # JPEG crop vs the live chip the template was made from: same descriptor
            a, b = _features(r, keys, t), before[t]
            assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98
        face, version = _identify(client, enrolled["Colin_Powell"][0])
        assert version == "dlib-resnet-v1/base" and face["person"] == "Colin_Powell"
        assert abs(face["score"] - dlib_probe["score"]) < 0.02
        for f, b in ubefore.items():  # the unknown faces are back in the built-in scale too
            a = _ufeatures(r, keys, f)
            assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98
    finally:
        client.close()
        worker.stop()
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


def test_switch_refused_without_crops_keeps_serving(redis_url: str, redis_client: Any, keys: Keys, tmp_path: Path,
                                                   faces_dir: Path) -> None:
    """A template whose crop is gone: the switch is refused with a clear error and nothing changes."""
    from faec_rec.client import Client
    from faec_rec.faces import FaceEngine, load_image

    settings = load_settings(redis_url=redis_url, prefix=keys.prefix, data_dir=tmp_path)
    client = Client(settings=settings)
    models = tmp_path / "supplied"
    models.mkdir()
    try:
        client.add_backbone(build_tflite(models), write_card(models))
        engine = FaceEngine()
        image = load_image(sorted((faces_dir / "lfw" / "Tony_Blair").glob("*.jpg"))[0])
        found = engine.analyse(image)[0]
        from faec_rec.faces.image import encode_jpeg

        client.gallery.enrol("Tony", found.features[None], sources=["a.jpg"], content_hashes=["h1"],
                             crops=[encode_jpeg(found.crop, 90)])
        client.gallery.enrol("Tony", found.features[None] * 1.01, sources=["b.jpg"], content_hashes=["h2"])  # no crop
        with pytest.raises(GalleryError, match=r"1 template\(s\) have no readable 150x150 face crop"):
            client.use_backbone("tiny-test")
        assert client.backbones()["current"]["name"] == "dlib-resnet-v1"
        assert all(redis_client.hget(keys.template(t), "backbone") == b"dlib-resnet-v1"
                   for p in client.people() for t in p.template_ids)
    finally:
        client.close()
