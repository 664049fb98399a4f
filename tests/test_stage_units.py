"""Unit tests of the stages' DoFns and composites, each on hand-built records (no models, no
TensorFlow): CropRegionsFn, ToRowsFn, failed_batch_rows, RowsToTablesFn, WriteParquetTable, the
table counters and SkipDoneImages."""

from __future__ import annotations

import functools
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions

# Aliased so that pytest does not try to collect it as a test class.
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow

from beam_pipeline.summary import collect_metrics
from transforms.parquet_sink import (
    CountDetectionRows,
    CountImageRows,
    RowsToTablesFn,
    WriteParquetTable,
)
from transforms.records import (
    DETECTIONS_SCHEMA,
    IMAGES_SCHEMA,
    MESSAGE_LIMIT,
    STATUS_ERROR,
    STATUS_OK,
    Classification,
    DecodedImage,
    Detections,
    ImageRegions,
    ImageRow,
    Region,
)
from transforms.regions import IMAGES_TAG, CropRegionsFn
from transforms.rows import FAILED_REGIONS_TAG, ToRowsFn, failed_batch_rows
from transforms.skipping import SKIPPED_TAG, SkipDoneImages, in_sample

# A 64 x 128 image whose boxes are exact in float32 (dyadic fractions), so a crop of a painted
# box holds nothing but its colour.
HEIGHT, WIDTH = 64, 128
CROP = (8, 12)  # the classifier's input size: not square, so a swapped height/width shows
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
BOXES = np.array([
    [0.125, 0.125, 0.5, 0.375],    # A: pixels (8, 16, 32, 48), red
    [0.5, 0.5, 0.875, 0.875],      # B: pixels (32, 64, 56, 112), green
    [0.0, 0.75, 0.25, 1.25],       # C: pixels (0, 96, 16, 160), clipped to 128; blue
    [0.625, 0.0625, 0.75, 0.25],   # D: pixels (40, 8, 48, 32), white
], np.float32)
PIXEL_BOXES = {"A": (8.0, 16.0, 32.0, 48.0), "B": (32.0, 64.0, 56.0, 112.0),
               "C": (0.0, 96.0, 16.0, 128.0)}
# Scores out of order: kept regions come out B (0.875), C (0.75), A (0.625); D is below 0.5.
SCORES = np.array([0.625, 0.875, 0.75, 0.25], np.float32)
CLASSES = np.array([1, 2, 1, 3], np.int32)
MIN_SCORE = 0.5


def _pipeline() -> BeamTestPipeline:
    """A TestPipeline whose options parse once beam_pipeline.options is imported (by another
    test module in the same session): its --input and --output are required flags."""
    # The in-process FnApi runner, named: Beam's DirectRunner switches to Prism once a Prism job
    # server runs in this process (the engines tier starts one), and these are unit tests.
    return BeamTestPipeline(runner="FnApiRunner",
                            options=PipelineOptions(["--input=unused", "--output=unused"]))


def _pixels() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    for (ymin, xmin, ymax, xmax), color in zip(
            [(8, 16, 32, 48), (32, 64, 56, 112), (0, 96, 16, 128), (40, 8, 48, 32)],
            [RED, GREEN, BLUE, WHITE]):
        image[ymin:ymax, xmin:xmax] = color
    return image


def _detected(path: str, boxes, scores, classes, error=None) -> PredictionResult:
    return PredictionResult(
        DecodedImage(path, _pixels()),
        Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                   np.asarray(classes, np.int32), error))


def _crop_fn(**overrides) -> CropRegionsFn:
    settings = {"min_score": MIN_SCORE, "max_detections": 10, "padding": 0.0,
                "crop_height": CROP[0], "crop_width": CROP[1]}
    return CropRegionsFn(**{**settings, **overrides})


