"""CropRegions: keep confident detections, turn them into clipped pixel boxes and crops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from transforms.boxes import (
    clip_boxes,
    crop_box,
    normalized_to_pixels,
    pad_boxes,
    resize_to,
    valid_boxes,
)
from transforms.records import (
    METRICS_NAMESPACE,
    STATUS_OK,
    Detections,
    ErrorStage,
    ImageRegions,
    ImageRow,
    Region,
)

__all__ = ["IMAGES_TAG", "CropRegionsFn", "select_regions"]

# Final images rows that need no classifier: detection failed, or nothing was kept.
IMAGES_TAG = "images"


def select_regions(detections: Detections, height: int, width: int, *, min_score: float,
                   max_detections: int, padding: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Picks the detections to classify.

    Returns ``(indices, pixel_boxes, dropped)``: indices into ``detections`` of the kept boxes,
    highest score first (at most ``max_detections``), their padded and clipped pixel boxes, and
    how many detections were dropped as degenerate: a NaN or infinite score, or a box above
    ``min_score`` with a NaN or infinite coordinate, inverted, of zero area, or entirely
    outside the image. Boxes partly outside the image are clipped to it.
    """
    scores = np.asarray(detections.scores, dtype=np.float32)
    finite_score = np.isfinite(scores)
    scores = np.where(finite_score, scores, -np.inf)
    confident = np.flatnonzero(scores >= min_score)
    confident = confident[np.argsort(-scores[confident], kind="stable")]
    raw = np.asarray(detections.boxes, dtype=np.float32).reshape(-1, 4)[confident]
    with np.errstate(over="ignore", invalid="ignore"):  # huge boxes overflow, then clip
        boxes = clip_boxes(pad_boxes(normalized_to_pixels(raw, height, width), padding),
                           height, width)
    valid = valid_boxes(boxes) & np.all(np.isfinite(raw), axis=1)
    keep = confident[valid][:max_detections]
    dropped = int(np.count_nonzero(~valid)) + int(np.count_nonzero(~finite_score))
    return keep, boxes[valid][:max_detections], dropped


class CropRegionsFn(beam.DoFn):
    """Turns one image's detections into an ``ImageRegions`` (the main output), or, for an
    image with nothing to classify or whose detection failed, its final ``ImageRow`` on
    ``images``.

    A DoFn rather than a Map: it has two outputs and counts what it keeps and drops.
    """

    def __init__(self, *, min_score: float, max_detections: int, padding: float,
                 crop_height: int, crop_width: int,
                 classify_classes: Optional[frozenset[int]] = None):
        self._classify_classes = classify_classes  # None: every detector class
        self._min_score = min_score
        self._max_detections = max_detections
        self._padding = padding
        self._crop_size = (crop_height, crop_width)
        self._detected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "regions_detected")
        self._kept = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "regions_kept")
        self._degenerate = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                        "regions_dropped_degenerate")
        self._per_image = beam.metrics.Metrics.distribution(METRICS_NAMESPACE,
                                                            "regions_per_image")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_failed_detect")

    def process(self, result: PredictionResult) -> Iterator[object]:
        image, detections = result.example, result.inference
        if detections.error is not None:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(IMAGES_TAG, ImageRow.failed(
                image.path, ErrorStage.DETECT, detections.error, width=image.width,
                height=image.height))
            return
        self._detected.inc(len(detections.scores))
        keep, boxes, dropped = select_regions(
            detections, image.height, image.width, min_score=self._min_score,
            max_detections=self._max_detections, padding=self._padding)
        self._degenerate.inc(dropped)
        self._kept.inc(len(keep))
        self._per_image.update(len(keep))
        if not len(keep):
            yield beam.pvalue.TaggedOutput(IMAGES_TAG, ImageRow(
                image_path=image.path, status=STATUS_OK, width=image.width,
                height=image.height, num_detections=0))
            return
        classes = np.asarray(detections.classes)[keep].tolist()
        scores = np.asarray(detections.scores, dtype=np.float32)[keep].tolist()
        regions = []
        for roi_index, (box, detector_class, score) in enumerate(zip(boxes, classes, scores)):
            classify = self._classify_classes is None or detector_class in self._classify_classes
            regions.append(Region(
                image_path=image.path, roi_index=roi_index, box=tuple(box.tolist()),
                detector_class_id=int(detector_class), detector_score=float(score),
                crop=resize_to(crop_box(image.pixels, box), *self._crop_size)
                if classify else None))
        yield ImageRegions(image.path, image.width, image.height, tuple(regions))
