"""DetectObjects: a RunInference ModelHandler for TF2 Object Detection API SavedModels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.model_files import local_model_path
from transforms.records import DecodedImage, Detections
from transforms.tf_runtime import configure_tensorflow

__all__ = [
    "OD_API_OUTPUT_KEYS",
    "DetectorModel",
    "ObjectDetectionModelHandler",
    "parse_detections",
]

SIGNATURE_NAME = "serving_default"
# num_detections is optional: without it every returned entry counts.
OD_API_OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes")
# Decoded images held per detector batch; only same-size images of a batchable model share a call.
DEFAULT_DETECTOR_BATCH = 4


def parse_detections(outputs: dict[str, Any], index: int) -> Detections:
    """Takes entry ``index`` of a batch of OD API outputs, keeping only the first
    ``num_detections`` rows; extra output keys are ignored.

    Values are passed on as the model gave them (NaN scores and boxes are dropped and counted
    by ``select_regions``); a non-finite class id becomes 0. Raises ValueError when the boxes
    are not ``[N, 4]``, which fails this image at the ``detect`` stage.
    """
    boxes = np.asarray(outputs["detection_boxes"][index], dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"detection_boxes has shape {list(boxes.shape)} per image; an OD API "
                         "detector returns [N, 4] (ymin, xmin, ymax, xmax)")
    scores = np.asarray(outputs["detection_scores"][index], dtype=np.float32).reshape(-1)
    classes = np.asarray(outputs["detection_classes"][index], dtype=np.float32).reshape(-1)
    count = min(len(boxes), len(scores), len(classes))
    if "num_detections" in outputs:
        declared = float(np.asarray(outputs["num_detections"]).reshape(-1)[index])
        if np.isfinite(declared):
            count = min(count, max(int(declared), 0))
    classes = classes[:count]
    classes = np.where(np.isfinite(classes) & (np.abs(classes) < 2**31 - 1), classes, 0.0)
    return Detections(boxes[:count], scores[:count], np.rint(classes).astype(np.int32))


class DetectorModel:
    """A loaded OD API SavedModel: its ``serving_default`` signature and how to feed it."""

    def __init__(self, path: str):
        import tensorflow as tf

        # Keep the loaded object alive: the signature's variables belong to it.
        self._loaded = tf.saved_model.load(path)
        signatures = getattr(self._loaded, "signatures", {})
        if SIGNATURE_NAME not in signatures:
            raise ValueError(
                f"{path} has no '{SIGNATURE_NAME}' signature (found {sorted(signatures)}); "
                "export it with the TF Object Detection API exporter")
        self._fn = signatures[SIGNATURE_NAME]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"{path}: '{SIGNATURE_NAME}' takes {sorted(inputs)}; "
                             "expected exactly one uint8 image tensor (input_tensor)")
        (self.input_key, spec), = inputs.items()
        if spec.dtype != tf.uint8 or spec.shape.rank != 4 or spec.shape[3] not in (3, None):
            raise ValueError(f"{path}: input '{self.input_key}' is {spec.dtype.name} "
                             f"{spec.shape}; expected uint8 [batch, height, width, 3]")
        self.batchable = spec.shape[0] is None
        missing = [k for k in OD_API_OUTPUT_KEYS if k not in self._fn.structured_outputs]
        if missing:
            raise ValueError(f"{path}: '{SIGNATURE_NAME}' lacks outputs {missing}; "
                             f"an OD API detector returns {list(OD_API_OUTPUT_KEYS)}")
        self._tf = tf

    def _call(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._fn(**{self.input_key: self._tf.constant(batch)})
        return {key: value.numpy() for key, value in outputs.items()}

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detects objects in each RGB uint8 image; a failing image gets an error, not a raise."""
        if self.batchable and len(images) > 1 and len({im.shape for im in images}) == 1:
            try:
                outputs = self._call(np.stack(images))
                return [parse_detections(outputs, i) for i in range(len(images))]
            except Exception:  # pylint: disable=broad-except
                pass  # fall back to one call per image, so only the bad image fails
        results = []
        for image in images:
            try:
                results.append(parse_detections(self._call(image[np.newaxis]), 0))
            except Exception as exc:  # pylint: disable=broad-except
                results.append(Detections.failed(f"{type(exc).__name__}: {exc}"[:500]))
        return results


class ObjectDetectionModelHandler(ModelHandler[DecodedImage, PredictionResult, DetectorModel]):
    """Loads an OD API SavedModel once per worker process and detects objects per image.

    Images differ in size, so a batch is only stacked into one call when the model accepts a
    batch dimension and the images share a shape; otherwise each image is its own call.
    """

    def __init__(self, model_path: str, *, max_batch_size: int = DEFAULT_DETECTOR_BATCH,
                 model_copies: Optional[int] = None):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size,
                         model_copies=model_copies)
        self._model_path = model_path

    def load_model(self) -> DetectorModel:
        configure_tensorflow()
        return DetectorModel(local_model_path(self._model_path))

    def run_inference(self, batch: Sequence[DecodedImage], model: DetectorModel,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        detections = model.detect([image.pixels for image in batch])
        return [PredictionResult(image, found, self._model_path)
                for image, found in zip(batch, detections)]

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(image.pixels.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "DetectObjects"