# Boxes CropRegions must drop as degenerate, each scored above the threshold (but the last).
DEGENERATE = {
    "nan coordinate": ([np.nan, 0.125, 0.5, 0.5], 0.875),
    "inverted": ([0.5, 0.5, 0.25, 0.75], 0.875),
    "zero area": ([0.25, 0.25, 0.25, 0.5], 0.875),
    "outside the image": ([1.25, 1.25, 1.5, 1.5], 0.875),
    "nan score": ([0.125, 0.125, 0.5, 0.5], np.nan),
}


def _regions_are(expected, found):
    """Matcher: ``expected`` is ``[(path, [(box, class, score, color or None), ...])]``."""
    assert sorted(image.image_path for image in found) == sorted(path for path, _ in expected)
    by_path = {image.image_path: image for image in found}
    for path, regions in expected:
        image = by_path[path]
        assert (image.width, image.height) == (WIDTH, HEIGHT)
        assert [r.roi_index for r in image.regions] == list(range(len(regions)))
        got = [(r.box, r.detector_class_id, r.detector_score) for r in image.regions]
        assert got == [(box, cls, score) for box, cls, score, _ in regions]
        for region, (_, _, _, color) in zip(image.regions, regions):
            assert region.image_path == path
            if color is None:
                assert region.crop is None
            else:
                assert region.crop.shape == (*CROP, 3) and region.crop.dtype == np.uint8
                assert (region.crop == color).all()


def test_crop_regions_routes_each_image_and_counts():
    low = _detected("low.png", BOXES[:2], [0.25, 0.125], [1, 1])
    degenerate = _detected("degenerate.png", [box for box, _ in DEGENERATE.values()],
                           [score for _, score in DEGENERATE.values()], [1] * len(DEGENERATE))
    inputs = [
        _detected("failed.png", np.zeros((0, 4)), [], [], error="InvalidArgumentError: boom"),
        low,
        _detected("empty.png", np.zeros((0, 4)), [], []),
        degenerate,
        _detected("kept.png", BOXES, SCORES, CLASSES),
    ]
    pipeline = _pipeline()
    outputs = (pipeline | beam.Create(inputs)
               | "CropRegions" >> beam.ParDo(_crop_fn()).with_outputs(IMAGES_TAG,
                                                                      main="detected"))
    assert_that(outputs[IMAGES_TAG], equal_to([
        ImageRow.failed("failed.png", "detect", "InvalidArgumentError: boom", width=WIDTH,
                        height=HEIGHT),
        ImageRow("low.png", STATUS_OK, WIDTH, HEIGHT, num_detections=0),
        ImageRow("empty.png", STATUS_OK, WIDTH, HEIGHT, num_detections=0),
        ImageRow("degenerate.png", STATUS_OK, WIDTH, HEIGHT, num_detections=0),
    ]), label="ImagesRows")
    assert_that(outputs.detected | beam.Map(lambda image: image.image_path),
                equal_to(["kept.png"]), label="Detected")
    result = pipeline.run()
    result.wait_until_finish()
    values = collect_metrics(result)
    # A failed image is counted as failed, not as detected nor in the per-image distribution.
    assert values["images_failed_detect"] == 1
    assert values["regions_detected"] == 2 + 0 + len(DEGENERATE) + 4
    assert values["regions_dropped_degenerate"] == len(DEGENERATE)
    assert values["regions_kept"] == 3
    assert (values["regions_per_image.count"], values["regions_per_image.sum"]) == (4, 3)


