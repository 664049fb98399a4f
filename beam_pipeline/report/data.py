"""Queries on the job's Parquet tables: the latest view of complete runs, totals, errors,
filters, the least and most confident crops, and what changed between two sets of runs.

Everything here works on ``pyarrow`` tables holding only the columns asked for; nothing
imports the Beam graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipeline import runs

__all__ = [
    "Crop",
    "ErrorGroup",
    "Filters",
    "LabelChange",
    "Totals",
    "apply_filters",
    "changed_images",
    "complete_outputs",
    "error_groups",
    "extremes",
    "label_counts",
    "load_view",
    "rows_of_images",
    "to_crops",
    "totals",
]

# A region of a detector class the job does not classify has label "" and confidence NaN.
NOT_CLASSIFIED = "(not classified)"
CROP_COLUMNS = ("image_path", "roi_index", "box_ymin", "box_xmin", "box_ymax", "box_xmax",
                "detector_label", "detector_class_id", "detector_score", "label", "confidence")


@dataclasses.dataclass(frozen=True)
class Filters:
    """What the histograms, galleries and exports show; totals always count everything."""

    labels: frozenset[str] | None = None
    min_confidence: float = 0.0
    max_confidence: float = 1.0


@dataclasses.dataclass(frozen=True)
class Totals:
    """Counts over the latest view of the runs."""

    images: int
    images_ok: int
    errors_by_stage: dict[str, int]
    images_without_regions: int
    regions: int
    regions_per_label: dict[str, int]
    regions_per_detector_class: dict[str, int]


@dataclasses.dataclass(frozen=True)
class ErrorGroup:
    """Images that failed at one stage with one message."""

    stage: str
    message: str
    count: int
    examples: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Crop:
    """One detection row as the report shows it."""

    image_path: str
    roi_index: int
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax in pixels
    detector_label: str
    detector_score: float
    label: str
    confidence: float


@dataclasses.dataclass(frozen=True)
class LabelChange:
    """An image whose set of labels differs between two sets of runs."""

    image_path: str
    labels: tuple[str, ...]
    other_labels: tuple[str, ...]


def complete_outputs(patterns: Sequence[str]) -> list[str]:
    """Output folders matching ``patterns`` whose run record says complete, oldest run first."""
    return [output for output, _ in runs.complete_outputs(patterns)]


def load_view(outputs: Sequence[str], table: str,
              columns: Sequence[str] | None = None) -> pa.Table:
    """Rows of ``table`` ("detections" or "images") from the newest complete run among
    ``outputs`` that holds each image path, reading only ``columns``."""
    return runs.latest_view(list(outputs), table, columns)


def _counts(column: pa.ChunkedArray, null_name: str = "(none)") -> dict[str, int]:
    counts = pc.value_counts(column.fill_null(null_name) if column.null_count else column)
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())
    return dict(sorted(((str(v), int(n)) for v, n in pairs), key=lambda kv: (-kv[1], kv[0])))


def totals(images: pa.Table, detections: pa.Table) -> Totals:
    """Images ok and failed by stage, regions per label and per detector class."""
    ok = pc.equal(images["status"], "ok")
    failed = images.filter(pc.invert(ok))
    detector = detections["detector_label"] if detections.num_rows else pa.chunked_array(
        [], pa.string())
    if detector.null_count:  # no label map: name the class by its id
        detector = pc.if_else(pc.is_null(detector),
                              pc.cast(detections["detector_class_id"], pa.string()), detector)
    return Totals(
        images=images.num_rows,
        images_ok=int(pc.sum(ok).as_py() or 0),
        errors_by_stage=_counts(failed["error_stage"]) if failed.num_rows else {},
        images_without_regions=int(pc.sum(pc.and_(ok, pc.equal(images["num_detections"], 0)))
                                   .as_py() or 0),
        regions=detections.num_rows,
        regions_per_label=_counts(pc.replace_substring_regex(
            detections["label"], "^$", NOT_CLASSIFIED)) if detections.num_rows else {},
        regions_per_detector_class=_counts(detector) if detections.num_rows else {},
    )


def error_groups(images: pa.Table, examples: int = 3) -> list[ErrorGroup]:
    """Failed images grouped by stage and message, the largest group first."""
    failed = images.filter(pc.not_equal(images["status"], "ok"))
    if not failed.num_rows:
        return []
    failed = failed.select(["error_stage", "error", "image_path"]).sort_by("image_path")
    grouped = failed.group_by(["error_stage", "error"], use_threads=False).aggregate(
        [("image_path", "count"), ("image_path", "list")])
    groups = [ErrorGroup(stage or "(none)", message or "(none)", count, tuple(paths[:examples]))
              for stage, message, count, paths in zip(
                  *(grouped[c].to_pylist() for c in
                    ("error_stage", "error", "image_path_count", "image_path_list")))]
    return sorted(groups, key=lambda g: (-g.count, g.stage, g.message))


def apply_filters(detections: pa.Table, filters: Filters) -> pa.Table:
    """Rows with a label in ``filters.labels`` and a confidence in the range (inclusive)."""
    mask = pc.and_(pc.greater_equal(detections["confidence"], filters.min_confidence),
                   pc.less_equal(detections["confidence"], filters.max_confidence))
    if filters.labels is not None:
        mask = pc.and_(mask, pc.is_in(detections["label"],
                                      pa.array(sorted(filters.labels), pa.string())))
    return detections.filter(mask)


def to_crops(rows: pa.Table) -> list[Crop]:
    """Detection rows as ``Crop`` records, in row order."""
    cols = {c: rows[c].to_pylist() for c in CROP_COLUMNS if c in rows.column_names}
    crops = []
    for i in range(rows.num_rows):
        detector = cols["detector_label"][i]
        if detector is None:
            detector = str(cols["detector_class_id"][i])
        crops.append(Crop(cols["image_path"][i], int(cols["roi_index"][i]),
                          tuple(float(cols[k][i]) for k in ("box_ymin", "box_xmin", "box_ymax",
                                                            "box_xmax")),
                          detector, float(cols["detector_score"][i]), cols["label"][i],
                          float(cols["confidence"][i])))
    return crops


def extremes(detections: pa.Table, label: str, n: int) -> tuple[list[Crop], list[Crop]]:
    """The ``n`` least and ``n`` most confident rows of ``label`` (least first, most first)."""
    rows = detections.filter(pc.equal(detections["label"], label))
    if not rows.num_rows or n <= 0:
        return [], []
    keys = [("image_path", "ascending"), ("roi_index", "ascending")]
    low = pc.select_k_unstable(rows, n, [("confidence", "ascending")])
    high = pc.select_k_unstable(rows, n, [("confidence", "descending")])
    least = rows.take(low).sort_by([("confidence", "ascending"), *keys])
    most = rows.take(high).sort_by([("confidence", "descending"), *keys])
    return to_crops(least), to_crops(most)


def rows_of_images(detections: pa.Table, paths: Sequence[str]) -> pa.Table:
    """All detection rows of ``paths``, by image then region."""
    rows = detections.filter(pc.is_in(detections["image_path"], pa.array(list(paths),
                                                                            pa.string())))
    return rows.sort_by([("image_path", "ascending"), ("roi_index", "ascending")])


def label_counts(detections: pa.Table) -> dict[str, int]:
    """Regions per label."""
    return _counts(detections["label"]) if detections.num_rows else {}


def _label_sets(images: pa.Table, detections: pa.Table,
                codes: dict[str, int]) -> dict[str, int]:
    """Image path -> bit mask of its labels (0 for an image with no regions)."""
    masks = dict.fromkeys(images["image_path"].to_pylist(), 0)
    if detections.num_rows:
        pairs = detections.select(["image_path", "label"]).group_by(
            ["image_path", "label"], use_threads=False).aggregate([])
        bits = np.left_shift(1, np.array([codes[v] for v in pairs["label"].to_pylist()],
                                         np.int64))
        summed = pa.table({"image_path": pairs["image_path"], "bit": bits}).group_by(
            "image_path", use_threads=False).aggregate([("bit", "sum")])
        masks.update(zip(summed["image_path"].to_pylist(), summed["bit_sum"].to_pylist()))
    return masks


def changed_images(images: pa.Table, detections: pa.Table, other_images: pa.Table,
                   other_detections: pa.Table) -> list[LabelChange]:
    """Images in both views whose set of labels differs, by path."""
    names = sorted(set(label_counts(detections)) | set(label_counts(other_detections)))
    if len(names) > 62:
        raise ValueError(f"more than 62 labels ({len(names)}) cannot be compared")
    codes = {name: i for i, name in enumerate(names)}
    mine = _label_sets(images, detections, codes)
    theirs = _label_sets(other_images, other_detections, codes)

    def labels(mask: int) -> tuple[str, ...]:
        return tuple(n for n, i in codes.items() if mask >> i & 1)

    return [LabelChange(path, labels(mine[path]), labels(theirs[path]))
            for path in sorted(mine.keys() & theirs.keys()) if mine[path] != theirs[path]]
