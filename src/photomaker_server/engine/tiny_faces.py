"""A tiny InsightFace-shaped face model pack, built in code with the ``onnx`` helper API (no download).

It stands in for InsightFace's ``buffalo_l`` in tests and in the demo: the same file names (``det_10g.onnx``,
``w600k_r50.onnx``) and the same graph *interfaces*, so InsightFace's own loader routes and runs them unchanged
(``FaceAnalysis`` tells models apart by their inputs and outputs):

* **detector** — SCRFD's interface: one NCHW image of any size in; nine outputs (scores, box distances and five
  key points at strides 8, 16 and 32, two anchors per cell). Its "face score" of a cell is the cell's contrast:
  ``v / (v + t)`` of the grey-level variance ``v`` over the cell's image pixels (the letterbox padding, exact
  black after InsightFace's normalisation, is left out). Any ordinary photo (a portrait, a face drawing) has
  contrast somewhere, so "a face" is found; a uniform image has none anywhere, so it has no face. Larger cells
  score a little higher, so the chosen "face" is a region, not a speck. Boxes and key points are fixed shapes
  around the cell centre (enough for InsightFace's alignment to crop something).
* **recogniser** — ArcFace's interface: 112×112 aligned crops in, one 512-number embedding out (8×8 average pool,
  then a fixed random linear map): different crops give different embeddings, the same crop the same one.

Every number is made from fixed seeds, so the pack is identical wherever it is built. It detects *contrast*, not
faces, and its embeddings identify no one: it is labelled as demo material wherever it is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DETECTOR_FILE = "det_10g.onnx"
RECOGNISER_FILE = "w600k_r50.onnx"
STRIDES = (8, 16, 32)
#: Scale of each stride's scores: prefer larger regions when contrast is alike.
STRIDE_WEIGHT = {8: 0.90, 16: 0.95, 32: 1.0}
#: Variance (of grey levels in [-1, 1]) at which a cell scores 0.5 before weighting: about 11 of 255 levels std.
CONTRAST_HALF = 0.002
#: InsightFace pads the letterbox with zeros, which its normalisation turns into (0 - 127.5) / 128 = -0.996.
PAD_LEVEL = -0.99
#: Box distances (left, top, right, bottom) and key points (eyes, nose, mouth corners) in units of the stride.
BOX = (1.5, 1.5, 1.5, 1.5)
KEYPOINTS = (-0.5, -0.4, 0.5, -0.4, 0.0, 0.1, -0.4, 0.6, 0.4, 0.6)
EMBED_DIM = 512
OPSET = 18


def _const(name: str, values: object, dtype: type = np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def build_detector():
    """The SCRFD-shaped contrast detector as an ``onnx.ModelProto``."""
    from onnx import TensorProto, helper

    nodes, inits = [], [
        _const("pad_level", PAD_LEVEL),
        _const("eps", 1e-6),
        _const("half", 0.5),
        _const("contrast_half", CONTRAST_HALF),
        _const("zero", 0.0),
        _const("col_shape", [-1, 1], np.int64),
        _const("box", [BOX]),
        _const("kps", [KEYPOINTS]),
        _const("channel_axis", [1], np.int64),
    ]

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    grey = node("ReduceMean", ["input.1", "channel_axis"], "grey", keepdims=1)
    mask = node("Cast", [node("Greater", [grey, "pad_level"], "is_image")], "mask", to=TensorProto.FLOAT)
    masked = node("Mul", [grey, mask], "masked_grey")
    masked_sq = node("Mul", [masked, grey], "masked_grey_sq")
    scores, boxes, points = [], [], []
    for s in STRIDES:
        pool = dict(kernel_shape=[s, s], strides=[s, s])
        coverage = node("AveragePool", [mask], f"coverage_{s}", **pool)
        denom = node("Add", [coverage, "eps"], f"denom_{s}")
        mean = node("Div", [node("AveragePool", [masked], f"sum_{s}", **pool), denom], f"mean_{s}")
        mean_sq = node("Div", [node("AveragePool", [masked_sq], f"sum_sq_{s}", **pool), denom], f"mean_sq_{s}")
        var = node("Relu", [node("Sub", [mean_sq, node("Mul", [mean, mean], f"mean2_{s}")], f"var_raw_{s}")], f"var_{s}")
        mostly_image = node("Cast", [node("Greater", [coverage, "half"], f"covered_{s}")], f"covered_f_{s}",
                            to=TensorProto.FLOAT)
        var = node("Mul", [var, mostly_image], f"var_kept_{s}")
        score = node("Div", [var, node("Add", [var, "contrast_half"], f"var_t_{s}")], f"contrast_{s}")
        inits.append(_const(f"weight_{s}", STRIDE_WEIGHT[s]))
        inits.append(_const(f"anchor_weight_{s}", [[1.0, 0.999]]))
        score = node("Mul", [score, f"weight_{s}"], f"weighted_{s}")
        column = node("Reshape", [score, "col_shape"], f"column_{s}")  # cells in row-major order
        pairs = node("Mul", [column, f"anchor_weight_{s}"], f"anchors_{s}")  # two anchors per cell
        scores.append(node("Reshape", [pairs, "col_shape"], f"score_{s}"))
        zeros = node("Mul", [scores[-1], "zero"], f"zeros_{s}")
        boxes.append(node("Add", [zeros, "box"], f"bbox_{s}"))
        points.append(node("Add", [zeros, "kps"], f"kps_{s}"))
    graph = helper.make_graph(
        nodes,
        "tiny_contrast_detector",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["anchors", width])
         for names, width in ((scores, 1), (boxes, 4), (points, 10)) for name in names],
        inits,
    )
    return _model(graph)


def build_recogniser(seed: int = 0):
    """The ArcFace-shaped recogniser as an ``onnx.ModelProto``."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    features = 3 * 14 * 14
    weight = rng.standard_normal((features, EMBED_DIM)) / np.sqrt(features) * 4.0
    bias = rng.standard_normal(EMBED_DIM) * 0.1
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], name="pool", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_weight", "fc_bias"], ["fc1"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_recogniser",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        [_const("fc_weight", weight), _const("fc_bias", bias)],
    )
    return _model(graph)


def _model(graph):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="photomaker-server")
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    return model


def save_face_pack(directory: Path) -> Path:
    """Write the pack's two ``.onnx`` files into ``directory`` (created); the directory is a ``--face-model``."""
    import onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(build_detector(), str(directory / DETECTOR_FILE))
    onnx.save(build_recogniser(), str(directory / RECOGNISER_FILE))
    return directory