def test_crop_regions_crops_kept_regions_in_score_order():
    every_class = [("kept.png", [(PIXEL_BOXES["B"], 2, 0.875, GREEN),
                                 (PIXEL_BOXES["C"], 1, 0.75, BLUE),
                                 (PIXEL_BOXES["A"], 1, 0.625, RED)])]
    # --classify_detector_classes 2 and --max_detections 2: the best two, class 1 not cropped.
    class_two = [("kept.png", [(PIXEL_BOXES["B"], 2, 0.875, GREEN),
                               (PIXEL_BOXES["C"], 1, 0.75, None)])]
    with _pipeline() as pipeline:
        detected = pipeline | beam.Create([_detected("kept.png", BOXES, SCORES, CLASSES)])
        every = detected | "CropAll" >> beam.ParDo(_crop_fn()).with_outputs(
            IMAGES_TAG, main="detected")
        some = detected | "CropClassTwo" >> beam.ParDo(_crop_fn(
            max_detections=2, classify_classes=frozenset({2}))).with_outputs(
                IMAGES_TAG, main="detected")
        assert_that(every.detected, functools.partial(_regions_are, every_class), label="All")
        assert_that(some.detected, functools.partial(_regions_are, class_two), label="Two")
        assert_that(every[IMAGES_TAG], equal_to([]), label="NoRowsAll")
        assert_that(some[IMAGES_TAG], equal_to([]), label="NoRowsTwo")


LABELS = ["red", "green", "blue"]
DETECTOR_LABELS = {1: "defect", 2: "scratch"}


def _regions(path: str, count: int, classes=(1, 7, 2)) -> ImageRegions:
    return ImageRegions(path, WIDTH, HEIGHT, tuple(
        Region(path, roi, (float(roi), 2.0, 3.0 + roi, 4.0), classes[roi], 0.5 + roi / 8,
               np.zeros((*CROP, 3), np.uint8))
        for roi in range(count)))


def _row(path: str, roi: int, detector_class: int, class_id: int, confidence: float,
         classified: bool = True) -> dict:
    return {
        "image_path": path, "roi_index": roi, "box_ymin": float(roi), "box_xmin": 2.0,
        "box_ymax": 3.0 + roi, "box_xmax": 4.0, "detector_class_id": detector_class,
        "detector_label": DETECTOR_LABELS.get(detector_class),
        "detector_score": 0.5 + roi / 8, "class_id": class_id,
        "label": LABELS[class_id] if classified else "", "confidence": confidence,
        "detector_model": "det/", "classifier_model": "cls.keras", "run_id": "run-1",
        "fingerprint": "fp-1", "classified": classified,
    }


def _to_rows_fn() -> ToRowsFn:
    return ToRowsFn(labels=LABELS, detector_labels=DETECTOR_LABELS, detector_model="det/",
                    classifier_model="cls.keras", run_id="run-1", fingerprint="fp-1")


def _nan_as_text(images):
    """Lists of rows, sorted by path, with NaN as text so that equal rows compare equal."""
    return sorted(([{k: "nan" if isinstance(v, float) and math.isnan(v) else v
                     for k, v in row.items()} for row in rows] for rows in images),
                  key=lambda rows: rows[0]["image_path"])


def _rows_are(expected, found):
    """Matcher: one list of rows per image, NaN equal to NaN."""
    assert _nan_as_text(found) == _nan_as_text(expected)


