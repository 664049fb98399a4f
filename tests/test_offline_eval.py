"""The plain loop of the whole job (training/offline_eval.py) against the conftest scene and the
Beam job itself."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    COLOR_LABELS,
    IMAGES,
    expected_detections,
    job_args,
    read_table,
)
from training import offline_eval
from transforms.labels import read_label_map
from transforms.records import DETECTIONS_SCHEMA

# The columns of DETECTIONS_SCHEMA that do not depend on the run (run_id, fingerprint do).
RUN_COLUMNS = ("run_id", "fingerprint")


@pytest.fixture(scope="module")
def fixture_models(models_dir):
    return offline_eval.load_models(str(models_dir / "detector"),
                                    str(models_dir / "colors.keras"))


def _loop(models_dir, image_dir, fixture_models, **kwargs):
    detector, classifier = fixture_models
    settings = {"labels": COLOR_LABELS,
                "detector_labels": read_label_map(str(models_dir / "label_map.pbtxt")),
                "min_score": 0.5, "batch_size": 4, "detector_model": str(models_dir / "detector"),
                "classifier_model": str(models_dir / "colors.keras"), **kwargs}
    return offline_eval.run_loop(offline_eval.list_images(str(image_dir)), detector=detector,
                                 classifier=classifier, **settings)


def test_run_loop_gives_the_scene_rows(models_dir, image_dir, fixture_models):
    rows = _loop(models_dir, image_dir, fixture_models)
    want = expected_detections(image_dir, models_dir)
    assert [(r["image_path"], r["roi_index"]) for r in rows] == [
        (w["image_path"], w["roi_index"]) for w in want]
    for row, w in zip(rows, want):
        box = (row["box_ymin"], row["box_xmin"], row["box_ymax"], row["box_xmax"])
        assert box == pytest.approx(w["box"], abs=1e-4)
        assert row["detector_score"] == pytest.approx(w["detector_score"], abs=1e-6)
        assert (row["detector_class_id"], row["detector_label"]) == (
            w["detector_class_id"], w["detector_label"])
        assert (row["class_id"], row["label"]) == (w["class_id"], w["label"])
        assert row["confidence"] > 0.99


def test_run_loop_applies_min_score_and_max_detections(models_dir, image_dir, fixture_models):
    # The fake detector's fourth box scores 0.2: kept at 0.1, so four rows an image; at most
    # two rows an image with max_detections=2; none above every score.
    assert len(_loop(models_dir, image_dir, fixture_models, min_score=0.1)) == 4 * len(IMAGES)
    capped = _loop(models_dir, image_dir, fixture_models, max_detections=2)
    assert sorted({r["roi_index"] for r in capped}) == [0, 1]
    assert _loop(models_dir, image_dir, fixture_models, min_score=0.95) == []


def test_run_loop_batch_size_does_not_change_rows(models_dir, image_dir, fixture_models):
    one = _loop(models_dir, image_dir, fixture_models, batch_size=1)
    many = _loop(models_dir, image_dir, fixture_models, batch_size=64)
    assert [(r["image_path"], r["roi_index"], r["label"]) for r in one] == [
        (r["image_path"], r["roi_index"], r["label"]) for r in many]


def test_run_loop_labels_null_without_a_label_map(models_dir, image_dir, fixture_models):
    rows = _loop(models_dir, image_dir, fixture_models, detector_labels=None)
    assert rows and all(r["detector_label"] is None for r in rows)


def test_write_detections_reads_back_with_the_schema(tmp_path, models_dir, image_dir,
                                                     fixture_models):
    rows = _loop(models_dir, image_dir, fixture_models)
    path = offline_eval.write_detections(rows, str(tmp_path / "out"))
    table = pq.read_table(path)
    assert table.schema.equals(DETECTIONS_SCHEMA)
    assert table.to_pylist() == rows  # floats were float32 values already
    assert table.num_rows == len(rows) == 3 * len(IMAGES)


@pytest.mark.e2e
def test_run_loop_rows_equal_the_beam_job_rows(tmp_path, models_dir, image_dir, fixture_models):
    from beam_pipeline.main import run

    run(job_args(models_dir, image_dir, tmp_path / "out", "--min_score=0.5"))
    job_rows = read_table(tmp_path / "out", "detections")
    loop_rows = _loop(models_dir, image_dir, fixture_models)
    assert len(loop_rows) == len(job_rows) == 3 * len(IMAGES)
    columns = [name for name in DETECTIONS_SCHEMA.names
               if name not in RUN_COLUMNS and name in job_rows[0] and name in loop_rows[0]]
    assert "confidence" in columns and "box_xmax" in columns
    for column in columns:
        # Through float32 Parquet: the loop's floats are float32 values already.
        assert [r[column] for r in loop_rows] == [r[column] for r in job_rows], column
