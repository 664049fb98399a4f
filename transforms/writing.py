"""WriteDetections and WriteImages: records to Parquet, one images row per input path."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Optional

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
    "OUTPUT_NAMES",
    "RUN_RECORD",
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
    "OutputListing",
    "WriteParquetTable",
    "delete_tables",
    "delete_uncommitted",
    "is_job_name",
    "list_output",
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
# What a run writes inside each table folder: Beam's final shards (the default shard template
# of WriteParquetTable's prefix, with a commit's index when it commits in steps) and its sink's
# temporary folders (FileBasedSink); in COMMITS, the commit records and their temporary files.
PART_FILE = re.compile(r"part-(c\d{5}-)?\d{5}-of-\d{5}\.parquet")
COMMIT_PART_FILE = re.compile(r"part-c\d{5}-\d{5}-of-\d{5}\.parquet")
TEMP_FOLDER = re.compile(r"beam-temp-part(-c\d{5})?-[0-9a-f]{32}")
COMMIT_FILE = re.compile(r"commit-\d{5}\.json(\.tmp-[0-9a-f]{8})?")
# Every name this job writes at the top of --output. Everything that deletes in --output
# (delete_tables, delete_uncommitted) deletes only these and, inside the table folders and
# COMMITS, PART_FILE / TEMP_FOLDER / COMMIT_FILE.
OUTPUT_NAMES = (RUN_RECORD, SUCCESS_MARKER, RUN_LOCK, COMMITS, *TABLES)
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


class OutputListing(NamedTuple):
    """What is in an output folder: ``ours`` are paths a run of this job writes (its record,
    its success marker, part files and sink temporary folders in the table folders), ``others``
    everything else there (never deleted). ``parts`` counts the part files among ``ours``."""

    ours: list[str]
    others: list[str]
    parts: int


def is_job_name(relative: str) -> bool:
    """Whether a path relative to --output is one this job writes (see OUTPUT_NAMES)."""
    parts = relative.strip("/").split("/")
    if len(parts) == 1:
        return parts[0] in (RUN_RECORD, SUCCESS_MARKER, RUN_LOCK)
    if parts[0] == COMMITS:
        return len(parts) == 2 and COMMIT_FILE.fullmatch(parts[1]) is not None
    if parts[0] not in TABLES:
        return False
    if len(parts) == 2 and PART_FILE.fullmatch(parts[1]):
        return True
    return TEMP_FOLDER.fullmatch(parts[1]) is not None


def list_output(output: str) -> OutputListing:
    """Lists ``output`` without following links: a link is never one of ours, even when it
    has one of our names, so nothing is ever deleted or written through it."""
    ours: list[str] = []
    others: list[str] = []
    if is_local_path(output):
        root = output.removeprefix("file://")
        if not os.path.isdir(root) or os.path.islink(root):
            return OutputListing([], [], 0)
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name in (*TABLES, COMMITS) and entry.is_dir(follow_symlinks=False):
                for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    relative = f"{entry.name}/{inner.name}"
                    kind_ok = (inner.is_dir(follow_symlinks=False)
                               if TEMP_FOLDER.fullmatch(inner.name)
                               else inner.is_file(follow_symlinks=False))
                    (ours if is_job_name(relative) and kind_ok else others).append(inner.path)
            elif is_job_name(entry.name) and entry.is_file(follow_symlinks=False):
                ours.append(entry.path)
            else:
                others.append(entry.path)
    else:
        prefix = output.rstrip("/") + "/"
        for metadata in FileSystems.match([prefix + "**"])[0].metadata_list:
            relative = metadata.path[len(prefix):]
            (ours if is_job_name(relative) else others).append(metadata.path)
    parts = sum(1 for path in ours if PART_FILE.fullmatch(path.rstrip("/").rsplit("/", 1)[-1]))
    return OutputListing(ours, others, parts)


def delete_tables(output: str) -> list[str]:
    """Deletes what a run of this job wrote in ``output``: the run record first (so an
    interrupted delete never leaves a folder that looks complete), the success marker, then
    the part files and temporary folders of the tables; a table folder left empty goes too.
    Nothing else is touched. Returns the paths left alone (``OutputListing.others``)."""
    listing = list_output(output)
    first = sorted(listing.ours, key=lambda path: not path.endswith("/" + RUN_RECORD))
    local = is_local_path(output)
    for path in first:
        if local and os.path.isdir(path):
            shutil.rmtree(path)  # a sink's temporary folder; rmtree does not follow links
        elif local:
            os.remove(path)
        else:
            FileSystems.delete([path])
    if local:
        root = output.removeprefix("file://")
        for table in (*TABLES, COMMITS):
            folder = os.path.join(root, table)
            if os.path.isdir(folder) and not os.path.islink(folder) and not os.listdir(folder):
                os.rmdir(folder)
    return listing.others


def write_success_marker(output: str) -> None:
    """Marks ``output`` as holding the complete tables of a finished run."""
    with FileSystems.create(FileSystems.join(output, SUCCESS_MARKER)) as handle:
        handle.write(b"complete\n")  # not empty: S3 refuses an upload with no parts


def delete_uncommitted(output: str, committed: Iterable[str]) -> list[str]:
    """Deletes what an interrupted commit left in the tables of ``output``: commit part files
    that no commit record lists (``committed``: their paths relative to ``output``, e.g.
    ``images/part-c00003-00000-of-00001.parquet``) and Beam's temporary folders, found by
    ``list_output`` (links never followed). Nothing else is touched. Returns the relative
    paths deleted."""
    keep = set(committed)
    local = is_local_path(output)
    prefix = (output.removeprefix("file://") if local else output).rstrip("/") + "/"
    deleted = []
    for path in list_output(output).ours:
        relative = path[len(prefix):] if path.startswith(prefix) else path
        table, _, name = relative.partition("/")
        if table not in TABLES or relative in keep:
            continue
        if TEMP_FOLDER.fullmatch(name.split("/", 1)[0]):  # object stores: its objects
            if local:
                shutil.rmtree(path, ignore_errors=True)
            else:
                FileSystems.delete([path])
        elif COMMIT_PART_FILE.fullmatch(name):
            FileSystems.delete([path])
        else:
            continue
        deleted.append(relative)
    return deleted
