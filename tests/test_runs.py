"""Archive runs: the run record, the fingerprint, skipping what complete earlier runs did,
the deterministic sample, the error gate and the latest view across runs."""

from __future__ import annotations

import json
import shutil

import pyarrow.dataset as ds
import pytest

from beam_pipeline.main import main, run
from beam_pipeline.run_record import content_digest, fingerprint, new_run_id, read_run_record
from beam_pipeline.runs import complete_outputs, latest_view
from tests.conftest import IMAGES, job_args, read_table
from transforms.skipping import in_sample

GOOD = sorted(IMAGES)


def _paths(output, table="images"):
    return sorted(row["image_path"] for row in read_table(output, table))


# -- Pure parts --------------------------------------------------------------------------------

def test_run_ids_sort_by_start_time():
    import datetime

    early = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    late = early + datetime.timedelta(microseconds=1)
    assert new_run_id(early) < new_run_id(late)


def test_content_digest_is_by_content_not_location(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "variables").mkdir(parents=True)
        (tmp_path / name / "saved_model.pb").write_bytes(b"graph")
        (tmp_path / name / "variables" / "v").write_bytes(b"weights")
    assert content_digest(str(tmp_path / "a")) == content_digest(str(tmp_path / "b"))
    (tmp_path / "b" / "variables" / "v").write_bytes(b"weights2")
    assert content_digest(str(tmp_path / "a")) != content_digest(str(tmp_path / "b"))


def test_fingerprint_changes_with_any_part():
    base = {"detector": "d", "options": {"min_score": 0.3}}
    assert fingerprint(base) == fingerprint(dict(base))
    assert fingerprint(base) != fingerprint({**base, "options": {"min_score": 0.31}})


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_sample_is_deterministic_and_near_its_fraction(fraction):
    paths = [f"gs://bucket/shots/{i:06d}.png" for i in range(20000)]
    chosen = [path for path in paths if in_sample(path, fraction)]
    assert chosen == [path for path in reversed(paths) if in_sample(path, fraction)][::-1]
    assert abs(len(chosen) / len(paths) - fraction) < 0.02


def test_incomplete_and_unreadable_records_are_not_runs(tmp_path, capsys):
    (tmp_path / "killed" / "images").mkdir(parents=True)  # tables, no record
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "run.json").write_text(json.dumps(
        {"version": 1, "run_id": "1", "status": "running"}))
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "run.json").write_text("{not json")
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "run.json").write_text(json.dumps({"version": 99}))
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "run.json").write_text(json.dumps(
        {"version": 1, "run_id": "2", "status": "complete"}))
    found = complete_outputs([str(tmp_path / "*")])
    assert [folder for folder, _ in found] == [str(tmp_path / "done")]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: ignoring") for line in warnings)


# -- End to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(models_dir, image_dir, tmp_path_factory):
    """A complete run over the scene: 3 ok images and one decode error."""
    results = tmp_path_factory.mktemp("results")
    run(job_args(models_dir, image_dir, results / "day1"))
    return results


@pytest.mark.e2e
def test_run_record_describes_the_run(first_run, models_dir):
    record = read_run_record(str(first_run / "day1"))
    assert record["status"] == "complete" and record["version"] == 1
    assert record["started"] <= record["ended"]
    assert record["counts"] == {
        "images_read": 4, "images_ok": 3, "images_skipped": 0,
        "errors_by_stage": {"read": 0, "decode": 1, "detect": 0, "classify": 0},
        "regions_kept": 9, "regions_written": 9, "regions_classified": 9,
        "regions_failed_classify": 0, "error_fraction": 0.25}
    assert record["models"]["detector"]["digest"] == content_digest(
        str(models_dir / "detector"))
    assert record["min_score"] == {"value": 0.5,
                                   "source": "the default (the detector declares none)"}
    assert record["options"]["classifier_batch_size"] == 4
    assert set(record["libraries"]) >= {"python", "apache-beam", "tensorflow", "keras",
                                        "opencv", "pyarrow", "numpy"}
    assert (first_run / "day1" / "_SUCCESS").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("steps", ["--commit_every=0", "--commit_every=2"])
