"""DetectObjects: a RunInference ModelHandler for TF Object Detection API and TF Model Garden
detection SavedModels.

Every input type of their exporters is recognised from the ``serving_default`` signature
(``transforms.detector_signature``) and fed what it expects (``transforms.detector_feeds``;
docs/detector-exports.md): uint8 or float32 image tensors, encoded image strings and serialized
``tf.train.Example`` protos, with a batch of 1 or a free batch. Boxes are read in the convention
the signature and a probe inference prove (``transforms.detector_model``,
``transforms.box_formats``): normalized, or Model Garden's resized-frame pixels mapped back with
its ``image_info``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms import model_cache
from transforms.box_formats import AUTO
from transforms.detector_feeds import MIN_DETECTOR_SIDE, pad_for_detector, tf_example_bytes
from transforms.detector_model import DetectorModel
from transforms.detector_signature import (
    INPUT_TYPES,
    MODEL_GARDEN,
    OD_API,
    OD_API_OUTPUT_KEYS,
    DetectorInput,
    parse_detections,
    recognise_input,
)
from transforms.model_files import local_model_path
from transforms.records import DecodedImage
from transforms.tf_runtime import configure_tensorflow

# The stage's public names; the detector's parts live in the modules named above.
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

# Decoded images held per detector batch; only same-size images of a batchable model share a call.
DEFAULT_DETECTOR_BATCH = 4


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
        path = local_model_path(self._model_path)
        kept = model_cache.reuse("detector", path, box_format=self._box_format)
        if kept is not None:  # the launcher's checks loaded and proved it in this process
            return kept
        model = DetectorModel(path, box_format=self._box_format)
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
