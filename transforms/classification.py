"""ClassifyRegions: a RunInference ModelHandler that classifies crops in compiled batches."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms import model_cache
from transforms.boxes import resize_to
from transforms.model_files import local_model_path
from transforms.records import Classification, ImageRegions
from transforms.tf_runtime import configure_tensorflow

__all__ = [
    "ClassifierModel",
    "KerasClassifierModelHandler",
    "best_classes",
    "crops_in",
    "PREPROCESS_MODES",
    "preprocess",
    "to_probabilities",
]

DEFAULT_CLASSIFIER_BATCH = 64
# uint8 -> float32 as x * scale + offset.
PREPROCESS_MODES: dict[str, tuple[float, float]] = {
    "unit": (1.0 / 255.0, 0.0),
    "raw": (1.0, 0.0),
    "symmetric": (1.0 / 127.5, -1.0),
}


def preprocess(batch: np.ndarray, mode: str) -> np.ndarray:
    """Turns a uint8 batch into float32 in the classifier's input range (``PREPROCESS_MODES``)."""
    try:
        scale, offset = PREPROCESS_MODES[mode]
    except KeyError:
        raise ValueError(
            f"unknown preprocess mode {mode!r}; choose one of {sorted(PREPROCESS_MODES)}") from None
    out = np.asarray(batch, dtype=np.float32) * np.float32(scale)
    if offset:
        out += np.float32(offset)
    return out


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Returns class probabilities: rows that already are (non-negative, summing to 1) pass
    through; anything else is treated as logits and softmaxed."""
    outputs = np.asarray(outputs, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        is_probability = np.all(outputs >= 0, axis=1) & np.isclose(outputs.sum(axis=1), 1.0,
                                                                   atol=1e-3)
    if np.all(is_probability):
        return outputs
    shifted = outputs - np.max(outputs, axis=1, keepdims=True)
    soft = np.exp(shifted)
    soft /= soft.sum(axis=1, keepdims=True)
    return np.where(is_probability[:, None], outputs, soft)


class ClassifierModel:
    """A loaded classifier (``.keras``, ``.h5`` or SavedModel) behind one compiled function."""

    def __init__(self, path: str, *, safe_mode: bool = True):
        import tensorflow as tf

        if os.path.isdir(path) or not path.endswith((".keras", ".h5", ".hdf5")):
            self._owner = tf.saved_model.load(path)
            signatures = getattr(self._owner, "signatures", {})
            if "serving_default" not in signatures:
                raise ValueError(f"{path} has no 'serving_default' signature (found "
                                 f"{sorted(signatures)}); save the classifier as .keras or "
                                 "export it with model.export()")
            signature = signatures["serving_default"]
            inputs = signature.structured_input_signature[1]
            if len(inputs) != 1:
                raise ValueError(f"{path}: 'serving_default' takes {sorted(inputs)}; expected "
                                 "one float32 image batch")
            (input_key, spec), = inputs.items()
            if spec.dtype != tf.float32:
                raise ValueError(f"{path}: input '{input_key}' is {spec.dtype.name}; expected "
                                 "float32 (crops are scaled by --classifier_preprocess)")
            (self._output_key, _), = sorted(signature.structured_outputs.items())[:1]
            shape = spec.shape

            def call(x):
                return signature(**{input_key: x})[self._output_key]
        else:
            import keras

            self._owner = keras.models.load_model(path, compile=False, safe_mode=safe_mode)
            if len(self._owner.inputs) != 1:
                raise ValueError(f"{path}: the model has {len(self._owner.inputs)} inputs; "
                                 "expected one image batch")
            shape = tf.TensorShape(self._owner.inputs[0].shape)

            def call(x):
                return self._owner(x, training=False)
        if shape.rank != 4 or shape[3] not in (1, 3):
            raise ValueError(f"{path}: classifier input is {shape}; expected an image batch "
                             "[batch, height, width, 1 or 3]")
        self.input_height, self.input_width, self.channels = shape[1], shape[2], shape[3]
        # One traced graph for every batch size: no retracing, no model.predict overhead.
        self._fn = tf.function(
            call, input_signature=[tf.TensorSpec([None, shape[1], shape[2], shape[3]],
                                                 tf.float32)])
        output_shape = self._fn.get_concrete_function().structured_outputs.shape
        if output_shape.rank != 2 or output_shape[-1] is None:
            raise ValueError(f"{path}: classifier output is {output_shape}; expected one row of "
                             "class scores per image, [batch, classes]")
        self.num_classes = int(output_shape[-1])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch).numpy()

    def classify(self, crops: Sequence[np.ndarray], preprocess_mode: str) -> np.ndarray:
        """Class probabilities ``[N, classes]`` for uint8 RGB crops, in one compiled call.

        A method rather than handler code, so it also works through the proxy Beam uses when
        one model copy is shared by several processes (``--model_copies``).
        """
        height, width = self.input_height, self.input_width
        batch = np.stack([crop if crop.shape[:2] == (height, width)
                          else resize_to(crop, height, width) for crop in crops])
        if self.channels == 1:
            # ITU-R 601 luma, as cv2.COLOR_RGB2GRAY.
            batch = (batch @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        return to_probabilities(self(preprocess(batch, preprocess_mode)))


def crops_in(image: ImageRegions) -> int:
    """An image's weight in a classifier batch: its crops (at least 1, so that images whose
    regions are all left unclassified still fill batches)."""
    return max(1, sum(region.crop is not None for region in image.regions))


class KerasClassifierModelHandler(ModelHandler[ImageRegions, PredictionResult, ClassifierModel]):
    """Loads a classifier once per worker process and classifies the crops of several images
    in compiled batches of up to ``batch_size`` crops.

    Elements are whole images (``ImageRegions``): Beam's batching weighs each by its crops, so
    a batch holds about ``batch_size`` crops whatever the regions per image. The inference of
    an image is a tuple with one ``Classification`` per region (``None`` for a region without
    a crop). Crops arrive already resized to the model's input size by CropRegions;
    ``preprocess_mode`` maps uint8 to the model's range (``unit``, ``raw`` or ``symmetric``).
    """

    def __init__(self, model_path: str, *, preprocess_mode: str = "unit",
                 batch_size: int = DEFAULT_CLASSIFIER_BATCH, safe_mode: bool = True,
                 model_copies: Optional[int] = None):
        preprocess(np.zeros((1, 1, 1, 3), np.uint8), preprocess_mode)  # rejects a bad mode now
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size,
                         element_size_fn=crops_in, model_copies=model_copies)
        self._model_path = model_path
        self._preprocess_mode = preprocess_mode
        self._safe_mode = safe_mode
        self._batch_size = batch_size

    def load_model(self) -> ClassifierModel:
        configure_tensorflow()
        path = local_model_path(self._model_path)
        kept = model_cache.reuse("classifier", path, safe_mode=self._safe_mode)
        # The launcher's checks loaded it in this process (in process, LOOPBACK workers).
        return kept if kept is not None else ClassifierModel(path, safe_mode=self._safe_mode)

    def run_inference(self, batch: Sequence[ImageRegions], model: ClassifierModel,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        crops = [crop for image in batch for crop in image.crops]
        # One image with more crops than a batch is classified in several calls.
        chunks = [model.classify(crops[start:start + self._batch_size], self._preprocess_mode)
                  for start in range(0, len(crops), self._batch_size)]
        answers = iter(best_classes(np.concatenate(chunks)) if chunks else ())
        return [PredictionResult(image, tuple(None if region.crop is None else next(answers)
                                              for region in image.regions), self._model_path)
                for image in batch]

    def get_num_bytes(self, batch: Sequence[ImageRegions]) -> int:
        return sum(crop.nbytes for image in batch for crop in image.crops)

    def get_metrics_namespace(self) -> str:
        return "ClassifyRegions"


def best_classes(probabilities: np.ndarray) -> list[Classification]:
    """The best class and its probability per row; a row with NaN or inf is an error."""
    finite = np.isfinite(probabilities).all(axis=1).tolist()
    best = np.argmax(probabilities, axis=1)
    confidence = probabilities[np.arange(len(best)), best].tolist()
    return [Classification(class_id, score) if ok else _NOT_FINITE
            for class_id, score, ok in zip(best.tolist(), confidence, finite)]


_NOT_FINITE = Classification(-1, float("nan"), "classifier returned NaN or inf")
