"""ToRows: each classified image to its detections rows and its final images row; a failed
classifier batch to its images' error rows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Optional

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult

from transforms.records import (
    METRICS_NAMESPACE,
    STATUS_ERROR,
    STATUS_OK,
    DetectionRow,
    ErrorStage,
    ImageRegions,
    ImageRow,
    short_message,
)
from transforms.regions import IMAGES_TAG  # final images rows, as CropRegions' second output

__all__ = ["FAILED_REGIONS_TAG", "ToRowsFn", "failed_batch_rows", "image_row"]

# How many regions of an image failed classification (rare: only failures are counted).
FAILED_REGIONS_TAG = "failed_regions"


class ToRowsFn(beam.DoFn):
    """One classified image to its detections rows (the main output: one list of row dicts
    per image) and its final images row (``images``). Regions whose classification failed
    get no detections row; their count goes to ``failed_regions`` and their image becomes a
    ``classify`` error."""

    def __init__(self, *, labels: list[str], detector_labels: Optional[Mapping[int, str]],
                 detector_model: str, classifier_model: str, run_id: str = "",
                 fingerprint: str = ""):
        self._labels = list(labels)
        self._run = {"run_id": run_id, "fingerprint": fingerprint}
        self._detector_labels = dict(detector_labels or {})
        self._detector_model = detector_model
        self._classifier_model = classifier_model
        self._classified = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "regions_classified")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "regions_failed_classify")
        self._not_classified = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                            "regions_not_classified")

    def process(self, result: PredictionResult) -> Iterator[object]:
        image, answers = result.example, result.inference
        rows, errors, not_classified = [], [], 0
        for region, answer in zip(image.regions, answers):
            if answer is None:  # a detector class the classifier is not asked about
                not_classified += 1
                rows.append(self._row(region, class_id=-1, label="", confidence=float("nan"),
                                      classified=False))
            elif answer.error is not None or not 0 <= answer.class_id < len(self._labels):
                errors.append(answer.error or f"class index {answer.class_id} has no label")
            else:
                rows.append(self._row(region, class_id=answer.class_id,
                                      label=self._labels[answer.class_id],
                                      confidence=answer.confidence, classified=True))
        # Counted once an image, not once a region.
        self._classified.inc(len(rows) - not_classified)
        if not_classified:
            self._not_classified.inc(not_classified)
        if rows:  # one element per image: its rows travel together to the writer
            yield rows
        if errors:
            self._failed.inc(len(errors))
            yield beam.pvalue.TaggedOutput(FAILED_REGIONS_TAG, len(errors))
        yield beam.pvalue.TaggedOutput(IMAGES_TAG, image_row(image, errors))

    def _row(self, region, *, class_id: int, label: str, confidence: float,
             classified: bool) -> dict:
        ymin, xmin, ymax, xmax = region.box
        return DetectionRow(
            image_path=region.image_path, roi_index=region.roi_index,
            box_ymin=ymin, box_xmin=xmin, box_ymax=ymax, box_xmax=xmax,
            detector_class_id=region.detector_class_id,
            detector_label=self._detector_labels.get(region.detector_class_id),
            detector_score=region.detector_score, class_id=class_id, label=label,
            confidence=confidence, detector_model=self._detector_model,
            classifier_model=self._classifier_model, classified=classified,
            **self._run).to_dict()


def image_row(image: ImageRegions, classify_errors: Sequence[str]) -> ImageRow:
    """The final images row of a detected image: ``ok``, or a ``classify`` error naming how
    many of its regions failed and the first reason."""
    regions = len(image.regions)
    if not classify_errors:
        return ImageRow(image_path=image.image_path, status=STATUS_OK, width=image.width,
                        height=image.height, num_detections=regions)
    return ImageRow(
        image_path=image.image_path, status=STATUS_ERROR, width=image.width,
        height=image.height, error_stage=ErrorStage.CLASSIFY.value,
        error=short_message(f"{len(classify_errors)} of {regions} regions failed: "
                            f"{classify_errors[0]}"),
        num_detections=regions - len(classify_errors))


def failed_batch_rows(failed) -> Iterator[object]:
    """A classifier batch that raised: every image in it is a ``classify`` error, with the
    exception's text; its regions are counted on ``failed_regions``."""
    batch, exc = failed
    if isinstance(exc, tuple) and len(exc) >= 2:  # Beam passes (type, repr, traceback)
        message = str(exc[1])
    else:
        message = f"{type(exc).__name__}: {exc}"
    regions = sum(len(image.regions) for image in batch)
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "regions_failed_classify").inc(regions)
    yield beam.pvalue.TaggedOutput(FAILED_REGIONS_TAG, regions)
    for image in batch:
        yield image_row(image, [message] * len(image.regions))
