"""End to end on the DirectRunner: real Parquet written to tmp_path and read back."""

from __future__ import annotations

from beam_pipeline.main import run
from tests.conftest import check_run, job_args


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
