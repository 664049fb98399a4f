"""Detector signatures: the exporter input type a serving signature takes, and its outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from transforms.records import Detections

__all__ = [
    "IMAGE_INFO_KEY",
    "INPUT_TYPES",
    "MODEL_GARDEN",
    "OD_API",
    "OD_API_OUTPUT_KEYS",
    "SIGNATURE_NAME",
    "DetectorInput",
    "graph_op_types",
    "parse_detections",
    "recognise_input",
]

SIGNATURE_NAME = "serving_default"
# num_detections is optional: without it every returned entry counts.
OD_API_OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes")
READ_KEYS = (*OD_API_OUTPUT_KEYS, "num_detections")
# The exporter's --input_type names (research/object_detection/exporter_lib_v2.py).
IMAGE_TENSOR = "image_tensor"
FLOAT_IMAGE_TENSOR = "float_image_tensor"
ENCODED_IMAGE_STRING_TENSOR = "encoded_image_string_tensor"
TF_EXAMPLE = "tf_example"
INPUT_TYPES = (IMAGE_TENSOR, FLOAT_IMAGE_TENSOR, ENCODED_IMAGE_STRING_TENSOR, TF_EXAMPLE)
# Families of exporters, told apart by an image_info output (the Model Garden's).
OD_API = "OD API"
MODEL_GARDEN = "Model Garden"
IMAGE_INFO_KEY = "image_info"
# The Model Garden exporter's --input_type names for the same feeds
# (official/vision/serving/export_base.py, get_inference_signatures).
_MODEL_GARDEN_INPUT_TYPES = {IMAGE_TENSOR: "image_tensor",
                             ENCODED_IMAGE_STRING_TENSOR: "image_bytes", TF_EXAMPLE: "tf_example"}

SUPPORTED_INPUTS = ("one input: uint8 or float32 [batch, H, W, 3], or string [batch] (encoded "
                    "images or tf.train.Example); batch 1 or free")
# A string input is told apart by what its graph does with the strings.
_PARSE_OPS = frozenset({"ParseExample", "ParseExampleV2", "ParseSingleExample",
                        "ParseSequenceExample", "ParseSequenceExampleV2",
                        "ParseSingleSequenceExample"})
_DECODE_OPS = frozenset({"DecodeImage", "DecodePng", "DecodeJpeg", "DecodeAndCropJpeg",
                         "DecodeBmp", "DecodeGif", "DecodeWebP"})
_FEEDS = {
    IMAGE_TENSOR: "the decoded RGB pixels",
    FLOAT_IMAGE_TENSOR: "the decoded RGB pixels as float32 0..255",
    ENCODED_IMAGE_STRING_TENSOR: "lossless PNG bytes of the decoded RGB pixels",
    TF_EXAMPLE: "a tf.train.Example holding a PNG of the decoded RGB pixels",
}


def parse_detections(outputs: Mapping[str, Any], index: int) -> Detections:
    """Takes entry ``index`` of a batch of OD API outputs, keeping only the first
    ``num_detections`` rows; extra output keys are never read.

    ``detection_classes`` and ``num_detections`` may be float (the TF2 exporter) or integer
    (TF Hub model cards). Values are passed on as the model gave them (NaN scores and boxes are
    dropped and counted by ``select_regions``); a non-finite class id becomes 0. Raises
    ValueError when the boxes are not ``[N, 4]``, which fails this image at the ``detect`` stage.
    """
    boxes = np.asarray(outputs["detection_boxes"][index], dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"detection_boxes has shape {list(boxes.shape)} per image; an OD API "
                         "detector returns [N, 4] (ymin, xmin, ymax, xmax)")
    scores = np.asarray(outputs["detection_scores"][index], dtype=np.float32).reshape(-1)
    classes = np.asarray(outputs["detection_classes"][index], dtype=np.float64).reshape(-1)
    count = min(len(boxes), len(scores), len(classes))
    if "num_detections" in outputs:
        declared = float(np.asarray(outputs["num_detections"]).reshape(-1)[index])
        if np.isfinite(declared):
            count = min(count, max(int(declared), 0))
    classes = classes[:count]
    classes = np.where(np.isfinite(classes) & (np.abs(classes) < 2**31 - 1), classes, 0.0)
    return Detections(boxes[:count], scores[:count], np.rint(classes).astype(np.int32))


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def _spec_text(name: str, spec: Any) -> str:
    shape = "of unknown rank" if spec.shape.rank is None else _shape_text(spec.shape.as_list())
    return f"'{name}' is {spec.dtype.name} {shape}"


@dataclasses.dataclass(frozen=True)
class DetectorInput:
    """The one input of a detector's serving signature and the exporter input type it is."""

    key: str
    input_type: str  # one of INPUT_TYPES
    dtype: str
    shape: tuple[int | None, ...]

    @property
    def batchable(self) -> bool:
        return self.shape[0] is None

    def describe(self, family: str = OD_API) -> str:
        batch = "free batch" if self.batchable else "batch of 1"
        name = (_MODEL_GARDEN_INPUT_TYPES.get(self.input_type, self.input_type)
                if family == MODEL_GARDEN else self.input_type)
        return (f"{family} {name}: {self.dtype} {_shape_text(self.shape)} "
                f"'{self.key}', {batch}; fed {_FEEDS[self.input_type]}")


