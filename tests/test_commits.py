"""Committed progress: commit records, resuming with the same command, a step that fails while
committing, and other settings against an unfinished run (the lock: tests/test_run_lock.py)."""

from __future__ import annotations

import errno
import json
import os

import pyarrow.dataset as ds
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import commit_records
from beam_pipeline.commits import (
    AUTO,
    DEFAULT_LOCAL_COMMIT_EVERY,
    FIRST_AUTO_STEP,
    MAX_AUTO_STEP,
    MIN_AUTO_STEP,
    commit_every,
    fingerprint_difference,
    list_input,
    next_step_size,
    read_commits,
    resumable,
    write_commit,
)
from beam_pipeline.options import DetectClassifyOptions
from tests.conftest import IMAGES, check_run, job_args
from transforms.output_folder import delete_uncommitted
from transforms.reading import resolve_input


def _opts(*argv):
    return PipelineOptions(["--input=x", "--output=y", *argv]).view_as(DetectClassifyOptions)


# -- Pure parts --------------------------------------------------------------------------------

def test_commit_every_defaults_on_locally_off_on_distributed_runners():
    assert commit_every(_opts()) == DEFAULT_LOCAL_COMMIT_EVERY == AUTO
    assert commit_every(_opts("--runner=PrismRunner")) == DEFAULT_LOCAL_COMMIT_EVERY
    assert commit_every(_opts("--runner=DataflowRunner")) == 0
    assert commit_every(_opts("--runner=FlinkRunner", "--commit_every=100")) == 100
    assert commit_every(_opts("--commit_every=0")) == 0


def test_auto_steps_start_at_a_fixed_size_then_last_about_ten_minutes():
    assert next_step_size(7, None) == next_step_size(7, (7, 1.0)) == 7
    assert next_step_size(AUTO, None) == FIRST_AUTO_STEP
    assert next_step_size(AUTO, (5000, 200.0)) == 15000  # 25 images/s for 600 s
    assert next_step_size(AUTO, (10, 600.0)) == MIN_AUTO_STEP
    assert next_step_size(AUTO, (10**6, 1.0)) == MAX_AUTO_STEP


def test_fingerprint_difference_names_what_changed():
    before = {"detector": "a", "classifier": "b", "options": {"min_score": 0.5, "tile_size": 0}}
    assert fingerprint_difference(before, {**before, "options": {
        "min_score": 0.65, "tile_size": 0}}) == "min_score 0.5 there, 0.65 now"
    assert fingerprint_difference(before, {**before, "detector": "c"}) == \
        "detector model (other contents)"


def _commit_folder(tmp_path, index, files):
    (tmp_path / "_commits").mkdir(exist_ok=True)
    (tmp_path / "_commits" / f"commit-{index:05d}.json").write_text(json.dumps(
        {"version": 1, "commit": index, "files": files}))


def test_read_commits_ignores_half_written_records(tmp_path):
    _commit_folder(tmp_path, 1, ["images/part-c00001-00000-of-00001.parquet"])
    _commit_folder(tmp_path, 0, [])
    (tmp_path / "_commits" / "commit-00002.json.tmp-1a2b3c4d").write_text('{"vers')
    assert [c["commit"] for c in read_commits(str(tmp_path))] == [0, 1]
    (tmp_path / "_commits" / "commit-00003.json").write_text("{not json")
    with pytest.raises(ValueError, match="commit-00003.json cannot be read"):
        read_commits(str(tmp_path))


def test_delete_uncommitted_removes_only_leftovers_of_unrecorded_commits(tmp_path):
    images = tmp_path / "images"
    (images / "beam-temp-part-c00002-0123abcd0123abcd0123abcd0123abcd").mkdir(parents=True)
    (images / "beam-temp-part-c00002-0123abcd0123abcd0123abcd0123abcd" / "x").write_bytes(b"temp")
    for name in ("part-c00001-00000-of-00001.parquet", "part-c00002-00000-of-00001.parquet",
                 "notes.txt"):
        (images / name).write_bytes(b"PAR1")
    deleted = delete_uncommitted(str(tmp_path), ["images/part-c00001-00000-of-00001.parquet"])
    assert sorted(deleted) == ["images/beam-temp-part-c00002-0123abcd0123abcd0123abcd0123abcd",
                               "images/part-c00002-00000-of-00001.parquet"]
    assert sorted(os.listdir(images)) == ["notes.txt", "part-c00001-00000-of-00001.parquet"]


def test_resumable_only_with_commits_or_a_first_steps_leftovers(tmp_path):
    assert not resumable(str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "beam-temp-part-c00000-0123").mkdir()
    assert resumable(str(tmp_path))  # killed before its first commit
    (tmp_path / "images" / "part-00000-of-00001.parquet").write_bytes(b"PAR1")
    assert not resumable(str(tmp_path))  # a run without commits: not ours to resume
    _commit_folder(tmp_path, 0, [])
    assert resumable(str(tmp_path))


def test_list_input_lists_as_the_pipeline_does(tmp_path):
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_input(resolve_input(str(tmp_path))) == [
        str(tmp_path / name) for name in ("a.jpg", "b.png", "sub/c.png")]
    manifest = tmp_path / "list.txt"
    manifest.write_text("# header\nb.png\n\nb.png\n/elsewhere/z.png\n")
    assert list_input(resolve_input(str(manifest))) == ["/elsewhere/z.png",
                                                        str(tmp_path / "b.png")]


