"""Crop a pixel box out of an image the way the pipeline does, for training and offline checks."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["crop_box"]


def crop_box(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Crop ``box`` = (ymin, xmin, ymax, xmax) in pixels and resize to ``size`` x ``size``.

    The box is clipped to the image; rows floor(ymin)..ceil(ymax), columns floor(xmin)..ceil(xmax)
    (at least one pixel); INTER_AREA when shrinking, INTER_LINEAR when enlarging.
    """
    h, w = image.shape[:2]
    ymin, xmin, ymax, xmax = box
    y0 = min(max(int(math.floor(ymin)), 0), h - 1)
    x0 = min(max(int(math.floor(xmin)), 0), w - 1)
    y1 = max(min(int(math.ceil(ymax)), h), y0 + 1)
    x1 = max(min(int(math.ceil(xmax)), w), x0 + 1)
    crop = image[y0:y1, x0:x1]
    shrinking = crop.shape[0] * crop.shape[1] > size * size
    return cv2.resize(crop, (size, size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
