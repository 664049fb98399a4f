"""DetectObjects: a RunInference ModelHandler for TF Object Detection API and TF Model Garden
detection SavedModels.

Every input type of their exporters is recognised from the ``serving_default`` signature and
fed what it expects (docs/detector-exports.md): uint8 or float32 image tensors, encoded image
strings and serialized ``tf.train.Example`` protos, with a batch of 1 or a free batch. Boxes are
read in the convention the signature and a probe inference prove (``transforms.box_formats``):
normalized, or Model Garden's resized-frame pixels mapped back with its ``image_info``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.box_formats import (
    AUTO,
    IMAGE_INFO,
    NORMALIZED,
    box_range_problem,
    decide_box_format,
    describe_box_format,
    probe_image,
    to_normalized,
)
from transforms.decoding import encode_png
from transforms.model_files import local_model_path
from transforms.records import DecodedImage, Detections, short_message
from transforms.tf_runtime import configure_tensorflow

__all__ = [
    "INPUT_TYPES",
    "MODEL_GARDEN",
    "OD_API",
    "OD_API_OUTPUT_KEYS",
    "DetectorInput",
    "DetectorModel",
    "ObjectDetectionModelHandler",
    "MIN_DETECTOR_SIDE",
    "pad_for_detector",
    "parse_detections",
    "recognise_input",
    "tf_example_bytes",
]

SIGNATURE_NAME = "serving_default"
# num_detections is optional: without it every returned entry counts.
OD_API_OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes")
_READ_KEYS = (*OD_API_OUTPUT_KEYS, "num_detections")
# Decoded images held per detector batch; only same-size images of a batchable model share a call.
DEFAULT_DETECTOR_BATCH = 4

# Detectors that pad to a stride fail on smaller images (the bundled one: MirrorPad on a 1x1
# or 9x17 image). A side under this is padded with black pixels, at the bottom and right, for
# the detector only; its boxes are mapped back to the image (and clipped to it later).
MIN_DETECTOR_SIDE = 32
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


def pad_for_detector(image: np.ndarray,
                     minimum: int = MIN_DETECTOR_SIDE) -> tuple[np.ndarray, tuple[float, float]]:
    """The image padded with black at the bottom and right to at least ``minimum`` pixels a
    side, and the factors ``(y, x)`` that map a normalized box of the padded image back to
    the image (1.0 where nothing was added)."""
    height, width = image.shape[:2]
    if height >= minimum and width >= minimum:
        return image, (1.0, 1.0)
    padded = np.zeros((max(height, minimum), max(width, minimum), *image.shape[2:]), image.dtype)
    padded[:height, :width] = image
    return padded, (padded.shape[0] / height, padded.shape[1] / width)


def _unpad(detections: Detections, factors: tuple[float, float]) -> Detections:
    if factors == (1.0, 1.0) or detections.error is not None:
        return detections
    y, x = factors
    boxes = detections.boxes * np.array([y, x, y, x], np.float32)
    return Detections(boxes, detections.scores, detections.classes)


def _stored_png(image: np.ndarray) -> bytes:
    # The bytes never leave the process: stored, unfiltered PNG (about 20x faster than zlib
    # level 1 on a noisy 1920x1080 image, for 1.4x the bytes).
    return encode_png(image, compression=0)


def tf_example_bytes(image: np.ndarray) -> bytes:
    """A serialized ``tf.train.Example`` of an RGB uint8 image, with the features the OD API's
    ``TfExampleDecoder`` reads: ``image/encoded`` (PNG), ``image/format``, ``image/height``,
    ``image/width``."""
    import tensorflow as tf

    def feature(value: Any) -> Any:
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": feature(_stored_png(image)),
        "image/format": feature(b"png"),
        "image/height": feature(int(image.shape[0])),
        "image/width": feature(int(image.shape[1])),
    }))
    return example.SerializeToString()


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


def _op_types(function: Any) -> set[str]:
    graph_def = function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for library_function in graph_def.library.function:  # map_fn bodies, nested tf.functions
        types.update(node.op for node in library_function.node_def)
    return types


class DetectorModel:
    """A loaded OD API or Model Garden SavedModel: its ``serving_default`` signature, how to
    feed it and how to read its boxes.

    Attributes:
        input_key: the signature's input name (``input_tensor``; ``inputs`` for TF1 and Model
            Garden exports).
        input_type: the OD API ``--input_type`` whose feed this signature takes (``INPUT_TYPES``).
        batchable: whether the batch dimension is free (same-size images share one call).
        family: ``OD_API``, or ``MODEL_GARDEN`` when the signature has an ``image_info`` output.
        box_format: the box convention read (``transforms.box_formats``); with ``auto``, the
            family's default until ``prove_box_format`` runs the probe.
    """

    def __init__(self, path: str, *, box_format: str = AUTO):
        import tensorflow as tf

        # Keep the loaded object alive: the signature's variables belong to it.
        self._loaded = tf.saved_model.load(path)
        signatures = getattr(self._loaded, "signatures", {})
        if SIGNATURE_NAME not in signatures:
            raise ValueError(
                f"{path} has no '{SIGNATURE_NAME}' signature (found {sorted(signatures)}); "
                "export it with the TF Object Detection API exporter")
        self._fn = signatures[SIGNATURE_NAME]
        try:
            self.input = recognise_input(self._fn.structured_input_signature[1],
                                         lambda: _op_types(self._fn))
        except ValueError as exc:
            raise ValueError(f"{path}: '{SIGNATURE_NAME}' {exc}") from None
        self.input_key = self.input.key
        self.input_type = self.input.input_type
        self.batchable = self.input.batchable
        missing = [k for k in OD_API_OUTPUT_KEYS if k not in self._fn.structured_outputs]
        if missing:
            raise ValueError(f"{path}: '{SIGNATURE_NAME}' lacks outputs {missing}; "
                             f"an OD API detector returns {list(OD_API_OUTPUT_KEYS)}")
        self._tf = tf
        has_image_info = IMAGE_INFO_KEY in self._fn.structured_outputs
        self.family = MODEL_GARDEN if has_image_info else OD_API
        if box_format == IMAGE_INFO and not has_image_info:
            raise ValueError(f"{path}: --detector_box_format=image_info, but '{SIGNATURE_NAME}' "
                             "has no image_info output to map boxes with")
        self._requested = box_format
        if box_format == AUTO:  # until the probe says otherwise: the exporter's default
            box_format = IMAGE_INFO if has_image_info else NORMALIZED
            self.box_format_how = "the exporter's default, not probed"
        else:
            self.box_format_how = "stated"
        self.box_format = box_format

    def describe(self) -> str:
        """One line: the family and input type recognised, its dtype, shape and name, the
        feed, and the box convention with how it was decided."""
        return (f"{self.input.describe(self.family)}; {describe_box_format(self.box_format)} "
                f"({self.box_format_how})")

    def prove_box_format(self) -> str:
        """Runs the probe image and decides (``auto``) or checks (a stated convention) how the
        boxes are expressed; sets and returns ``box_format``.

        A probe that gives no boxes (or whose call fails) cannot refuse: the family's default
        or the stated convention stays, and the run-time check guards every image.

        Raises:
            ValueError: one line naming what the probe saw and the flag that overrides it.
        """
        image = probe_image()
        try:
            outputs = self._call([image], with_image_info=self.family == MODEL_GARDEN)
            boxes = parse_detections(outputs, 0).boxes
            info = outputs[IMAGE_INFO_KEY][0] if IMAGE_INFO_KEY in outputs else None
        except Exception:  # noqa: BLE001  # pylint: disable=broad-except
            boxes, info = None, None
        self.box_format, self.box_format_how = decide_box_format(
            self._requested, has_image_info=self.family == MODEL_GARDEN, boxes=boxes,
            height=image.shape[0], width=image.shape[1], image_info=info)
        return self.box_format

    def _feed(self, images: Sequence[np.ndarray]) -> Any:
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} "
                                 f"{list(image.shape)}")
        if self.input_type == IMAGE_TENSOR:
            return self._tf.constant(np.stack(images))
        if self.input_type == FLOAT_IMAGE_TENSOR:
            return self._tf.constant(np.stack(images).astype(np.float32))  # 0..255, as exported
        encode = _stored_png if self.input_type == ENCODED_IMAGE_STRING_TENSOR else tf_example_bytes
        return self._tf.constant([encode(image) for image in images], dtype=self._tf.string)

    def _call(self, images: Sequence[np.ndarray], *,
              with_image_info: bool = False) -> dict[str, np.ndarray]:
        outputs = self._fn(**{self.input_key: self._feed(images)})
        # Masks, keypoints and raw detections can be large: only what is read leaves TF.
        keys = (*_READ_KEYS, IMAGE_INFO_KEY) if (
            with_image_info or self.box_format == IMAGE_INFO) else _READ_KEYS
        return {key: outputs[key].numpy() for key in keys if key in outputs}

    def _read(self, outputs: Mapping[str, np.ndarray], index: int,
              image: np.ndarray) -> Detections:
        """Entry ``index`` with its boxes normalized to ``image``; an error when they are
        outside the range of the convention read (never dropped in silence)."""
        found = parse_detections(outputs, index)
        height, width = image.shape[:2]
        info = outputs[IMAGE_INFO_KEY][index] if self.box_format == IMAGE_INFO else None
        problem = box_range_problem(found.boxes, self.box_format, height, width, info)
        if problem is not None:
            return Detections.failed(short_message(
                f"{problem} (boxes read as {self.box_format}; --detector_box_format states "
                "the convention)"))
        return dataclasses.replace(
            found, boxes=to_normalized(found.boxes, self.box_format, height, width, info))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detects objects in each RGB uint8 image; a failing image gets an error, not a raise.

        Boxes are normalized to each image's own size, from the convention ``box_format``; an
        image whose boxes are outside that convention's range gets an error. Same-size images
        share one call when the batch dimension is free; otherwise each image is its own call.
        Images with a side under ``MIN_DETECTOR_SIDE`` are padded for the call
        (``pad_for_detector``).
        """
        padded = [pad_for_detector(image) for image in images]
        results = self._detect([image for image, _ in padded])
        return [_unpad(found, factors) for found, (_, factors) in zip(results, padded)]

    def _detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if self.batchable and len(images) > 1 and len({im.shape for im in images}) == 1:
            try:
                outputs = self._call(images)
                return [self._read(outputs, i, image) for i, image in enumerate(images)]
            except Exception:  # noqa: BLE001, S110  # pylint: disable=broad-except
                pass  # fall back to one call per image, so only the bad image fails
        results = []
        for image in images:
            try:
                results.append(self._read(self._call([image]), 0, image))
            except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except
                results.append(Detections.failed(short_message(f"{type(exc).__name__}: {exc}")))
        return results

    def detect_tiled(self, image: np.ndarray, tiling: Any) -> Detections:
        """Detects objects in overlapping tiles of one image and merges them
        (``transforms.tiles.detect_tiled``); a method so that it also works through the proxy
        Beam uses for ``--model_copies``."""
        from transforms.tiles import detect_tiled

        return detect_tiled(self, image, tiling)


