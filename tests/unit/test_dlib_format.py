"""The dlib .dat reader: layer structure, known weights, byte-level decoding, truncation."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.errors import ModelError
from faec_rec.faces import dlib_format
from faec_rec.faces.dlib_format import AddPrev, Affine, AvgPool, Conv, Fc, MaxPool, Relu, Skip, Tag


@pytest.fixture(scope="module")
def raw() -> bytes:
    return dlib_format.default_model_path().read_bytes()


@pytest.fixture(scope="module")
def net(raw: bytes) -> dlib_format.DlibNetwork:
    return dlib_format.parse_bytes(raw, "resnet.dat")


def test_layer_counts(net: dlib_format.DlibNetwork) -> None:
    assert net.count(Conv) == 29
    assert net.count(Affine) == 29
    assert net.count(Relu) == 29
    assert net.count(AddPrev) == 14
    assert net.count(MaxPool) == 1
    pools = [layer for layer in net.layers if isinstance(layer, AvgPool)]
    assert sum(not p.is_global for p in pools) == 4
    assert sum(p.is_global for p in pools) == 1
    # 14 residual blocks, 4 of them down-sampling (tag2 + skip1)
    assert net.count(Tag) == 18 and net.count(Skip) == 4


def test_input_and_loss(net: dlib_format.DlibNetwork) -> None:
    assert net.size == (150, 150)
    np.testing.assert_allclose(net.mean_rgb, [122.782, 117.001, 104.298], atol=1e-3)
    assert net.loss_name == "loss_metric_2"
    assert net.loss_margin == pytest.approx(0.04)
    assert net.loss_distance_threshold == pytest.approx(0.6)


def test_shapes_and_order(net: dlib_format.DlibNetwork) -> None:
    first = net.layers[0]
    assert isinstance(first, Conv)
    assert first.filters.shape == (32, 3, 7, 7) and first.bias.shape == (32,)
    assert first.stride == (2, 2) and first.padding == (0, 0)
    assert isinstance(net.layers[1], Affine) and net.layers[1].gamma.shape == (32,)
    assert isinstance(net.layers[3], MaxPool)
    assert net.layers[3].size == (3, 3) and net.layers[3].stride == (2, 2)
    last = net.layers[-1]
    assert isinstance(last, Fc) and last.weights.shape == (256, 128) and last.bias is None
    assert isinstance(net.layers[-2], AvgPool) and net.layers[-2].is_global
    for conv in (layer for layer in net.layers if isinstance(layer, Conv)):
        if conv.stride == (2, 2):
            assert conv.padding == (0, 0)
        elif conv.kernel == (3, 3):
            assert conv.padding == (1, 1)
    # every conv is directly followed by its affine
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv):
            assert isinstance(net.layers[i + 1], Affine)
            assert net.layers[i + 1].gamma.shape == (layer.out_channels,)


def test_down_sampling_blocks_add_tag2(net: dlib_format.DlibNetwork) -> None:
    layers = list(net.layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, Skip):
            assert layers[i - 1] == Tag(2) and layer == Skip(1)
            assert isinstance(layers[i + 1], AvgPool) and layers[i + 2] == AddPrev(2)
    assert sum(1 for layer in layers if layer == AddPrev(1)) == 10


def test_known_weights_and_param_count(net: dlib_format.DlibNetwork) -> None:
    first = net.layers[0]
    np.testing.assert_allclose(first.filters[0, 0, 0, :3], [-0.02932992, -0.01886531, -0.00566939], rtol=1e-6)
    np.testing.assert_allclose(first.bias[:2], [1.9543244e-05, 2.2053666e-05], rtol=1e-6)
    np.testing.assert_allclose(net.layers[-1].weights[0, :3], [-0.00674625, -0.01018923, 0.00524825], rtol=1e-5)
    assert net.n_params == 5_614_592
    for layer in net.layers:
        for arr in vars(layer).values():
            if isinstance(arr, np.ndarray):
                assert arr.dtype == np.float32 and np.isfinite(arr).all()


def test_sha256_recorded(net: dlib_format.DlibNetwork, raw: bytes) -> None:
    import hashlib

    assert net.sha256 == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("cut", [1, 100, 19_380, 11_000_000, 22_466_065])
def test_truncated_file_raises(raw: bytes, cut: int) -> None:
    with pytest.raises(ModelError, match="truncated"):
        dlib_format.parse_bytes(raw[:cut], "cut.dat")


def test_trailing_bytes_raise(raw: bytes) -> None:
    with pytest.raises(ModelError, match="unexpected bytes"):
        dlib_format.parse_bytes(raw + b"\x00", "long.dat")


def test_not_a_metric_model_raises() -> None:
    data = b"\x01\x01" + b"\x01\x07" + b"loss_xx"
    with pytest.raises(ModelError, match="loss_metric"):
        dlib_format.parse_bytes(data, "other.dat")


def test_read_file_missing(tmp_path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        dlib_format.read_file(tmp_path / "absent.dat")


def test_integer_and_float_encoding() -> None:
    # 300 = 0x012c in two payload bytes; -5 sets the top control bit
    r = dlib_format._Reader(b"\x02\x2c\x01" + b"\x81\x05" + b"\x00", "x")
    assert r.integer() == 300
    assert r.integer() == -5
    assert r.integer() == 0  # zero payload bytes
    # 3 * 2**-2 = 0.75; exponent 32767 = +inf, 32766 = -inf
    r = dlib_format._Reader(b"\x01\x03\x81\x02" + b"\x00\x02\xff\x7f" + b"\x00\x02\xfe\x7f", "x")
    assert r.floating() == 0.75
    assert r.floating() == float("inf")
    assert r.floating() == float("-inf")


def test_tensor_and_boolean_encoding() -> None:
    values = np.arange(6, dtype="<f4")
    data = b"\x01\x02" + b"\x01\x01\x01\x02\x01\x03\x01\x01" + values.tobytes() + b"1"
    r = dlib_format._Reader(data, "x")
    t = r.tensor()
    assert t.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(t.reshape(-1), values)
    assert r.boolean() is True
    with pytest.raises(ModelError):
        dlib_format._Reader(b"x", "x").boolean()
    with pytest.raises(ModelError, match="tensor version"):
        dlib_format._Reader(b"\x01\x03", "x").tensor()