def test_skip_done_skips_ok_paths_even_with_the_models_copied(first_run, models_dir,
                                                              image_dir, tmp_path, steps):
    # Both select in the launcher (a local run): one pipeline, or commit steps.
    copied = tmp_path / "models"
    shutil.copytree(models_dir, copied)  # same bytes elsewhere: same fingerprint
    out = tmp_path / "day2"
    metrics = run(job_args(copied, image_dir, out, f"--skip_done_in={first_run}/*", steps))
    # The ok images are skipped; the decode error is processed again.
    assert _paths(out) == [str(image_dir / "broken.png")]
    assert read_table(out, "detections") == []
    record = read_run_record(str(out))
    assert record["counts"]["images_skipped"] == 3
    assert record["counts"]["images_read"] == 1
    assert record["fingerprint"] == read_run_record(str(first_run / "day1"))["fingerprint"]
    assert metrics["images_skipped"] == 3 and metrics["files_listed"] == 4


@pytest.mark.e2e
def test_skip_done_redoes_everything_when_an_option_changes_rows(first_run, models_dir,
                                                                 image_dir, tmp_path):
    out = tmp_path / "stricter"
    run(job_args(models_dir, image_dir, out, f"--skip_done_in={first_run}/*",
                 "--min_score=0.65"))
    assert len(_paths(out)) == 4
    assert read_run_record(str(out))["counts"]["images_skipped"] == 0
    assert read_run_record(str(out))["fingerprint"] != read_run_record(
        str(first_run / "day1"))["fingerprint"]


@pytest.mark.e2e
def test_skip_done_ignores_a_killed_run(first_run, models_dir, image_dir, tmp_path):
    killed = tmp_path / "earlier" / "killed"
    shutil.copytree(first_run / "day1", killed)
    (killed / "run.json").unlink()  # tables written, never completed
    out = tmp_path / "after_kill"
    run(job_args(models_dir, image_dir, out, f"--skip_done_in={tmp_path / 'earlier'}/*",
                 "--skip_done_in=/nonexistent/results/*"))
    assert len(_paths(out)) == 4


@pytest.mark.e2e
def test_latest_view_takes_each_images_newest_complete_run(first_run, models_dir,
                                                           image_dir, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(first_run / "day1", results / "day1")
    run(job_args(models_dir, image_dir, results / "day2", "--min_score=0.65"))
    newest = read_run_record(str(results / "day2"))["run_id"]
    images = latest_view([str(results / "*")], "images")
    assert images.num_rows == 4 and set(images["run_id"].to_pylist()) == {newest}
    detections = latest_view([str(results / "*")], "detections",
                             columns=["image_path", "detector_score"])
    assert detections.column_names == ["image_path", "detector_score"]
    assert detections.num_rows == 6  # two boxes per image score >= 0.65 (0.9 and 0.7)
    assert min(detections["detector_score"].to_pylist()) >= 0.65


@pytest.mark.e2e
def test_runs_command_writes_the_latest_view(first_run, tmp_path, capsys):
    from beam_pipeline.runs import main as runs_main

    out = tmp_path / "latest.parquet"
    runs_main(["latest", f"{first_run}/*", "--table", "images", "--output", str(out)])
    assert ds.dataset(str(out)).to_table().num_rows == 4
    runs_main(["list", f"{first_run}/*"])
    assert "images_read=4" in capsys.readouterr().out


@pytest.mark.e2e
def test_error_gate_writes_everything_then_exits_3(models_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "gated"
    with pytest.raises(SystemExit) as exit_info:
        main(job_args(models_dir, image_dir, out, "--max_error_fraction=0.2"))
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: error gate failed: 1 of 4 images are errors")
    record = read_run_record(str(out))
    assert record["status"] == "complete"
    assert record["error_gate"] == {"max_error_fraction": 0.2, "passed": False}
    assert len(_paths(out)) == 4 and len(read_table(out, "detections")) == 9
    assert not (out / "_run.lock").exists()  # held through the gate, released after it


@pytest.mark.e2e
def test_sample_picks_the_same_paths_in_process_and_multi_process(models_dir, image_dir,
                                                                  tmp_path):
    expected = sorted(str(image_dir / name) for name in [*GOOD, "broken.png"]
                      if in_sample(str(image_dir / name), 0.5))
    run(job_args(models_dir, image_dir, tmp_path / "one", "--sample=0.5"))
    run(job_args(models_dir, image_dir, tmp_path / "two", "--sample=0.5",
                 "--direct_running_mode=multi_processing", "--direct_num_workers=2"))
    assert _paths(tmp_path / "one") == _paths(tmp_path / "two") == expected


@pytest.mark.parametrize("flag", ["--sample=0", "--sample=1.5", "--max_error_fraction=-0.1",
                                  "--max_error_fraction=2"])
def test_run_options_out_of_range_fail_before_any_work(models_dir, image_dir, tmp_path, flag,
                                                       capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(job_args(models_dir, image_dir, tmp_path / "out", flag))
    assert exit_info.value.code == 2
    assert flag.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
