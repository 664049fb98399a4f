"""Detector feeds: images padded to a detector's smallest side, as the tensor its input takes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transforms.decoding import encode_png
from transforms.detector_signature import (
    ENCODED_IMAGE_STRING_TENSOR,
    FLOAT_IMAGE_TENSOR,
    IMAGE_TENSOR,
)
from transforms.records import Detections

__all__ = ["MIN_DETECTOR_SIDE", "feed", "pad_for_detector", "tf_example_bytes", "unpad"]

# Detectors that pad to a stride fail on smaller images (the bundled one: MirrorPad on a 1x1
# or 9x17 image). A side under this is padded with black pixels, at the bottom and right, for
# the detector only; its boxes are mapped back to the image (and clipped to it later).
MIN_DETECTOR_SIDE = 32


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


def unpad(detections: Detections, factors: tuple[float, float]) -> Detections:
    """Boxes of a padded image (``pad_for_detector``) normalized to the image itself."""
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


def feed(input_type: str, images: Sequence[np.ndarray], tf: Any) -> Any:
    """The tensor a signature of ``input_type`` takes for ``images`` (RGB uint8 ``[H, W, 3]``,
    all one size when more than one); ValueError for another kind of array."""
    for image in images:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} "
                             f"{list(image.shape)}")
    if input_type == IMAGE_TENSOR:
        return tf.constant(np.stack(images))
    if input_type == FLOAT_IMAGE_TENSOR:
        return tf.constant(np.stack(images).astype(np.float32))  # 0..255, as exported
    encode = _stored_png if input_type == ENCODED_IMAGE_STRING_TENSOR else tf_example_bytes
    return tf.constant([encode(image) for image in images], dtype=tf.string)
