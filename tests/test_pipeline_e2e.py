"""End to end on the DirectRunner: real Parquet written to tmp_path and read back."""

from __future__ import annotations

import json
import math

import pytest

from beam_pipeline.main import main, run
from tests.conftest import check_run, job_args, read_table

pytestmark = pytest.mark.e2e


def test_pipeline_writes_expected_rows(models_dir, image_dir, tmp_path, capsys):
    metrics = run(job_args(models_dir, image_dir, tmp_path / "out"))
    check_run(tmp_path / "out", image_dir, models_dir)
    assert metrics["images_read"] == 4
    assert metrics["images_failed_decode"] == 1
    assert metrics["regions_detected"] == 3 * 4  # padding past num_detections not counted
    assert metrics["regions_kept"] == 9
    assert metrics["regions_classified"] == 9
    assert metrics["DetectObjects.load_model_latency_milli_secs.count"] == 1
    assert metrics["ClassifyRegions.load_model_latency_milli_secs.count"] == 1
    summary = capsys.readouterr().out
    assert "4 read" in summary and "9 classified" in summary


def test_pipeline_multi_processing_gives_identical_rows(models_dir, image_dir, tmp_path):
    run(job_args(models_dir, image_dir, tmp_path / "single"))
    metrics = run(job_args(models_dir, image_dir, tmp_path / "multi",
                        "--direct_running_mode=multi_processing", "--direct_num_workers=2"))
    single = check_run(tmp_path / "single", image_dir, models_dir)
    multi = check_run(tmp_path / "multi", image_dir, models_dir)
    assert multi == single
    # At most one load per worker process per model.
    assert 1 <= metrics["DetectObjects.load_model_latency_milli_secs.count"] <= 2
    assert 1 <= metrics["ClassifyRegions.load_model_latency_milli_secs.count"] <= 2


def test_pipeline_with_one_model_copy_shared_across_processes(models_dir, image_dir, tmp_path):
    # --model_copies makes Beam serve the models from one process through a proxy.
    metrics = run(job_args(models_dir, image_dir, tmp_path / "shared", "--model_copies=1"))
    check_run(tmp_path / "shared", image_dir, models_dir)
    assert metrics["regions_classified"] == 9


def test_only_named_detector_classes_are_classified(models_dir, image_dir, tmp_path):
    # The fake detector's boxes A and C are class 1 ("defect"), B is class 2.
    run(job_args(models_dir, image_dir, tmp_path / "all"))
    run(job_args(models_dir, image_dir, tmp_path / "some",
                 "--classify_detector_classes=defect"))
    every = {(row["image_path"], row["roi_index"]): row
             for row in read_table(tmp_path / "all", "detections")}
    some = read_table(tmp_path / "some", "detections")
    assert len(some) == len(every) == 9
    for row in some:
        full = every[(row["image_path"], row["roi_index"])]
        assert row["box_ymin"] == full["box_ymin"]
        assert row["detector_score"] == full["detector_score"]
        if row["detector_class_id"] == 1:
            assert row["classified"] and (row["class_id"], row["label"]) == (
                full["class_id"], full["label"])
        else:
            assert not row["classified"]
            assert (row["class_id"], row["label"]) == (-1, "")
            assert math.isnan(row["confidence"])
            assert row["detector_label"] == "Other thing"
    record = json.loads((tmp_path / "some" / "run.json").read_text())
    assert record["counts"]["regions_classified"] == 6
    assert record["counts"]["regions_written"] == 9


def test_unknown_detector_class_name_is_refused(models_dir, image_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(job_args(models_dir, image_dir, tmp_path / "out",
                      "--classify_detector_classes=defect,scratch"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'scratch' is not in the detector's label map" in err and "defect" in err
