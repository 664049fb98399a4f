"""WriteDetections and WriteImages: records to Parquet, one images row per input path."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult

from transforms.model_files import is_local_path
from transforms.records import (
    DETECTIONS_SCHEMA,
    IMAGES_SCHEMA,
    METRICS_NAMESPACE,
    STATUS_ERROR,
    STATUS_OK,
    DetectionRow,
    ImageRow,
)

__all__ = [
    "CLASSIFY_FAILED_TAG",
    "SUCCESS_MARKER",
    "TABLES",
    "AccountImages",
    "CountDetectionRows",
    "CountImageRows",
    "ToDetectionRowsFn",
    "WriteParquetTable",
    "delete_tables",
    "finalize_image_row",
    "write_success_marker",
]

CLASSIFY_FAILED_TAG = "classify_failed"
PARQUET_CODEC = "zstd"
TABLES = ("detections", "images")
# Written into --output after both tables are final; its absence means the run did not finish.
SUCCESS_MARKER = "_SUCCESS"
# The run record (beam_pipeline.runs): written after _SUCCESS, the run's very last act.
RUN_RECORD = "run.json"


class ToDetectionRowsFn(beam.DoFn):
    """Joins a region with its classification into a DetectionRow; failures go to
    ``classify_failed`` as ``(image_path, error)``."""

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
        region, answer = result.example, result.inference
        if answer is None:  # a detector class the classifier is not asked about
            self._not_classified.inc()
            yield self._row(region, class_id=-1, label="", confidence=float("nan"),
                            classified=False)
            return
        if answer.error is not None or not 0 <= answer.class_id < len(self._labels):
            self._failed.inc()
            error = answer.error or f"class index {answer.class_id} has no label"
            yield beam.pvalue.TaggedOutput(CLASSIFY_FAILED_TAG, (region.image_path, error))
            return
        self._classified.inc()
        yield self._row(region, class_id=answer.class_id, label=self._labels[answer.class_id],
                        confidence=answer.confidence, classified=True)

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


def finalize_image_row(rows: Iterable[ImageRow], classify_errors: Iterable[str]) -> ImageRow:
    """The final images row for one path: its row from CropRegions, turned into a
    ``classify`` error if any of its regions failed classification."""
    row = next(iter(rows))
    errors = list(classify_errors)
    if row.status != STATUS_OK or not errors:
        return row
    return dataclasses.replace(
        row, status=STATUS_ERROR, error_stage="classify",
        error=f"{len(errors)} of {row.num_detections} regions failed: {errors[0]}"[:1000],
        num_detections=row.num_detections - len(errors))


class AccountImages(beam.PTransform):
    """Builds the images table: failed rows pass through, rows of detected images wait for
    their regions' classification outcome (a keyed join on the image path)."""

    def __init__(self, failed_rows: list[beam.PCollection]):
        super().__init__()
        self._failed_rows = failed_rows

    def expand(self, pcolls):
        detected_rows, classify_failed = pcolls
        joined = (
            {
                "rows": detected_rows | "KeyRows" >> beam.Map(lambda row: (row.image_path, row)),
                "errors": classify_failed,
            }
            | "JoinOutcomes" >> beam.CoGroupByKey()
            | "FinalRow" >> beam.MapTuple(
                lambda _, grouped: finalize_image_row(grouped["rows"], grouped["errors"])))
        return (tuple(self._failed_rows) + (joined,)) | "AllImageRows" >> beam.Flatten()


class WriteParquetTable(beam.PTransform):
    """Writes dict rows as a compressed Parquet dataset ``OUTPUT/<table>/part-*.parquet``."""

    def __init__(self, output: str, table: str, *, num_shards: int = 0):
        super().__init__()
        self._prefix = FileSystems.join(output, table, "part")
        self._schema = {"detections": DETECTIONS_SCHEMA, "images": IMAGES_SCHEMA}[table]
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            self._prefix, self._schema, codec=PARQUET_CODEC, file_name_suffix=".parquet",
            num_shards=self._num_shards)


class CountImageRows(beam.CombineFn):
    """Counts of the images table for the run record: rows, ok, errors by stage."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, counts: dict[str, int], row: Mapping) -> dict[str, int]:
        counts["images"] = counts.get("images", 0) + 1
        key = "ok" if row["status"] == STATUS_OK else f"error_{row['error_stage']}"
        counts[key] = counts.get(key, 0) + 1
        return counts

    def merge_accumulators(self, accumulators: Iterable[dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for counts in accumulators:
            for key, value in counts.items():
                merged[key] = merged.get(key, 0) + value
        return merged

    def extract_output(self, counts: dict[str, int]) -> dict[str, int]:
        return counts


class CountDetectionRows(CountImageRows):
    """Counts of the detections table: rows, and rows the classifier labelled."""

    def add_input(self, counts: dict[str, int], row: Mapping) -> dict[str, int]:
        counts["regions"] = counts.get("regions", 0) + 1
        if row["classified"]:
            counts["classified"] = counts.get("classified", 0) + 1
        return counts


def delete_tables(output: str) -> None:
    """Deletes the run record, the success marker and the tables (final files and any
    temporary files) of a run in ``output``; what is not there is skipped. The record goes
    first, so an interrupted delete never leaves a folder that looks complete."""
    for name in (RUN_RECORD, SUCCESS_MARKER):
        marker = FileSystems.join(output, name)
        if FileSystems.exists(marker):
            FileSystems.delete([marker])
    for table in TABLES:
        folder = FileSystems.join(output, table)
        if is_local_path(output):
            if FileSystems.exists(folder):
                FileSystems.delete([folder])
            continue
        # Object stores have no folders: delete every object under the prefix.
        found = [m.path for m in FileSystems.match([folder + "/**"])[0].metadata_list]
        if found:
            FileSystems.delete(found)


def write_success_marker(output: str) -> None:
    """Marks ``output`` as holding the complete tables of a finished run."""
    with FileSystems.create(FileSystems.join(output, SUCCESS_MARKER)) as handle:
        handle.write(b"complete\n")  # not empty: S3 refuses an upload with no parts
