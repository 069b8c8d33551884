"""The JSON and HTML batch reports, on synthetic images and records."""
from __future__ import annotations

import base64
import json
import os
import re
import stat

import cv2
import numpy as np
import pytest

from faec_rec import report as rp


def _records() -> list[dict]:
    return [
        {"path": "/p/b_group.jpg", "model_version": "dlib-resnet-v1/base", "error": None, "faces": [
            {"box": [10, 10, 60, 70], "person_id": "p1", "person": "Ada Lovelace", "score": 0.91234, "decision": "known", "runner_up": None},
            {"box": [100, 20, 150, 80], "person_id": None, "person": None, "score": 0.31, "decision": "unknown", "runner_up": "Ada Lovelace"},
        ]},
        {"path": "/p/a_ada.jpg", "model_version": "dlib-resnet-v1/base", "error": None, "faces": [
            {"box": [5.04, 6, 55, 66], "person_id": "p1", "person": "Ada Lovelace", "score": 0.8, "decision": "known", "runner_up": None},
        ]},
        {"path": "/p/c_dog.jpg", "model_version": "dlib-resnet-v1/base", "error": None, "faces": []},
        {"path": "/p/d_broken.jpg", "model_version": None, "error": "bad_image: truncated JPEG", "faces": []},
    ]


def _image(seed: int = 0, h: int = 120, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, size=(h, w, 3), dtype=np.uint8)


def test_build_report_normalises_sorts_and_counts() -> None:
    report = rp.build_report(_records(), source="/p")
    paths = [i["path"] for i in report["images"]]
    assert paths == sorted(paths)
    assert report["model_version"] == "dlib-resnet-v1/base"
    s = report["summary"]
    assert (s["images"], s["errors"], s["faces"], s["known"], s["unknown"]) == (4, 1, 3, 2, 1)
    assert s["people"] == {"Ada Lovelace": 2}
    assert s["by_status"] == {"error": 1, "no-face": 1, "stranger": 1, "known": 1}
    ada = report["images"][0]
    assert ada["faces"][0]["box"] == [5.0, 6.0, 55.0, 66.0]
    stranger = report["images"][1]["faces"][1]
    assert stranger["person"] is None and stranger["decision"] == "unknown"
    assert report["images"][1]["faces"][0]["score"] == 0.9123
    # the report is plain JSON
    assert json.loads(json.dumps(report)) == report


def test_a_stranger_never_carries_a_name() -> None:
    face = rp.normalise_face({"box": [0, 0, 1, 1], "person": "Leaked", "person_id": "x", "score": 0.2, "decision": "unknown"})
    assert face["person"] is None and face["person_id"] is None


def test_bad_box_is_refused() -> None:
    with pytest.raises(ValueError, match="4 numbers"):
        rp.normalise_face({"box": [1, 2, 3], "decision": "known"})


def test_an_errored_image_lists_no_faces() -> None:
    image = rp.normalise_image({"path": "x.jpg", "error": "unreadable", "faces": [{"box": [0, 0, 1, 1]}]})
    assert image["faces"] == [] and image["error"] == "unreadable"
    assert rp.image_status(image) is rp.ImageStatus.ERROR


def test_thumbnail_downscales_and_draws_boxes_in_decision_colours() -> None:
    image = _image(h=400, w=800)
    faces = rp.build_report(_records())["images"][1]["faces"]  # the group: one known, one stranger
    faces = [dict(f, box=[v * 4 for v in f["box"]]) for f in faces]
    thumb = rp.thumbnail(image, faces, max_side=200)
    assert thumb.shape == (100, 200, 3) and thumb.dtype == np.uint8
    # left edge of each box (scale 1/4) carries that face's colour
    known_px = thumb[30:60, 10]
    stranger_px = thumb[40:70, 100]
    assert np.all(np.abs(known_px.astype(int) - rp.KNOWN_RGB).max(axis=1) < 40)
    assert np.all(np.abs(stranger_px.astype(int) - rp.UNKNOWN_RGB).max(axis=1) < 40)
    assert not np.shares_memory(thumb, image)


