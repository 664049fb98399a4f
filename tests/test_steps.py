"""The job's four composite steps (beam_pipeline/steps.py), each in a TestPipeline of its own:
SelectPaths, DetectAndClassify, WriteTables and FinishRun."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

# Aliased so that pytest does not try to collect it as a test class.
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.config import ClassifyConfig, DetectConfig, RunConfig, SelectConfig
from beam_pipeline.steps import DetectAndClassify, FinishRun, SelectPaths, WriteTables
from tests.conftest import COLOR_LABELS, IMAGES
from transforms.reading import resolve_input
from transforms.records import IMAGES_SCHEMA, ErrorStage
from transforms.skipping import in_sample

PATHS = [f"/data/shot-{i:03d}.png" for i in range(40)]


def _pipeline() -> BeamTestPipeline:
    # --input/--output: required flags once beam_pipeline.options is imported in the session.
    # The in-process FnApi runner, named: Beam's DirectRunner switches to Prism once a Prism job
    # server runs in this process (the engines tier starts one), and these are unit tests.
    return BeamTestPipeline(runner="FnApiRunner",
                            options=PipelineOptions(["--input=unused", "--output=unused"]))


def _run_config(output, **changes) -> RunConfig:
    return RunConfig(output=str(output), run_id="run-1", fingerprint="fp-1",
                     record={"version": 1, "run_id": "run-1", "status": "running"}, **changes)


def _done_table(folder, paths, *, fingerprint="fp-1", status="ok") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"image_path": p, "status": status, "width": 1, "height": 1, "error_stage": None,
             "error": None, "num_detections": 0, "run_id": "old", "fingerprint": fingerprint}
            for p in paths]
    pq.write_table(pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), folder / "part.parquet")
    return str(folder / "*.parquet")


def test_select_paths_samples_and_skips_done_paths(tmp_path):
    done = _done_table(tmp_path / "earlier", PATHS[:10])
    other = _done_table(tmp_path / "other", PATHS[10:20], fingerprint="fp-other")
    select = SelectConfig(input=resolve_input("unused/*.png"), sample=0.5,
                          done_tables=(done, other), input_paths=tuple(PATHS))
    sampled = [p for p in PATHS if in_sample(p, 0.5)]
    with _pipeline() as pipeline:
        paths = pipeline | SelectPaths(select, fingerprint="fp-1")
        assert_that(paths["todo"], equal_to([p for p in sampled if p not in PATHS[:10]]),
                    label="Todo")
        assert_that(paths["skipped"], equal_to([p for p in sampled if p in PATHS[:10]]),
                    label="Skipped")
    assert 0 < len(sampled) < len(PATHS)  # the sample really drops some


def test_select_paths_lists_a_folder_when_no_step_paths_are_given(tmp_path):
    for name in ("a.png", "b.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    select = SelectConfig(input=resolve_input(str(tmp_path)))
    with _pipeline() as pipeline:
        paths = pipeline | SelectPaths(select, fingerprint="fp-1")
        assert_that(paths["todo"], equal_to([str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]),
                    label="Todo")
        assert_that(paths["skipped"], equal_to([]), label="Skipped")


def _statuses(rows):
    return sorted((row["image_path"].rsplit("/", 1)[-1], row["status"], row["error_stage"])
                  for row in rows)


@pytest.mark.e2e
def test_detect_and_classify_gives_every_path_one_images_row(models_dir, image_dir):
    detect = DetectConfig(detector_model=str(models_dir / "detector"),
                          max_image_pixels=10_000_000, min_score=0.5, max_detections=10,
                          crop_padding=0.0, crop_size=(16, 16))
    classify = ClassifyConfig(classifier_model=str(models_dir / "colors.keras"),
                              labels=COLOR_LABELS, batch_size=4, preprocess="unit",
                              detector_labels={1: "defect", 2: "Other thing"})
    paths = sorted(str(p) for p in image_dir.iterdir())
    expected_images = sorted([(name, "ok", None) for name in IMAGES]
                             + [("broken.png", "error", ErrorStage.DECODE.value)])
    with _pipeline() as pipeline:
        rows = (pipeline | beam.Create(paths)
                | DetectAndClassify(detect, classify, run_id="run-1", fingerprint="fp-1"))
        assert_that(rows["images"] | "Statuses" >> beam.combiners.ToList()
                    | "Sorted" >> beam.Map(_statuses), equal_to([expected_images]),
                    label="Images")
        labels = (rows["detections"] | beam.FlatMap(lambda image: image)
                  | beam.Map(lambda row: (row["image_path"].rsplit("/", 1)[-1], row["label"],
                                          row["run_id"], row["fingerprint"])))
        assert_that(labels, equal_to([(name, color, "run-1", "fp-1")
                                      for name, colors in IMAGES.items() for color in colors]),
                    label="Labels")
        assert_that(rows["failed_regions"], equal_to([0]), label="FailedRegions")


def _rows():
    detections = [[{"image_path": "/a.png", "roi_index": 0, "box_ymin": 1.0, "box_xmin": 2.0,
                    "box_ymax": 3.0, "box_xmax": 4.0, "detector_class_id": 1,
                    "detector_label": None, "detector_score": 0.9, "class_id": 0,
                    "label": "red", "confidence": 0.8, "detector_model": "d",
                    "classifier_model": "c", "run_id": "run-1", "fingerprint": "fp-1",
                    "classified": True}]]
    images = [{"image_path": path, "status": status, "width": 5, "height": 5,
               "error_stage": stage, "error": None, "num_detections": n, "run_id": "run-1",
               "fingerprint": "fp-1"}
              for path, status, stage, n in (("/a.png", "ok", None, 1),
                                             ("/b.png", "error", "decode", 0))]
    return detections, images


def test_write_tables_writes_both_tables_and_counts_them(tmp_path):
    detections, images = _rows()
    with _pipeline() as pipeline:
        written = ({"detections": pipeline | "Detections" >> beam.Create(detections),
                    "images": pipeline | "Images" >> beam.Create(images)}
                   | WriteTables(_run_config(tmp_path, part_prefix="part-c00002")))
        assert_that(written["image_counts"],
                    equal_to([{"images": 2, "ok": 1, "error_decode": 1}]), label="Images")
        assert_that(written["detection_counts"], equal_to([{"regions": 1, "classified": 1}]),
                    label="Regions")
        assert_that(written["files"] | beam.combiners.Count.Globally(), equal_to([2]),
                    label="Files")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "part-c00002-00000-of-00001.parquet"]
    table = ds.dataset(str(tmp_path / "images"), format="parquet").to_table()
    assert sorted(table.column("image_path").to_pylist()) == ["/a.png", "/b.png"]
    assert ds.dataset(str(tmp_path / "detections"), format="parquet").count_rows() == 1


def _written(pipeline, files):
    return {"files": pipeline | "Files" >> beam.Create(files),
            "image_counts": pipeline | "ImageCounts" >> beam.Create(
                [{"images": 4, "ok": 3, "error_read": 1}]),
            "detection_counts": pipeline | "RegionCounts" >> beam.Create(
                [{"regions": 5, "classified": 5}]),
            "failed_regions": pipeline | "Failed" >> beam.Create([1]),
            "skipped": pipeline | "Skipped" >> beam.Create(["/x.png", "/y.png"])}


def test_finish_run_writes_the_success_marker_and_the_complete_record(tmp_path):
    with _pipeline() as pipeline:
        _ = _written(pipeline, ["f1", "f2"]) | FinishRun(_run_config(tmp_path,
                                                                    max_error_fraction=0.5))
    record = json.loads((tmp_path / "run.json").read_text())
    assert (tmp_path / "_SUCCESS").exists()
    assert record["status"] == "complete" and record["run_id"] == "run-1"
    counts = record["counts"]
    assert (counts["images_read"], counts["images_ok"], counts["images_skipped"]) == (4, 3, 2)
    assert counts["errors_by_stage"]["read"] == 1 and counts["regions_failed_classify"] == 1
    assert record["error_gate"] == {"max_error_fraction": 0.5, "passed": True}


def test_finish_run_of_a_commit_step_writes_only_its_commit_record(tmp_path):
    run = _run_config(tmp_path, commit_every=4, commit_index=3, part_prefix="part-c00003",
                      commit_header={"run_id": "run-1", "fingerprint": "fp-1"})
    files = [str(tmp_path / "images" / "part-c00003-00000-of-00001.parquet")]
    with _pipeline() as pipeline:
        _ = _written(pipeline, files) | FinishRun(run)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "_SUCCESS").exists()
    (record_file,) = (tmp_path / "_commits").iterdir()
    assert record_file.name == "commit-00003.json"
    commit = json.loads(record_file.read_text())
    assert commit["commit"] == 3 and commit["fingerprint"] == "fp-1"
    assert commit["files"] == ["images/part-c00003-00000-of-00001.parquet"]
    assert commit["images"] == 4 and commit["classify_failed"] == 1
