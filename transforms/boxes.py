"""Box geometry on numpy arrays: the one place boxes are scaled, padded, clipped, compared
(IoU), cropped and resized. Boxes are ``[ymin, xmin, ymax, xmax]``."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "clip_boxes",
    "crop_box",
    "box_areas",
    "intersection_areas",
    "iou_matrix",
    "normalized_to_pixels",
    "pad_boxes",
    "resize_to",
    "valid_boxes",
]


def normalized_to_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scales normalized ``[ymin, xmin, ymax, xmax]`` boxes ``[N, 4]`` to pixel coordinates."""
    scale = np.array([height, width, height, width], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale


def pad_boxes(boxes: np.ndarray, padding: float) -> np.ndarray:
    """Grows each pixel box by ``padding`` times its height/width on each side."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if padding == 0:
        return boxes
    dy = (boxes[:, 2] - boxes[:, 0]) * padding
    dx = (boxes[:, 3] - boxes[:, 1]) * padding
    return np.stack([boxes[:, 0] - dy, boxes[:, 1] - dx, boxes[:, 2] + dy, boxes[:, 3] + dx],
                    axis=1)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clips pixel boxes ``[N, 4]`` to the image; NaN stays NaN (``valid_boxes`` drops it)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    upper = np.array([height, width, height, width], dtype=np.float32)
    return np.minimum(np.maximum(boxes, 0.0), upper)


def valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boolean mask of boxes that are finite and have positive height and width."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.all(np.isfinite(boxes), axis=1)
    with np.errstate(invalid="ignore"):
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return finite & positive


def crop_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Crops a clipped, valid pixel box: rows ``floor(ymin)..ceil(ymax)``, same for columns."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    top, left = int(np.floor(ymin)), int(np.floor(xmin))
    bottom = max(int(np.ceil(ymax)), top + 1)
    right = max(int(np.ceil(xmax)), left + 1)
    return image[top:bottom, left:right]


def resize_to(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes to ``(height, width)``: area averaging when shrinking, bilinear when enlarging."""
    if crop.shape[0] == height and crop.shape[1] == width:
        return np.ascontiguousarray(crop)
    shrinking = crop.shape[0] * crop.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(crop, (width, height), interpolation=interpolation)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of boxes ``[N, 4]`` (``ymin, xmin, ymax, xmax``); inverted sides count as 0."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def intersection_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas of intersection ``[len(a), len(b)]`` of two sets of boxes ``[N, 4]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top = np.maximum(a[:, None, 0], b[None, :, 0])
    left = np.maximum(a[:, None, 1], b[None, :, 1])
    bottom = np.minimum(a[:, None, 2], b[None, :, 2])
    right = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union ``[len(a), len(b)]``; 0 where both boxes are empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter = intersection_areas(a, b)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