# -- End to end (in process) ---------------------------------------------------------------------

def _records(out):
    return read_commits(str(out))


@pytest.mark.e2e
def test_commits_give_the_rows_of_one_uncommitted_run(models_dir, image_dir, tmp_path):
    from beam_pipeline.main import run

    run(job_args(models_dir, image_dir, tmp_path / "whole", "--commit_every=0"))
    run(job_args(models_dir, image_dir, tmp_path / "steps", "--commit_every=1"))
    whole = check_run(tmp_path / "whole", image_dir, models_dir)
    steps = check_run(tmp_path / "steps", image_dir, models_dir)
    assert whole == steps
    assert not (tmp_path / "whole" / "_commits").exists()
    assert [c["images"] for c in _records(tmp_path / "steps")] == [1, 1, 1, 1]
    record = json.loads((tmp_path / "steps" / "run.json").read_text())
    assert record["commits"]["count"] == 4 and record["commits"]["images_resumed"] == 0
    assert not (tmp_path / "steps" / "_run.lock").exists()


@pytest.mark.e2e
def test_a_failed_commit_keeps_earlier_ones_and_the_same_command_resumes(
        models_dir, image_dir, tmp_path, monkeypatch, capsys):
    from beam_pipeline.main import main
    from beam_pipeline.runs import complete_outputs

    out = tmp_path / "out"
    argv = job_args(models_dir, image_dir, out, "--commit_every=1")
    real = commit_records._write_bytes_atomically
    calls = []

    def disk_full_on_the_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(commit_records, "_write_bytes_atomically", disk_full_on_the_third)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the run stopped in step 3, images 3-3 of the 4 to do (")
    assert "No space left on device" in err[-1] and "2 commits holding 2 images" in err[-1]
    # The third step's part files were renamed before its record failed: it is absent, and so
    # are they; what the two commits hold is a valid dataset.
    assert [c["commit"] for c in _records(out)] == [0, 1]
    assert sorted(os.listdir(out / "images")) == sorted(
        name.split("/")[1] for c in _records(out) for name in c["files"]
        if name.startswith("images/"))
    assert ds.dataset(str(out / "images"), format="parquet").to_table().num_rows == 2
    assert not (out / "run.json").exists() and not (out / "_run.lock").exists()
    assert complete_outputs([str(out)]) == []  # not a run --skip_done_in would use
    monkeypatch.setattr(commit_records, "_write_bytes_atomically", real)

    # What a kill in the middle of a commit leaves: parts and a record's temporary file.
    (out / "images" / "part-c00007-00000-of-00001.parquet").write_bytes(b"PAR1")
    (out / "detections" / "beam-temp-part-c00007-0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b").mkdir()
    (out / "_commits" / "commit-00007.json.tmp-0a1b2c3d").write_text('{"half')

    # Other settings against the unfinished run: one line, exit 2, nothing touched.
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--min_score=0.65"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds an unfinished run (2 commits)" in err[0]
    assert "min_score 0.5 there, 0.65 now" in err[0] and "--overwrite" in err[0]

    main(argv)  # the same command again
    summary = capsys.readouterr().out
    assert "resumed: 2 images from 2 earlier commits" in summary
    check_run(out, image_dir, models_dir)
    assert [c["commit"] for c in _records(out)] == [0, 1, 2, 3]
    assert not any(name.startswith("beam-temp") for name in os.listdir(out / "detections"))
    record = json.loads((out / "run.json").read_text())
    assert record["commits"]["images_resumed"] == 2
    assert record["counts"]["images_read"] == len(IMAGES) + 1


@pytest.mark.e2e
def test_a_complete_run_is_refused_not_resumed(models_dir, image_dir, tmp_path, capsys):
    from beam_pipeline.main import main

    out = tmp_path / "out"
    main(job_args(models_dir, image_dir, out, "--commit_every=2"))
    before = sorted(os.listdir(out))
    with pytest.raises(SystemExit) as exit_info:
        main(job_args(models_dir, image_dir, out, "--commit_every=2"))
    assert exit_info.value.code == 2
    assert "already holds a run's tables (finished" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before


def test_write_commit_lists_the_steps_own_part_files_when_the_sinks_name_none(tmp_path):
    # Prism emits no final file names from the sinks: the record names the step's files anyway,
    # or a resume would take its finished work for leftovers.
    for table in ("images", "detections"):
        (tmp_path / table).mkdir()
        for index in (2, 3):
            (tmp_path / table / f"part-c{index:05d}-00000-of-00001.parquet").write_bytes(b"P")
    write_commit([], str(tmp_path), 3, {"fingerprint": "f"}, {"images": 2}, {"regions": 1}, 0)
    (record,) = read_commits(str(tmp_path))
    assert record["files"] == ["detections/part-c00003-00000-of-00001.parquet",
                               "images/part-c00003-00000-of-00001.parquet"]
    named = ["images/part-c00004-00000-of-00001.parquet"]
    write_commit([str(tmp_path / named[0])], str(tmp_path), 4, {}, {}, {}, 0)
    assert read_commits(str(tmp_path))[-1]["files"] == named
