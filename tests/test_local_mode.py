"""The local running mode: Beam's flags win; long inputs on several cores get one worker each."""

from __future__ import annotations

import pytest

from beam_pipeline.local_mode import LONG_INPUT_IMAGES, choose_local_mode, count_inputs_up_to
from transforms.reading import resolve_input


def _folder(tmp_path, count):
    for i in range(count):
        (tmp_path / f"{i:05d}.png").write_bytes(b"x")
    return resolve_input(str(tmp_path))


def test_short_input_runs_in_process(tmp_path):
    mode = choose_local_mode([], _folder(tmp_path, 3), cores=8)
    assert mode.flags == () and "3 inputs" in mode.reason


def test_long_input_gets_one_worker_per_core(tmp_path):
    mode = choose_local_mode([], _folder(tmp_path, LONG_INPUT_IMAGES), cores=2)
    assert mode.flags == ("--direct_running_mode=multi_processing", "--direct_num_workers=2",
                          "--default_sdk_harness_log_level=ERROR")
    assert "each worker: 1 TensorFlow/OpenCV threads" in mode.reason


def test_workers_log_at_their_default_level_when_verbose_or_set(tmp_path):
    spec = _folder(tmp_path, LONG_INPUT_IMAGES)
    assert choose_local_mode([], spec, cores=2, verbose=True).flags[2:] == ()
    argv = ["--default_sdk_harness_log_level=INFO"]
    assert choose_local_mode(argv, spec, cores=2).flags[2:] == ()


def test_explicit_multi_processing_workers_log_errors_only(tmp_path):
    argv = ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]
    mode = choose_local_mode(argv, _folder(tmp_path, 3), cores=8)
    assert mode.flags == ("--default_sdk_harness_log_level=ERROR",)
    assert "each worker: 2 TensorFlow/OpenCV threads" in mode.reason


def test_beam_flags_win(tmp_path):
    spec = _folder(tmp_path, LONG_INPUT_IMAGES)
    for argv in (["--direct_running_mode=in_memory"], ["--direct_num_workers", "3"]):
        assert choose_local_mode(argv, spec, cores=8).flags == ()


def test_reruns_that_skip_done_paths_stay_in_process(tmp_path):
    mode = choose_local_mode([], _folder(tmp_path, LONG_INPUT_IMAGES), cores=8, skipping=True)
    assert mode.flags == () and "--skip_done_in" in mode.reason


def test_one_core_stays_in_process(tmp_path):
    assert choose_local_mode([], _folder(tmp_path, LONG_INPUT_IMAGES), cores=1).flags == ()


def test_manifest_counted_without_blank_or_comment_lines(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_text("# header\n\na.png\nb.png\n\nc.png\n")
    spec = resolve_input(str(manifest))
    assert count_inputs_up_to(spec, 100) == 3
    assert count_inputs_up_to(spec, 2) == 2


@pytest.mark.e2e
def test_job_chooses_and_reports_multi_processing(models_dir, image_dir, tmp_path, monkeypatch,
                                                  capsys):
    import beam_pipeline.local_mode as local_mode
    from beam_pipeline.main import run
    from tests.conftest import check_run, job_args

    monkeypatch.setattr(local_mode, "LONG_INPUT_IMAGES", 3)  # the scene has 4 inputs
    monkeypatch.setattr(local_mode, "usable_cores", lambda: 2)
    metrics = run(job_args(models_dir, image_dir, tmp_path / "out"))
    check_run(tmp_path / "out", image_dir, models_dir)
    assert "running: DirectRunner, multi_processing, 2 workers" in capsys.readouterr().out
    # Loaded in worker processes: at most once per worker, per model.
    assert 1 <= metrics["DetectObjects.load_model_latency_milli_secs.count"] <= 2