def test_to_rows_rows_images_rows_and_failed_counts():
    inputs = [
        # Region 1's detector class 7 has no detector label: detector_label None.
        PredictionResult(_regions("ok.png", 2),
                         [Classification(2, 0.75), Classification(0, 0.5)]),
        # A None answer: a region of a class the classifier is not asked about.
        PredictionResult(_regions("unasked.png", 2),
                         [None, Classification(1, 0.625)]),
        PredictionResult(_regions("one-failed.png", 3),
                         [Classification(0, 0.5), Classification(0, 0.0, error="OOM"),
                          Classification(1, 0.25)]),
        # Class indices the labels do not cover: errors, with no rows.
        PredictionResult(_regions("no-label.png", 2),
                         [Classification(3, 0.875), Classification(-1, 0.875)]),
    ]
    pipeline = _pipeline()
    outputs = (pipeline | beam.Create(inputs)
               | "ToRows" >> beam.ParDo(_to_rows_fn()).with_outputs(
                   IMAGES_TAG, FAILED_REGIONS_TAG, main="detections"))
    assert_that(outputs.detections, functools.partial(_rows_are, [
        [_row("ok.png", 0, 1, 2, 0.75), _row("ok.png", 1, 7, 0, 0.5)],
        [_row("unasked.png", 0, 1, -1, float("nan"), classified=False),
         _row("unasked.png", 1, 7, 1, 0.625)],
        [_row("one-failed.png", 0, 1, 0, 0.5), _row("one-failed.png", 2, 2, 1, 0.25)],
    ]), label="Detections")
    assert_that(outputs[IMAGES_TAG], equal_to([
        ImageRow("ok.png", STATUS_OK, WIDTH, HEIGHT, num_detections=2),
        ImageRow("unasked.png", STATUS_OK, WIDTH, HEIGHT, num_detections=2),
        ImageRow("one-failed.png", STATUS_ERROR, WIDTH, HEIGHT, error_stage="classify",
                 error="1 of 3 regions failed: OOM", num_detections=2),
        ImageRow("no-label.png", STATUS_ERROR, WIDTH, HEIGHT, error_stage="classify",
                 error="2 of 2 regions failed: class index 3 has no label", num_detections=0),
    ]), label="ImagesRows")
    assert_that(outputs[FAILED_REGIONS_TAG], equal_to([1, 2]), label="FailedRegions")
    result = pipeline.run()
    result.wait_until_finish()
    values = collect_metrics(result)
    assert values["regions_classified"] == 2 + 1 + 2
    assert values["regions_not_classified"] == 1
    assert values["regions_failed_classify"] == 3


@pytest.mark.parametrize("class_id, has_label", [(0, True), (2, True), (3, False),
                                                 (-1, False)])
def test_to_rows_class_index_needs_a_label(class_id, has_label):
    image = _regions("a.png", 1)
    out = list(_to_rows_fn().process(PredictionResult(image, [Classification(class_id, 0.5)])))
    tagged = {o.tag: o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)}
    rows = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    if has_label:
        assert rows == [[_row("a.png", 0, 1, class_id, 0.5)]]
        assert tagged == {IMAGES_TAG: ImageRow("a.png", STATUS_OK, WIDTH, HEIGHT,
                                               num_detections=1)}
    else:
        assert rows == []
        assert tagged == {FAILED_REGIONS_TAG: 1, IMAGES_TAG: ImageRow(
            "a.png", STATUS_ERROR, WIDTH, HEIGHT, error_stage="classify",
            error=f"1 of 1 regions failed: class index {class_id} has no label")}


@pytest.mark.parametrize("exception, message", [
    # What Beam's with_exception_handling() passes: (type, repr, traceback lines).
    ((ValueError, "ValueError('bad batch')", ["Traceback ..."]), "ValueError('bad batch')"),
    # An exception object itself.
    (ValueError("bad batch"), "ValueError: bad batch"),
])
def test_failed_batch_rows_fails_every_image_of_the_batch(exception, message):
    batch = [_regions("a.png", 2), _regions("b.png", 1)]
    out = list(failed_batch_rows((batch, exception)))
    assert isinstance(out[0], beam.pvalue.TaggedOutput)
    assert (out[0].tag, out[0].value) == (FAILED_REGIONS_TAG, 3)
    assert out[1:] == [
        ImageRow("a.png", STATUS_ERROR, WIDTH, HEIGHT, error_stage="classify",
                 error=f"2 of 2 regions failed: {message}", num_detections=0),
        ImageRow("b.png", STATUS_ERROR, WIDTH, HEIGHT, error_stage="classify",
                 error=f"1 of 1 regions failed: {message}", num_detections=0),
    ]


def test_failed_batch_rows_bounds_a_long_message():
    out = list(failed_batch_rows(([_regions("a.png", 1)], RuntimeError("x" * 5000))))
    error = out[1].error
    assert len(error) == MESSAGE_LIMIT and error.endswith("\u2026")  # cut where every row is
    assert error.startswith("1 of 1 regions failed: RuntimeError: xxx")


