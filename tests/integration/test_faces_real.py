"""The face engine on real photographs from ../shared/data/faces (skipped where absent).

Runs the real BlazeFace model and the real Keras backbone: same person closer
than different people on LFW pairs, several faces in group photos and none in
photos without faces, dlib's HOG faces not lost, bad files refused by name.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faec_rec.errors import ImageError
from faec_rec.faces import FaceEngine, load_image

pytestmark = pytest.mark.integration

# LFW pairs.txt, fold 1: three "same" pairs and, for each, an unrelated person.
SAME = [
    ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg"),
    ("Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg"),
    ("Amber_Tamblyn/Amber_Tamblyn_0001.jpg", "Amber_Tamblyn/Amber_Tamblyn_0002.jpg"),
    ("Anders_Fogh_Rasmussen/Anders_Fogh_Rasmussen_0001.jpg", "Anders_Fogh_Rasmussen/Anders_Fogh_Rasmussen_0003.jpg"),
]
OTHERS = [
    "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "Zico/Zico_0001.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg",
    "George_W_Bush/George_W_Bush_0007.jpg",
]


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    return FaceEngine()


def _existing(root: Path, rels: list[str]) -> list[Path]:
    paths = [root / r for r in rels]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"LFW images missing: {missing[:3]}")
    return paths


def test_same_person_is_closer_than_different_people(engine: FaceEngine, faces_dir: Path) -> None:
    lfw = faces_dir / "lfw"
    pairs = [_existing(lfw, list(p)) for p in SAME]
    others = _existing(lfw, OTHERS)
    images = [load_image(p) for pair in pairs for p in pair] + [load_image(p) for p in others]
    analysed = engine.analyse_many(images)
    assert all(len(a) >= 1 for a in analysed), "every LFW image has a face"
    # the most central face of each LFW image
    feats = []
    for image, found in zip(images, analysed):
        centre = np.array(image.shape[1::-1]) / 2.0
        best = min(found, key=lambda a: np.hypot(*((a.face.box[:2] + a.face.box[2:]) / 2 - centre)))
        feats.append(best.features)
    v = np.array(feats)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    n = len(pairs)
    for i in range(n):
        same = sims[2 * i, 2 * i + 1]
        different = [sims[2 * i, j] for j in range(2 * n, len(v))] + [sims[2 * i, 2 * k] for k in range(n) if k != i]
        assert same > max(different), (SAME[i], same, max(different))


def test_group_photos_give_several_faces(engine: FaceEngine, faces_dir: Path) -> None:
    names = ["faceapi__bbt4.jpg", "facenet_pytorch__multiface.jpg", "insightface__t1.jpg", "ultralight__10.jpg", "deepface__selfie-many-people.jpg"]
    counts = {}
    for name in names:
        path = faces_dir / "group_photos" / name
        if not path.is_file():
            pytest.skip(f"missing {path}")
        image = load_image(path)
        faces = engine.detect(image)
        counts[name] = len(faces)
        h, w = image.shape[:2]
        for f in faces:
            assert 0 <= f.score <= 1 and f.landmarks.shape == (5, 2)
            # a face cut by the frame edge (the selfie taker) keeps its whole box, which may
            # reach past the image; at least a quarter of it is inside
            x1, y1, x2, y2 = (float(v) for v in f.box)
            assert x1 < x2 and y1 < y2
            inside = max(0.0, min(x2, w) - max(x1, 0.0)) * max(0.0, min(y2, h) - max(y1, 0.0))
            assert inside >= 0.25 * (x2 - x1) * (y2 - y1), (name, f.box)
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert all(c >= 4 for c in counts.values()), counts


def test_no_face_photos_give_none(engine: FaceEngine, faces_dir: Path) -> None:
    paths = sorted((faces_dir / "no_face").iterdir())
    if not paths:
        pytest.skip("no_face/ is empty")
    found = {p.name: len(engine.detect(load_image(p))) for p in paths}
    assert sum(found.values()) == 0, {k: v for k, v in found.items() if v}
    assert engine.analyse(load_image(paths[0])) == []


def test_dlib_hog_faces_are_not_lost_on_group_photos(engine: FaceEngine, faces_dir: Path) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib-bin (the test extra) is the reference detector")
    import cv2

    from faec_rec.faces.blazeface import box_iou

    hog = dlib.get_frontal_face_detector()
    min_face = engine.config.min_face_px
    total, lost = 0, []
    for path in sorted((faces_dir / "group_photos").iterdir()):
        image = load_image(path)
        h, w = image.shape[:2]
        scale = min(1.0, engine.config.detect_max_side / max(h, w))
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else image
        # min_face_px counts in the image as detected (after the downscale to detect_max_side)
        reference = [np.array([r.left(), r.top(), r.right(), r.bottom()]) for r in hog(small, 1)]
        reference = [b / scale for b in reference if b[2] - b[0] >= min_face]
        ours = np.array([f.box for f in engine.detect(image)], dtype=np.float64).reshape(-1, 4)
        for box in reference:
            total += 1
            if len(ours) == 0 or box_iou(box, ours).max() < 0.2:
                lost.append((path.name, box.round().tolist()))
    assert total > 100
    # measured: none of 205 lost (3 with the second look's floor at 0.3); allow at most
    # 1 % so a numerically different TFLite build does not fail on one knife-edge face
    assert len(lost) <= 0.01 * total, lost


def test_bad_files_raise_image_error_naming_the_file(tmp_path: Path, faces_dir: Path) -> None:
    good = next((faces_dir / "group_photos").glob("*.jpg")).read_bytes()
    cases = {"zero.jpg": b"", "half.jpg": good[: len(good) // 2], "text.png": b"not a png at all"}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert name in str(err.value)


def test_faces_on_tiny_and_rotated_images_never_error(engine: FaceEngine, faces_dir: Path) -> None:
    assert engine.detect(np.zeros((1, 1, 3), np.uint8)) == []
    for path in sorted((faces_dir / "hard_cases").iterdir())[:6]:
        faces = engine.detect(load_image(path))
        assert isinstance(faces, list)


def test_network_runs_at_any_aligned_input_shape(faces_dir: Path) -> None:
    from faec_rec.faces import blazeface

    path = next(iter(sorted((faces_dir / "lfw").rglob("*.jpg"))), None)
    if path is None:
        pytest.skip("no LFW image")
    image = load_image(path)  # 250x250, one face in the middle
    model = blazeface.BlazeFaceModel()
    found = {}
    for h, w in [(192, 192), (224, 288), (320, 192)]:
        canvas = np.zeros((h, w, 3), np.uint8)
        canvas[:192, :192] = cv2.resize(image, (192, 192), interpolation=cv2.INTER_AREA)
        boxes, scores, _ = model.run(canvas, 0.5)
        boxes, scores, _ = blazeface.weighted_nms(boxes, scores, np.zeros((len(scores), 6, 2), np.float32))
        assert len(scores) == 1, (h, w, scores)
        found[(h, w)] = boxes[0]
    for box in found.values():  # same face, same place, in input pixels, whatever the shape
        np.testing.assert_allclose(box, found[(192, 192)], atol=4.0)
    with pytest.raises(ValueError, match="multiples of 32"):
        model.run(np.zeros((100, 100, 3), np.uint8), 0.5)