class ObjectDetectionModelHandler(ModelHandler[DecodedImage, PredictionResult, DetectorModel]):
    """Loads an OD API SavedModel once per worker process and detects objects per image.

    Images differ in size, so a batch is only stacked into one call when the model accepts a
    batch dimension and the images share a shape; otherwise each image is its own call.
    """

    def __init__(self, model_path: str, *, max_batch_size: int = DEFAULT_DETECTOR_BATCH,
                 model_copies: int | None = None, tiling: Any = None,
                 box_format: str = AUTO):
        # Fixed batches: Beam's adaptive batching would fit a regression on every batch, and a
        # batch here is only a handful of images (same-size ones share a call when they can).
        super().__init__(min_batch_size=max_batch_size, max_batch_size=max_batch_size,
                         model_copies=model_copies)
        self._model_path = model_path
        # Validation passes the convention it proved, so workers need no probe of their own.
        self._box_format = box_format
        self._tiling = tiling if tiling is not None and tiling.tile_size > 0 else None

    def load_model(self) -> DetectorModel:
        configure_tensorflow()
        model = DetectorModel(local_model_path(self._model_path), box_format=self._box_format)
        if self._box_format == AUTO:
            model.prove_box_format()
        return model

    def run_inference(self, batch: Sequence[DecodedImage], model: DetectorModel,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        if self._tiling is not None:
            detections = [model.detect_tiled(image.pixels, self._tiling) for image in batch]
        else:
            detections = model.detect([image.pixels for image in batch])
        return [PredictionResult(image, found, self._model_path)
                for image, found in zip(batch, detections)]

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(image.pixels.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "DetectObjects"