def _image_dict(name: str, status: str = STATUS_OK, stage=None, fingerprint="fp-1") -> dict:
    return ImageRow(name, status, WIDTH, HEIGHT, error_stage=stage,
                    error="boom" if stage else None).to_dict(run_id="run-0",
                                                             fingerprint=fingerprint)


def test_rows_to_tables_splits_at_rows_per_table_and_flushes_the_rest():
    rows = [_image_dict(f"{i}.png") for i in range(6)]
    fn = RowsToTablesFn(IMAGES_SCHEMA, rows_per_table=2)
    fn.start_bundle()
    # A list (one image's rows) stays whole; single dicts are added one by one.
    tables = [t for element in ([rows[0]], rows[1], rows[2:5], rows[5])
              for t in fn.process(element)]
    assert [t.num_rows for t in tables] == [2, 3]
    flushed = list(fn.finish_bundle())
    assert len(flushed) == 1
    assert flushed[0].windows == (GlobalWindow(),)
    assert flushed[0].timestamp == GlobalWindow().max_timestamp()
    assert [t.to_pylist() for t in [*tables, flushed[0].value]] == [rows[:2], rows[2:5],
                                                                     rows[5:]]
    assert all(t.schema.equals(IMAGES_SCHEMA) for t in [*tables, flushed[0].value])
    assert list(fn.finish_bundle()) == []  # nothing left: nothing flushed twice
    assert list(fn.process(rows[0])) == []  # buffered, not yet a table
    fn.start_bundle()  # a new bundle starts empty
    assert list(fn.finish_bundle()) == []


def _tables_hold(expected_rows, schema, most_rows, tables):
    """Matcher: the tables hold exactly ``expected_rows``, with ``schema``, none bigger."""
    assert all(table.schema.equals(schema) for table in tables)
    assert all(table.num_rows <= most_rows for table in tables)
    found = [row for table in tables for row in table.to_pylist()]
    assert sorted(found, key=lambda r: (r["image_path"], r["roi_index"])) == expected_rows


def test_rows_to_tables_in_a_pipeline_keeps_every_row_and_the_schema():
    rows = [_row(f"{i // 2}.png", i % 2, 1, 0, 0.5) for i in range(7)]
    # Elements: one list per image (as ToRows emits), and single dicts.
    elements = [rows[0:2], rows[2], rows[3:5], rows[5], [rows[6]]]
    with _pipeline() as pipeline:
        tables = (pipeline | beam.Create(elements)
                  | beam.ParDo(RowsToTablesFn(DETECTIONS_SCHEMA, rows_per_table=3)))
        # At most rows_per_table - 1 buffered plus one image's list (2 rows) in a table.
        assert_that(tables, functools.partial(_tables_hold, rows, DETECTIONS_SCHEMA, 4))


def _one_parquet_file(folder, files):
    assert len(files) == 1
    assert files[0].startswith(folder + "/part-") and files[0].endswith(".parquet")


def test_write_parquet_table_writes_the_rows_and_returns_tables_and_files(tmp_path):
    rows = [_image_dict("a.png"), _image_dict("b.png", STATUS_ERROR, "decode")]
    with _pipeline() as pipeline:
        written = (pipeline | beam.Create(rows)
                   | WriteParquetTable(str(tmp_path), "images", num_shards=1))
        assert_that(written["files"],
                    functools.partial(_one_parquet_file, str(tmp_path / "images")),
                    label="Files")
        assert_that(written["tables"] | beam.Map(lambda table: table.num_rows)
                    | beam.CombineGlobally(sum), equal_to([2]), label="Tables")
    table = ds.dataset(str(tmp_path / "images"), format="parquet").to_table()
    assert table.schema.equals(IMAGES_SCHEMA)
    assert sorted(table.to_pylist(), key=lambda r: r["image_path"]) == rows
    assert pq.ParquetFile(next((tmp_path / "images").iterdir())).metadata.row_group(
        0).column(0).compression == "ZSTD"


def _images_table(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)


