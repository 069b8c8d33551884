"""Gallery replicas across a backbone switch (real Redis; seeded synthetic chips, no model).

The "backbone" here is a fixed seeded projection of the chip's pixels, so the test knows
exactly which features every template must hold after the switch: a replica already
loaded, and one loading from a snapshot written before the switch, both serve the new
features; the threshold follows the supplied backbone's calibration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faec_rec.config import GalleryConfig
from faec_rec.faces.image import encode_jpeg
from faec_rec.keys import Keys

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(11)
PROJECTION = RNG.standard_normal((150 * 150 * 3 // 100, 128)).astype(np.float32)


def new_backbone(chips: np.ndarray) -> np.ndarray:
    """(n, 150, 150, 3) uint8 -> (n, 128) float32: every 100th pixel value, projected."""
    flat = np.asarray(chips, np.float32).reshape(len(chips), -1)[:, ::100][:, : PROJECTION.shape[0]]
    return (flat - 127.5) @ PROJECTION


def _gallery(redis_client: Any, keys: Keys, data_dir: Path, **config: Any) -> Any:
    from faec_rec.index.gallery import Gallery

    # best template only: a score is then one template's cosine, which the test can check
    return Gallery(redis_client, keys, GalleryConfig(**{"centroid_weight": 0.0, **config}), data_dir)


def test_loaded_and_snapshot_replicas_serve_the_new_backbone(redis_client: Any, keys: Keys, tmp_path: Path) -> None:
    from faec_rec.index.backbone_swap import current_backbone, read_crops, swap_backbone
    from faec_rec.index.calibration import search_raise

    writer = _gallery(redis_client, keys, tmp_path)
    chips = {}
    for p in range(4):
        person_chips = RNG.integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
        old = RNG.standard_normal((3, 128)).astype(np.float32)
        result = writer.enrol(f"P{p}", old, sources=[f"{p}-{i}.jpg" for i in range(3)],
                              content_hashes=[f"h{p}{i}" for i in range(3)], crops=[encode_jpeg(c, 95) for c in person_chips])
        chips.update(zip(result.added, person_chips))
    assert writer.size == 12
    writer.snapshot()  # a snapshot in the old backbone's features
    follower = _gallery(redis_client, keys, tmp_path)
    assert follower.size == 12 and follower.backbone["name"] == "dlib-resnet-v1"

    out = swap_backbone(redis_client, keys, tmp_path, "pixels", new_backbone,
                        calibration={"threshold": 0.5, "raise_scale": 2.0})
    assert out == {"backbone": "pixels", "previous": "dlib-resnet-v1", "generation": 1, "templates": 12, "unknown_faces": 0}
    assert current_backbone(redis_client, keys) == {"name": "pixels", "generation": 1, "threshold": 0.5, "raise_scale": 2.0,
                                                       "search": None}

    # what the crops (JPEG) give, template by template
    crops = {t: redis_client.hget(keys.template(t), "crop").decode() for t in chips}
    decoded = read_crops(tmp_path, crops)
    want = dict(zip(decoded, new_backbone(np.stack(list(decoded.values())))))
    fresh = _gallery(redis_client, keys, tmp_path)  # loads the old snapshot, then the "backbone" event
    follower.sync()  # already loaded: reloads on the event
    for gallery in (follower, fresh):
        assert gallery.backbone["name"] == "pixels" and gallery.size == 12
        for tid, features in want.items():
            match = gallery.identify_features(features[None].astype(np.float32))[0]
            assert match.template_id == tid and match.score > 0.999, (tid, match)
        lifted = 0.5 + 2.0 * search_raise(4, GalleryConfig().search_far)
        assert gallery.threshold == pytest.approx(min(lifted, 0.995))

    # a new template enrolled after the switch carries the new backbone's name
    new_id = follower.enrol("P0", new_backbone(RNG.integers(0, 256, (1, 150, 150, 3), dtype=np.uint8)),
                            sources=["late.jpg"], content_hashes=["late"]).added[0]
    assert redis_client.hget(keys.template(new_id), "backbone") == b"pixels"


def test_a_backbone_with_its_own_search_table_is_served_from_it(redis_client: Any, keys: Keys, tmp_path: Path) -> None:
    """The table stored with the backbone in service sets the threshold at the enrolled count,
    and it follows the gallery as people are added (never below the per-pair threshold)."""
    from faec_rec.index.backbone_swap import current_backbone, swap_backbone
    from faec_rec.index.calibration import table_threshold

    writer = _gallery(redis_client, keys, tmp_path)
    for p in range(3):
        writer.enrol(f"P{p}", RNG.standard_normal((2, 128)).astype(np.float32), sources=[f"{p}-{i}.jpg" for i in range(2)],
                     content_hashes=[f"s{p}{i}" for i in range(2)],
                     crops=[encode_jpeg(c, 95) for c in RNG.integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)])
    table = {"far": [0.002, 0.005, 0.05], "people": [1, 2, 10], "thresholds": [[0.6, 0.7, 0.9], [0.4, 0.55, 0.8], [0.2, 0.3, 0.6]]}
    swap_backbone(redis_client, keys, tmp_path, "pixels", new_backbone,
                  calibration={"threshold": 0.45, "raise_scale": 9.0, "search": table})
    assert current_backbone(redis_client, keys)["search"] == table
    gallery = _gallery(redis_client, keys, tmp_path)
    far = GalleryConfig().search_far
    assert gallery.backbone["name"] == "pixels"
    assert gallery.threshold == pytest.approx(table_threshold(table, 3, far))  # not 0.45 + 9 x the built-in raise
    assert 0.55 < gallery.threshold < 0.8
    writer.enrol("P9", RNG.standard_normal((1, 128)).astype(np.float32), sources=["late.jpg"], content_hashes=["late9"])
    gallery.sync()
    assert gallery.threshold == pytest.approx(table_threshold(table, 4, far)) and gallery.threshold > table_threshold(table, 3, far)
    lenient = _gallery(redis_client, keys, tmp_path, search_far=0.05)
    assert lenient.backbone["name"] == "pixels"  # loads the replica
    assert table_threshold(table, 4, 0.05) < 0.45 and lenient.threshold == 0.45  # never below the per-pair threshold


def test_a_switch_refused_while_a_head_serves(redis_client: Any, keys: Keys, tmp_path: Path) -> None:
    from faec_rec.errors import GalleryError
    from faec_rec.index.backbone_swap import current_backbone, swap_backbone
    from faec_rec.index.store import Store

    Store(redis_client, keys, tmp_path).set_version("head-3")
    with pytest.raises(GalleryError, match="trained head 'head-3'.*rollback"):
        swap_backbone(redis_client, keys, tmp_path, "pixels", new_backbone, calibration={"threshold": 0.5})
    assert current_backbone(redis_client, keys)["name"] == "dlib-resnet-v1"


def test_an_archive_in_another_backbones_features_is_refused(redis_client: Any, keys: Keys, tmp_path: Path) -> None:
    import io

    from faec_rec.cluster.archive import export_gallery, import_gallery
    from faec_rec.config import load_settings
    from faec_rec.errors import ArchiveError
    from faec_rec.index.backbone_swap import swap_backbone
    from faec_rec.index.store import Store

    source = _gallery(redis_client, keys, tmp_path / "a")
    chips = RNG.integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    source.enrol("P", RNG.standard_normal((2, 128)).astype(np.float32), sources=["1.jpg", "2.jpg"],
                 content_hashes=["h1", "h2"], crops=[encode_jpeg(c, 95) for c in chips])
    swap_backbone(redis_client, keys, tmp_path / "a", "pixels", new_backbone, calibration={"threshold": 0.5})
    settings = load_settings()
    archive = io.BytesIO()
    export_gallery(redis_client, keys, tmp_path / "a", archive, settings)
    target_keys = Keys(keys.prefix + "b")
    try:
        archive.seek(0)
        with pytest.raises(ArchiveError, match="backbone pixels's features and this gallery serves dlib-resnet-v1"):
            import_gallery(Store(redis_client, target_keys, tmp_path / "b"), archive, settings)
        assert redis_client.scard(target_keys.people()) == 0
        swap_backbone(redis_client, target_keys, tmp_path / "b", "pixels", new_backbone, calibration={"threshold": 0.5})
        archive.seek(0)
        summary = import_gallery(Store(redis_client, target_keys, tmp_path / "b"), archive, settings)
        assert summary.templates_added == 2
    finally:
        for key in redis_client.scan_iter(match=f"{target_keys.prefix}:*", count=1000):
            redis_client.delete(key)