def recognise_input(inputs: Mapping[str, Any],
                    graph_ops: Callable[[], set[str]]) -> DetectorInput:
    """Tells which OD API input type a signature takes, from its input specs alone.

    Args:
        inputs: the signature's inputs by name (``tf.TensorSpec`` or alike).
        graph_ops: returns the op types of the signature's graph; called only for a string
            input, to tell encoded images (a decode op) from ``tf.train.Example`` (a parse op).

    Raises:
        ValueError: one line naming what was found and what is supported.
    """
    if len(inputs) != 1:
        found = ", ".join(_spec_text(name, spec) for name, spec in sorted(inputs.items())[:3])
        found += ", ..." if len(inputs) > 3 else ""
        if len(inputs) > 1:
            raise ValueError(f"takes {len(inputs)} inputs ({found}): side inputs are not "
                             "supported; supported: exactly one input, the images")
        raise ValueError(f"takes no inputs; supported: {SUPPORTED_INPUTS}")
    (key, spec), = inputs.items()
    dtype = spec.dtype.name
    found = f"input {_spec_text(key, spec)}"
    if spec.shape.rank is None:
        raise ValueError(f"{found}; supported: {SUPPORTED_INPUTS}")
    shape = tuple(spec.shape.as_list())
    if dtype in ("uint8", "float32"):
        if len(shape) != 4:
            raise ValueError(f"{found}; supported: {SUPPORTED_INPUTS}")
        if shape[3] not in (3, None):
            raise ValueError(f"{found}: {shape[3]}-channel images; supported: 3-channel RGB "
                             f"images, {dtype} [batch, height, width, 3]")
        if shape[1:3] != (None, None):
            raise ValueError(f"{found}: a fixed image size; supported: any height and width "
                             "([batch, None, None, 3], as the OD API exporter writes)")
        input_type = IMAGE_TENSOR if dtype == "uint8" else FLOAT_IMAGE_TENSOR
    elif dtype == "string":
        if len(shape) != 1:
            raise ValueError(f"{found}; supported: string [batch], one encoded image or "
                             "tf.train.Example per entry")
        ops = graph_ops()
        if ops & _PARSE_OPS:
            input_type = TF_EXAMPLE
        elif ops & _DECODE_OPS:
            input_type = ENCODED_IMAGE_STRING_TENSOR
        else:
            raise ValueError(f"{found} but its graph neither decodes images nor parses "
                             "tf.train.Example; supported: encoded_image_string_tensor or "
                             "tf_example exports")
    else:
        raise ValueError(f"{found}: dtype {dtype} is not supported; supported: uint8 or "
                         "float32 images, or string (encoded images, tf.train.Example)")
    if shape[0] not in (1, None):
        raise ValueError(f"{found}: a fixed batch of {shape[0]}; supported: batch 1 or free")
    return DetectorInput(key, input_type, dtype, shape)


def graph_op_types(function: Any) -> set[str]:
    """The op types of a concrete function's graph, its library functions' too."""
    graph_def = function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for library_function in graph_def.library.function:  # map_fn bodies, nested tf.functions
        types.update(node.op for node in library_function.node_def)
    return types
