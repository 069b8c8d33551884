"""The Keras rebuild: dlib's zero-fill add, the cached model reloading in safe mode,
checksums, and the Embedder's contract."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from faec_rec.config import FacesConfig
from faec_rec.errors import ModelError, VectorError
from faec_rec.faces import backbone, dlib_format
from faec_rec.faces.embed import Embedder, l2_normalise


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model(cache_dir: Path):
    return backbone.load_backbone(cache_dir)


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """Seeded smooth pseudo-images (noise is a poor test of a face network, but any input
    must give identical outputs through every path)."""
    rng = np.random.default_rng(7)
    low = rng.integers(0, 256, size=(5, 10, 10, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, 15, axis=1), 15, axis=2)
    noise = rng.normal(0, 12, size=up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- zero-fill add


def test_zero_fill_add_pads_channels_and_bottom_right() -> None:
    backbone.register_custom_layers()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)  # the conv path: smaller in space
    b = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)  # the shortcut: fewer channels
    out = np.asarray(backbone.ZeroFillAdd()([a, b]))
    expected = np.zeros((2, 4, 4, 4), np.float32)
    expected[:, :3, :3, :] += a
    expected[:, :, :, :2] += b
    assert out.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # the last row/column only hold the shortcut's channels; the rest is zero
    assert np.all(out[:, 3, :, 2:] == 0) and np.all(out[:, :, 3, 2:] == 0)


def test_zero_fill_add_equal_shapes_is_plain_add() -> None:
    backbone.register_custom_layers()
    a = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(np.asarray(backbone.ZeroFillAdd()([a, a])), 2 * a)


def test_zero_fill_add_serialises_in_safe_mode(tmp_path: Path) -> None:
    import keras

    backbone.register_custom_layers()
    x1 = keras.Input((3, 3, 4))
    x2 = keras.Input((4, 4, 2))
    tiny = keras.Model([x1, x2], backbone.ZeroFillAdd(name="zfa")([x1, x2]))
    assert tiny.output.shape[1:] == (4, 4, 4)
    path = tmp_path / "tiny.keras"
    tiny.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    a = np.ones((1, 3, 3, 4), np.float32)
    b = np.full((1, 4, 4, 2), 2.0, np.float32)
    np.testing.assert_array_equal(np.asarray(again([a, b])), np.asarray(tiny([a, b])))
    assert all(type(layer).__name__ != "Lambda" for layer in again.layers)


# ----------------------------------------------------------------- an independent reference


def _reference_forward(net: dlib_format.DlibNetwork, chip: np.ndarray) -> np.ndarray:
    """dlib's semantics written out in float64 numpy, one (h, w, 3) chip -> (128,)."""
    from numpy.lib.stride_tricks import sliding_window_view

    def windows(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
        out_h = (x.shape[0] - size[0]) // stride[0] + 1
        out_w = (x.shape[1] - size[1]) // stride[1] + 1
        win = sliding_window_view(x, size, axis=(0, 1))  # (h', w', c, kh, kw)
        return win[: out_h * stride[0] : stride[0], : out_w * stride[1] : stride[1]]

    x = (chip.astype(np.float64) - net.mean_rgb.astype(np.float64)) / 256.0
    tags: dict[int, np.ndarray] = {}
    for layer in net.layers:
        if isinstance(layer, dlib_format.Conv):
            py, px = layer.padding
            padded = np.pad(x, ((py, py), (px, px), (0, 0)))
            win = windows(padded, layer.kernel, layer.stride)
            x = np.tensordot(win, layer.filters.astype(np.float64), axes=([2, 3, 4], [1, 2, 3])) + layer.bias
        elif isinstance(layer, dlib_format.Affine):
            x = x * layer.gamma + layer.beta
        elif isinstance(layer, dlib_format.Relu):
            x = np.maximum(x, 0)
        elif isinstance(layer, dlib_format.MaxPool):
            x = windows(x, layer.size, layer.stride).max(axis=(3, 4))
        elif isinstance(layer, dlib_format.AvgPool):
            x = x.mean(axis=(0, 1)) if layer.is_global else windows(x, layer.size, layer.stride).mean(axis=(3, 4))
        elif isinstance(layer, dlib_format.Tag):
            tags[layer.tag_id] = x
        elif isinstance(layer, dlib_format.Skip):
            x = tags[layer.tag_id]
        elif isinstance(layer, dlib_format.AddPrev):
            other = tags[layer.tag_id]
            shape = np.maximum(x.shape, other.shape)
            total = np.zeros(shape)
            total[: x.shape[0], : x.shape[1], : x.shape[2]] += x
            total[: other.shape[0], : other.shape[1], : other.shape[2]] += other
            x = total
        elif isinstance(layer, dlib_format.Fc):
            x = x.reshape(-1) @ layer.weights
    return x


def test_model_matches_numpy_reference_of_dlib_semantics(model, chips: np.ndarray) -> None:
    net = dlib_format.read_file()
    expected = np.stack([_reference_forward(net, chip) for chip in chips[:2]])
    ours = model(chips[:2].astype(np.float32), training=False).numpy()
    assert expected.shape == (2, 128)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


# ----------------------------------------------------------------- the model and its cache


def test_model_structure(model) -> None:
    assert tuple(model.input_shape) == (None, 150, 150, 3)
    assert tuple(model.output_shape) == (None, 128)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 29
    assert kinds.count("ZeroFillAdd") == 14
    assert "Lambda" not in kinds
    net = dlib_format.read_file()
    affine_params = sum(2 * layer.gamma.size for layer in net.layers if isinstance(layer, dlib_format.Affine))
    # the affine layers are folded into the convs: only their own parameters disappear
    assert model.count_params() == net.n_params - affine_params


def test_cache_written_atomically_with_sidecar(model, cache_dir: Path) -> None:
    target = cache_dir / "dlib-resnet-v1-55533b28a958.keras"
    assert target.is_file()
    meta = json.loads(target.with_suffix(".json").read_text())
    assert meta["source_sha256"] == backbone.DLIB_RESNET_SHA256
    assert meta["keras_sha256"] == backbone.sha256_file(target)
    assert [p.name for p in cache_dir.iterdir() if "tmp" in p.name] == []


def test_cache_reloads_in_safe_mode_with_identical_outputs(model, cache_dir: Path, chips: np.ndarray) -> None:
    import keras

    backbone.register_custom_layers()
    again = keras.saving.load_model(cache_dir / "dlib-resnet-v1-55533b28a958.keras", safe_mode=True)
    x = chips.astype(np.float32)
    np.testing.assert_array_equal(again(x, training=False).numpy(), model(x, training=False).numpy())


def test_second_load_uses_cache(model, cache_dir: Path, chips: np.ndarray, monkeypatch) -> None:
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although a valid cache exists")

    monkeypatch.setattr(backbone, "build_model", no_conversion)
    cached = backbone.load_backbone(cache_dir)
    x = chips[:2].astype(np.float32)
    np.testing.assert_array_equal(cached(x, training=False).numpy(), model(x, training=False).numpy())


def test_corrupt_cache_is_rebuilt(tmp_path: Path, model, chips: np.ndarray) -> None:
    target = tmp_path / "dlib-resnet-v1-55533b28a958.keras"
    target.write_bytes(b"not a zip")
    target.with_suffix(".json").write_text(json.dumps({"source_sha256": backbone.DLIB_RESNET_SHA256, "keras_sha256": "0"}))
    rebuilt = backbone.load_backbone(tmp_path)
    assert backbone.sha256_file(target) == json.loads(target.with_suffix(".json").read_text())["keras_sha256"]
    x = chips[:1].astype(np.float32)
    np.testing.assert_allclose(rebuilt(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-6)


def test_source_checksum_is_verified(tmp_path: Path) -> None:
    fake = tmp_path / "model.dat"
    fake.write_bytes(b"\x01\x01")
    with pytest.raises(ModelError, match="sha256"):
        backbone.load_backbone(tmp_path, fake)
    with pytest.raises(ModelError, match="not found"):
        backbone.load_backbone(tmp_path, tmp_path / "absent.dat")


def test_folded_affine_matches_unfolded(model, chips: np.ndarray) -> None:
    unfolded = backbone.build_model(dlib_format.read_file(), fold_affine=False)
    x = chips.astype(np.float32)
    np.testing.assert_allclose(model(x, training=False).numpy(), unfolded(x, training=False).numpy(), atol=2e-6)


# ----------------------------------------------------------------- Embedder


def test_embedder_contract(cache_dir: Path, chips: np.ndarray, model) -> None:
    plain = Embedder(cache_dir=cache_dir, flip_average=False, batch_size=2, precision="float32")
    assert plain.backbone_version == "dlib-resnet-v1"
    feats = plain.features(chips)
    assert feats.shape == (5, 128) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, model(chips.astype(np.float32), training=False).numpy(), atol=1e-6)
    emb = plain.embed(chips)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(emb, feats / np.linalg.norm(feats, axis=1, keepdims=True), atol=1e-6)


def test_embedder_flip_average(cache_dir: Path, chips: np.ndarray) -> None:
    plain = Embedder(cache_dir=cache_dir, flip_average=False)
    flipped = Embedder(FacesConfig(flip_average=True), cache_dir=cache_dir)
    expected = (plain.features(chips) + plain.features(chips[:, :, ::-1])) / 2
    np.testing.assert_allclose(flipped.features(chips), expected, atol=1e-6)
    # a mirror image has (nearly) the same flip-averaged descriptor
    np.testing.assert_allclose(flipped.features(chips[:, :, ::-1]), flipped.features(chips), atol=1e-5)


def test_embedder_batching_does_not_change_results(cache_dir: Path, chips: np.ndarray) -> None:
    small = Embedder(cache_dir=cache_dir, batch_size=2).features(chips)
    big = Embedder(cache_dir=cache_dir, batch_size=32).features(chips)
    np.testing.assert_allclose(small, big, atol=1e-6)
    one = Embedder(cache_dir=cache_dir).features(chips[3:4])
    np.testing.assert_allclose(one[0], big[3], atol=1e-6)


def test_embedder_rejects_bad_input(cache_dir: Path) -> None:
    e = Embedder(cache_dir=cache_dir)
    with pytest.raises(VectorError, match="leading axis"):
        e.features(np.zeros((150, 150, 3), np.uint8))
    with pytest.raises(VectorError, match="align"):
        e.features(np.zeros((2, 112, 112, 3), np.uint8))
    with pytest.raises(VectorError, match="dtype"):
        e.features(np.zeros((1, 150, 150, 3), np.int64))
    assert e.features(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    assert e.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


def test_l2_normalise() -> None:
    x = np.array([[3.0, 4.0], [0.0, 2.0]])
    out = l2_normalise(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0]], atol=1e-7)
    with pytest.raises(VectorError, match="zeros"):
        l2_normalise(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(VectorError, match="NaN"):
        l2_normalise(np.array([[np.nan, 1.0]]))
    with pytest.raises(VectorError, match=r"\(n, d\)"):
        l2_normalise(np.zeros(3))


def test_embedder_float_chips_are_rounded(cache_dir: Path, chips: np.ndarray) -> None:
    e = Embedder(cache_dir=cache_dir, flip_average=False)
    as_float = chips.astype(np.float32) + 0.2  # rounds back to the same pixels
    np.testing.assert_array_equal(e.features(as_float), e.features(chips))


def test_bfloat16_precision_close_to_float32(cache_dir: Path, chips: np.ndarray) -> None:
    exact = Embedder(cache_dir=cache_dir, flip_average=False, precision="float32")
    fast = Embedder(FacesConfig(precision="bfloat16"), cache_dir=cache_dir, flip_average=False)
    a, b = exact.embed(chips), fast.embed(chips)
    assert b.dtype == np.float32
    assert not np.array_equal(a, b)  # it really computes in lower precision
    assert np.abs((a @ a.T) - (b @ b.T)).max() < 0.01
    kinds = {layer.dtype_policy.name for layer in fast.model.layers}
    assert "bfloat16" in kinds
    with pytest.raises(VectorError, match="precision"):
        Embedder(cache_dir=cache_dir, precision="int8")


@pytest.mark.slow
def test_processes_starting_together_convert_once(tmp_path: Path) -> None:
    """Two processes with an empty cache: one converts, the other waits and loads its cache."""
    import subprocess
    import sys

    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s');"
        "from pathlib import Path; from faec_rec.faces import backbone;"
        f"backbone.load_backbone(Path({str(tmp_path)!r}))"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("converting" in out for out in logs) == 1
    assert sum("loaded backbone" in out for out in logs) == 1
    target = tmp_path / "dlib-resnet-v1-55533b28a958.keras"
    meta = json.loads(target.with_suffix(".json").read_text())
    assert meta["keras_sha256"] == backbone.sha256_file(target)


def test_embedder_loads_model_once_across_threads(cache_dir: Path, chips: np.ndarray, monkeypatch) -> None:
    import importlib
    import threading

    # faec_rec.faces re-exports a function named embed over the module name
    embed_module = importlib.import_module("faec_rec.faces.embed")

    from faec_rec.faces import runtime as runtime_module

    # Either the Keras model or a cached converted model (LiteRT or the frozen graph) is loaded: once in all.
    calls = []
    real_load = embed_module.load_backbone
    real_frozen = runtime_module.load_frozen
    real_lite = runtime_module.load_lite

    def counting_load(*args, **kwargs):
        calls.append(threading.get_ident())
        return real_load(*args, **kwargs)

    def counting(real):
        def load(*args, **kwargs):
            found = real(*args, **kwargs)
            if found is not None:
                calls.append(threading.get_ident())
            return found

        return load

    monkeypatch.setattr(embed_module, "load_backbone", counting_load)
    monkeypatch.setattr(runtime_module, "load_frozen", counting(real_frozen))
    monkeypatch.setattr(runtime_module, "load_lite", counting(real_lite))
    e = Embedder(cache_dir=cache_dir, flip_average=False)
    results: list[np.ndarray] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        results.append(e.features(chips[:2]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(calls) == 1
    assert len(results) == 4
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_auto_precision_follows_the_cpu(tmp_path: Path, monkeypatch) -> None:
    from faec_rec.faces import backbone

    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert backbone.native_bfloat16(with_bf16) and not backbone.native_bfloat16(without)
    assert not backbone.native_bfloat16(tmp_path / "absent")
    monkeypatch.setattr(backbone, "native_bfloat16", lambda: True)
    assert backbone.resolve_precision("auto") == "bfloat16"
    assert backbone.resolve_precision("float32") == "float32"
    monkeypatch.setattr(backbone, "native_bfloat16", lambda: False)
    assert backbone.resolve_precision("auto") == "float32"
    assert Embedder(precision="auto").precision == "float32"  # resolved when built, before any model load