def _detections_table(classified) -> pa.Table:
    return pa.Table.from_pylist(
        [{**_row("a.png", i, 1, 0, 0.5), "classified": c} for i, c in enumerate(classified)],
        schema=DETECTIONS_SCHEMA)


def test_count_rows_combine_globally():
    image_tables = [
        _images_table([_image_dict("a.png"), _image_dict("b.png", STATUS_ERROR, "detect")]),
        _images_table([_image_dict("c.png"), _image_dict("d.png", STATUS_ERROR, "classify"),
                       _image_dict("e.png", STATUS_ERROR, "classify")]),
    ]
    detection_tables = [_detections_table([True, False, True]), _detections_table([]),
                        _detections_table([False, True])]
    with _pipeline() as pipeline:
        images = (pipeline | "ImageTables" >> beam.Create(image_tables)
                  | "CountImages" >> beam.CombineGlobally(CountImageRows()))
        regions = (pipeline | "DetectionTables" >> beam.Create(detection_tables)
                   | "CountRegions" >> beam.CombineGlobally(CountDetectionRows()))
        assert_that(images, equal_to([{"images": 5, "ok": 2, "error_detect": 1,
                                       "error_classify": 2}]), label="Images")
        assert_that(regions, equal_to([{"regions": 5, "classified": 3}]), label="Regions")


@pytest.mark.parametrize("combine", [CountImageRows, CountDetectionRows])
def test_count_rows_merge_accumulators_adds_every_key(combine):
    merged = combine().merge_accumulators([{"images": 2, "ok": 1}, {},
                                           {"images": 3, "error_read": 1, "ok": 2}])
    assert merged == {"images": 5, "ok": 3, "error_read": 1}


def _write_done_table(folder, rows) -> str:
    folder.mkdir(parents=True)
    pq.write_table(_images_table(rows), folder / "part-00000-of-00001.parquet")
    return str(folder / "*.parquet")


def test_skip_done_images_skips_only_ok_rows_of_this_fingerprint(tmp_path):
    earlier = _write_done_table(tmp_path / "run1" / "images", [
        _image_dict("/in/done.png"),
        _image_dict("/in/other-fingerprint.png", fingerprint="fp-0"),
        _image_dict("/in/failed.png", STATUS_ERROR, "detect"),
        _image_dict("/in/not-listed-now.png"),
    ])
    # done.png is done in both earlier runs: skipped once.
    later = _write_done_table(tmp_path / "run2" / "images", [_image_dict("/in/done.png")])
    listed = ["/in/done.png", "/in/other-fingerprint.png", "/in/failed.png", "/in/new.png"]
    pipeline = _pipeline()
    outputs = (pipeline | beam.Create(listed)
               | "SkipDone" >> SkipDoneImages([earlier, later], "fp-1"))
    assert_that(outputs.todo, equal_to(["/in/other-fingerprint.png", "/in/failed.png",
                                        "/in/new.png"]), label="Todo")
    assert_that(outputs[SKIPPED_TAG], equal_to(["/in/done.png"]), label="Skipped")
    result = pipeline.run()
    result.wait_until_finish()
    assert collect_metrics(result)["images_skipped"] == 1


def test_in_sample_nests_and_covers_the_ends():
    paths = [f"/in/{i}.png" for i in range(200)]
    assert all(in_sample(path, 1.0) for path in paths)
    assert not any(in_sample(path, 0.0) for path in paths)
    small = {path for path in paths if in_sample(path, 0.25)}
    large = {path for path in paths if in_sample(path, 0.5)}
    assert small < large  # a larger sample keeps every path of a smaller one


def test_in_sample_is_the_same_sample_in_every_release():
    # Pinned: a rerun with --sample must pick the paths an earlier run of an older version
    # picked, or skipping done images redoes them (hash() would differ per process).
    kept = [i for i in range(20) if in_sample(f"/in/{i}.png", 0.5)]
    assert kept == [0, 6, 8, 11, 12, 13, 14, 15, 18]