def test_thumbnail_keeps_small_images_and_clips_boxes_outside() -> None:
    image = _image(h=50, w=60)
    face = rp.normalise_face({"box": [-20, -20, 500, 500], "decision": "unknown", "score": 0.1})
    thumb = rp.thumbnail(image, [face])
    assert thumb.shape == image.shape


def test_thumbnail_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        rp.thumbnail(np.zeros((10, 10), np.uint8), [])


def test_html_is_self_contained_and_names_people() -> None:
    report = rp.build_report(_records(), source="/p")
    loaded = []

    def loader(path: str) -> np.ndarray:
        loaded.append(path)
        return _image(len(loaded))

    page = rp.render_html(report, loader)
    # no external assets: nothing fetched over the network or from disk
    assert not re.search(r"""(src|href)=["'](https?:|//|/|file:)""", page)
    assert "<script src" not in page
    # one card per image, with status for filtering
    assert page.count('class="card ') == 4
    for status in ("known", "stranger", "no-face", "error"):
        assert f'data-status="{status}"' in page
    assert "Ada Lovelace" in page and "unknown" in page and "bad_image: truncated JPEG" in page
    # the broken image is not loaded; the other three become inline JPEGs
    assert sorted(loaded) == ["/p/a_ada.jpg", "/p/b_group.jpg", "/p/c_dog.jpg"]
    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 3
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(uris[0]), np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape[2] == 3


def test_html_escapes_names_and_paths() -> None:
    records = [{"path": "/p/<img src=x onerror=alert(1)>.jpg", "error": None, "faces": [
        {"box": [0, 0, 5, 5], "person": "<script>alert('x')</script>", "person_id": "p", "score": 0.9, "decision": "known"}]}]
    page = rp.render_html(rp.build_report(records), loader=None)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_a_thumbnail_that_cannot_be_read_keeps_its_card() -> None:
    def loader(path: str) -> np.ndarray:
        raise OSError("gone")

    page = rp.render_html(rp.build_report(_records()), loader)
    assert page.count('class="card ') == 4 and "data:image/jpeg" not in page


def test_writers_produce_files(tmp_path) -> None:
    report = rp.build_report(_records())
    out = rp.write_json(report, tmp_path / "sub" / "r.json")
    assert json.loads(out.read_text()) == report
    page = rp.write_html(report, tmp_path / "r.html", loader=lambda p: _image())
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("**/*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(page.stat().st_mode) == 0o666 & ~umask  # shareable like any file, not 0600


def test_spooled_report_streams_the_same_files_as_the_built_one(tmp_path: Path) -> None:
    """A folder job's records go to a spool file as they arrive; the JSON written from it is
    the report build_report gives (same text), in path order whatever the arrival order."""
    records = _records()
    created = rp.dt.datetime(2026, 11, 29, tzinfo=rp.dt.timezone.utc)
    built = rp.build_report(records, source="/p", skipped=[{"path": "x.txt", "reason": "not an image"}], created=created)
    with rp.ReportSpool(tmp_path) as spool:
        for record in reversed(records):
            spool.add(record)
        spooled = spool.report(source="/p", skipped=[{"path": "x.txt", "reason": "not an image"}], created=created)
        assert len(spooled["images"]) == len(records)
        rp.write_json(spooled, tmp_path / "spooled.json")
        rp.write_html(spooled, tmp_path / "spooled.html", loader=None)
        assert list(spooled["images"]) == built["images"]  # re-iterable: read from the spool again
    rp.write_json(built, tmp_path / "built.json")
    text = (tmp_path / "spooled.json").read_text("utf-8")
    assert text == (tmp_path / "built.json").read_text("utf-8")
    assert text == json.dumps(built, indent=2, ensure_ascii=False) + "\n"
    assert (tmp_path / "spooled.html").read_text("utf-8") == rp.render_html(built, loader=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built.json", "spooled.html", "spooled.json"]  # no spool left


def test_empty_report_is_valid_json(tmp_path: Path) -> None:
    report = rp.build_report([])
    rp.write_json(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["images"] == []
