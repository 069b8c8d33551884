"""The ONNX path of a supplied backbone (optional extra ``faec-rec[onnx]``): skipped where
onnxruntime or onnx (to build the test's own tiny model) is not installed."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.errors import ModelError
from faec_rec.faces.card import parse_card

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZE = 64


def _tiny_onnx(dim: int = 128, seed: int = 0) -> bytes:
    """NCHW float32 [N, 3, 64, 64] -> 8x8 average pool -> flatten -> x W: [N, dim]."""
    from onnx import TensorProto, helper, numpy_helper

    pooled = 3 * (SIZE // 8) ** 2
    w = (np.random.default_rng(seed).standard_normal((pooled, dim)) / np.sqrt(pooled)).astype(np.float32)
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


CARD = {"name": "tiny-onnx", "format": "onnx", "input_size": [SIZE, SIZE], "layout": "NCHW", "colour": "BGR",
        "mean": [127.5] * 3, "std": [128.0] * 3, "embedding_size": 128, "licence": "CC0-1.0 (built by the test)"}


def test_an_onnx_backbone_embeds_chips_in_its_layout_and_colour_order() -> None:
    from faec_rec.faces.supplied import SuppliedEmbedder

    emb = SuppliedEmbedder(_tiny_onnx(), parse_card(CARD), flip_average=False)
    chips = np.random.default_rng(1).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    x = emb.inputs(chips)
    assert x.shape == (3, 3, SIZE, SIZE) and x.dtype == np.float32
    rgb = SuppliedEmbedder(_tiny_onnx(), parse_card({**CARD, "colour": "RGB"}), flip_average=False).inputs(chips)
    np.testing.assert_array_equal(x[:, ::-1], rgb)  # BGR: channels reversed
    feats = emb.features(chips)
    assert feats.shape == (3, 128) and np.isfinite(feats).all()
    session = ort.InferenceSession(_tiny_onnx(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(feats, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_an_onnx_model_that_does_not_match_its_card_is_refused() -> None:
    from faec_rec.faces.supplied import SuppliedEmbedder

    with pytest.raises(ModelError, match=r"takes input of shape \[-1, 3, 64, 64\], but its card says NHWC"):
        SuppliedEmbedder(_tiny_onnx(), parse_card({**CARD, "layout": "NHWC"}))
    with pytest.raises(ModelError, match="gives output of shape \\[-1, 64\\]"):
        SuppliedEmbedder(_tiny_onnx(dim=64), parse_card(CARD))
    with pytest.raises(ModelError, match="does not load as an ONNX model"):
        SuppliedEmbedder(b"\x08\x01garbage", parse_card(CARD))
