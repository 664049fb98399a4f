"""WriteDetections and WriteImages: records to Parquet, one images row per input path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from transforms.model_files import is_local_path
from transforms.records import (
    DETECTIONS_SCHEMA,
    IMAGES_SCHEMA,
    METRICS_NAMESPACE,
    STATUS_ERROR,
    STATUS_OK,
    DetectionRow,
    ImageRegions,
    ImageRow,
)
from transforms.regions import IMAGES_TAG  # final images rows, as CropRegions' second output

__all__ = [
    "FAILED_REGIONS_TAG",
    "SUCCESS_MARKER",
    "TABLES",
    "COMMITS",
    "COMMIT_PART_PREFIX",
    "COMMIT_RECORD",
    "RUN_LOCK",
    "CountDetectionRows",
    "CountImageRows",
    "RowsToTablesFn",
    "ToRowsFn",
    "WriteParquetTable",
    "delete_tables",
    "delete_uncommitted",
    "failed_batch_rows",
    "image_row",
    "write_success_marker",
]

# How many regions of an image failed classification (rare: only failures are counted).
FAILED_REGIONS_TAG = "failed_regions"
PARQUET_CODEC = "zstd"
TABLES = ("detections", "images")
# Written into --output after both tables are final; its absence means the run did not finish.
SUCCESS_MARKER = "_SUCCESS"
# The run record (beam_pipeline.runs): written after _SUCCESS, the run's very last act.
RUN_RECORD = "run.json"
# Committed progress (beam_pipeline.commits): each commit's final part files in the tables are
# named COMMIT_PART_PREFIX + its 5-digit index (``images/part-c00003-00000-of-00001.parquet``),
# its record is ``COMMITS/commit-00003.json`` (written last, by temp + rename: a commit without
# its record is absent), and RUN_LOCK (pid and host of the run writing the folder) keeps a
# second run of the same command out while one is running.
COMMITS = "_commits"
COMMIT_RECORD = "commit-{index:05d}.json"
COMMIT_PART_PREFIX = "part-c"
RUN_LOCK = "_run.lock"
# Beam's file sinks write into TABLE/beam-temp-<prefix>-<uuid>/ and rename into place.
BEAM_TEMP_PREFIX = "beam-temp-"
# Rows per Arrow table, and so per Parquet row group at most.
ROWS_PER_ROW_GROUP = 10_000


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
        height=image.height, error_stage="classify",
        error=f"{len(classify_errors)} of {regions} regions failed: {classify_errors[0]}"[:1000],
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
        yield image_row(image, [message[:500]] * len(image.regions))


class RowsToTablesFn(beam.DoFn):
    """Dict rows (or lists of them) to ``pyarrow.Table``s of up to ``rows_per_table`` rows,
    one per bundle at least: Arrow converts a list of rows in C++, where ``WriteToParquet``'s
    own buffering visits every column of every row in Python (about 60 us a row). Each table
    becomes one row group of the Parquet file."""

    def __init__(self, schema: pa.Schema, rows_per_table: int = ROWS_PER_ROW_GROUP):
        self._schema = schema
        self._rows_per_table = rows_per_table
        self._rows: list = []

    def start_bundle(self) -> None:
        self._rows = []

    def process(self, rows: Mapping | list[Mapping]) -> Iterator[pa.Table]:
        if isinstance(rows, list):  # the rows of one image
            self._rows.extend(rows)
        else:
            self._rows.append(rows)
        if len(self._rows) >= self._rows_per_table:
            yield self._table()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._rows:  # a batch job: everything is in the global window
            yield GlobalWindows.windowed_value_at_end_of_window(self._table())

    def _table(self) -> pa.Table:
        rows, self._rows = self._rows, []
        return pa.Table.from_pylist(rows, schema=self._schema)


class WriteParquetTable(beam.PTransform):
    """Writes dict rows (or lists of them) as a compressed Parquet dataset
    ``OUTPUT/<table>/part-*.parquet`` (``part_prefix``: a commit's ``part-c00003-*``).

    Returns ``{"tables": ..., "files": ...}``: the Arrow tables written (the run's counts are
    taken from them, one element per table rather than per row) and the final file names,
    emitted only once the files are renamed into place.
    """

    def __init__(self, output: str, table: str, *, num_shards: int = 0,
                 part_prefix: str = "part"):
        super().__init__()
        self._prefix = FileSystems.join(output, table, part_prefix)
        self._schema = {"detections": DETECTIONS_SCHEMA, "images": IMAGES_SCHEMA}[table]
        self._num_shards = num_shards

    def expand(self, rows):
        tables = rows | "ToArrow" >> beam.ParDo(RowsToTablesFn(self._schema))
        files = tables | "Write" >> beam.io.WriteToParquetBatched(
            self._prefix, self._schema, codec=PARQUET_CODEC, file_name_suffix=".parquet",
            num_shards=self._num_shards)
        return {"tables": tables, "files": files}


class _SumCounts(beam.CombineFn):
    """Adds up dicts of counts; ``counts(table)`` says what one Arrow table adds."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, counts: dict[str, int], table: pa.Table) -> dict[str, int]:
        for key, value in self.counts(table).items():
            counts[key] = counts.get(key, 0) + value
        return counts

    def merge_accumulators(self, accumulators: Iterable[dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for counts in accumulators:
            for key, value in counts.items():
                merged[key] = merged.get(key, 0) + value
        return merged

    def extract_output(self, counts: dict[str, int]) -> dict[str, int]:
        return counts

    def counts(self, table: pa.Table) -> dict[str, int]:
        raise NotImplementedError


class CountImageRows(_SumCounts):
    """Counts of the images table for the run record: rows, ok, errors by stage."""

    def counts(self, table: pa.Table) -> dict[str, int]:
        counts = {"images": table.num_rows}
        statuses = table.column("status").to_pylist()
        stages = table.column("error_stage").to_pylist()
        for status, stage in zip(statuses, stages):
            key = "ok" if status == STATUS_OK else f"error_{stage}"
            counts[key] = counts.get(key, 0) + 1
        return counts


class CountDetectionRows(_SumCounts):
    """Counts of the detections table: rows, and rows the classifier labelled."""

    def counts(self, table: pa.Table) -> dict[str, int]:
        classified = pc.sum(table.column("classified")).as_py() or 0
        return {"regions": table.num_rows, "classified": int(classified)}


def delete_tables(output: str) -> None:
    """Deletes the run record, the success marker and the tables (final files and any
    temporary files) of a run in ``output``; what is not there is skipped. The record goes
    first, so an interrupted delete never leaves a folder that looks complete."""
    for name in (RUN_RECORD, SUCCESS_MARKER):
        marker = FileSystems.join(output, name)
        if FileSystems.exists(marker):
            FileSystems.delete([marker])
    commits = FileSystems.join(output, COMMITS)
    for table in (*TABLES, COMMITS):
        folder = FileSystems.join(output, table)
        if folder == commits and is_local_path(output):
            if FileSystems.exists(folder):
                FileSystems.delete([folder])
            continue
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


def delete_uncommitted(output: str, committed: Iterable[str]) -> list[str]:
    """Deletes what an interrupted commit left in the tables of ``output``: commit part files
    (``COMMIT_PART_PREFIX``) that no commit record lists (``committed``: their paths relative
    to ``output``, e.g. ``images/part-c00003-00000-of-00001.parquet``) and Beam's temporary
    folders. Other files are left alone. Returns the relative paths deleted."""
    keep = set(committed)
    deleted = []
    for table in TABLES:
        folder = FileSystems.join(output, table)
        if is_local_path(output):
            local = folder.removeprefix("file://")
            names = sorted(os.listdir(local)) if os.path.isdir(local) else []
            found = [(name, os.path.join(local, name)) for name in names]
        else:  # object stores: every object under the prefix
            found = [(m.path[len(folder):].lstrip("/"), m.path)
                     for m in FileSystems.match([folder + "/**"])[0].metadata_list]
        for name, path in found:
            if name.startswith(BEAM_TEMP_PREFIX) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif (name.startswith(COMMIT_PART_PREFIX) or name.startswith(BEAM_TEMP_PREFIX)) \
                    and f"{table}/{name}" not in keep:
                FileSystems.delete([path])
            else:
                continue
            deleted.append(f"{table}/{name}")
    return deleted
