"""The output folder's lock: one run at a time writes a local --output, whatever --commit_every;
the launcher holds it from before --overwrite deletes anything until the run has finished, and
releases it however the run ends. These refuse or fail before any pipeline runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from beam_pipeline import main as entry
from beam_pipeline.commits import RunStopped
from beam_pipeline.run_lock import RunLock, RunLocked
from tests.conftest import job_args
from transforms.output_folder import RUN_LOCK, delete_tables


def _files(folder) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _argv(models_dir, image_dir, output, *extra, **overrides) -> list[str]:
    return job_args(models_dir, image_dir, output, "--progress=false", *extra, **overrides)


def _earlier_run(output) -> None:
    """What an earlier run of the job leaves: part files in both tables and the marker."""
    for table in ("detections", "images"):
        (output / table).mkdir(parents=True)
        (output / table / "part-00000-of-00001.parquet").write_bytes(b"PAR1")
    (output / "_SUCCESS").write_text("complete\n")


def _holder(output) -> dict:
    return json.loads((output / RUN_LOCK).read_text())


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _never_started(*args, **kwargs):
    raise AssertionError("the run started under another run's lock")


# -- The lock itself ---------------------------------------------------------------------------

def test_lock_refuses_a_live_run_and_takes_over_a_dead_ones(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunLocked, match=rf"being written by another run \(pid {os.getpid()}"):
            with RunLock(str(tmp_path)):
                pass
        with pytest.raises(RunLocked, match="; --overwrite deletes nothing while it runs: wait"):
            with RunLock(str(tmp_path), overwrite=True):
                pass
    assert not (tmp_path / RUN_LOCK).exists()
    (tmp_path / RUN_LOCK).write_text(json.dumps(
        {"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier"}))
    with RunLock(str(tmp_path)):
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / RUN_LOCK).exists()


def test_lock_is_not_taken_on_object_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RunLock("s3://bucket/results/day1"):
        assert os.listdir(tmp_path) == []


def test_delete_tables_never_deletes_the_run_lock(tmp_path):
    _earlier_run(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with RunLock(str(tmp_path)):
        assert delete_tables(str(tmp_path)) == []  # the lock is the run's, not "left alone"
        assert sorted(_files(tmp_path)) == [RUN_LOCK]
        assert _holder(tmp_path)["pid"] == os.getpid()


# -- A run against a held lock: refused before it deletes or writes anything ----------------

@pytest.mark.parametrize("commit_every", ["0", "1"])
def test_a_run_refuses_a_live_lock_in_one_line_and_touches_nothing(
        models_dir, image_dir, tmp_path, monkeypatch, capsys, commit_every):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    monkeypatch.setattr(entry, "_execute", _never_started)
    with RunLock(str(output)):
        before = _files(output)
        with pytest.raises(SystemExit) as exited:
            entry.main(_argv(models_dir, image_dir, output, f"--commit_every={commit_every}"))
        assert _files(output) == before
    assert exited.value.code == entry.EXIT_CONFIG == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: --output {output} is being written by another run (pid {os.getpid()} on "), lines


def test_a_live_lock_refuses_before_the_checks_load_the_models(models_dir, image_dir, tmp_path,
                                                                monkeypatch, capsys):
    import beam_pipeline.validation as validation

    def loads_models(*_args, **_kwargs):
        raise AssertionError("the checks ran (and loaded the models) under a live lock")

    monkeypatch.setattr(validation, "validate", loads_models)
    output = tmp_path / "out"
    with RunLock(str(output)):
        with pytest.raises(SystemExit) as exited:
            entry.main(_argv(models_dir, image_dir, output, "--commit_every=0"))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is being written by another run" in lines[0], lines


def test_overwrite_under_a_live_lock_deletes_nothing(models_dir, image_dir, tmp_path,
                                                     monkeypatch, capsys):
    output = tmp_path / "out"
    _earlier_run(output)
    monkeypatch.setattr(entry, "_execute", _never_started)
    with RunLock(str(output)):
        before = _files(output)
        with pytest.raises(SystemExit) as exited:
            entry.main(_argv(models_dir, image_dir, output, "--commit_every=0", "--overwrite"))
        assert _files(output) == before
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--overwrite deletes nothing while it runs" in lines[0], lines


# -- The lock held through the run, released however it ends ---------------------------------

def test_the_lock_is_held_through_a_run_and_released_after_it(models_dir, image_dir, tmp_path,
                                                              monkeypatch):
    output = tmp_path / "out"
    _earlier_run(output)
    seen = []

    def execute(options, config, **kwargs):
        # --overwrite has deleted the earlier run by now, under this run's lock.
        seen.append((_holder(output)["pid"], sorted(_files(output))))
        return {}

    monkeypatch.setattr(entry, "_execute", execute)
    entry.run(_argv(models_dir, image_dir, output, "--commit_every=0", "--overwrite"))
    assert seen == [(os.getpid(), [RUN_LOCK])]
    assert not (output / RUN_LOCK).exists()


@pytest.mark.parametrize(("commit_every", "raised"), [("0", RuntimeError), ("1", RunStopped)])
def test_a_failed_run_releases_the_lock_and_leaves_no_tables(models_dir, image_dir, tmp_path,
                                                             monkeypatch, commit_every, raised):
    output = tmp_path / "out"
    held = []

    def failing_graph(pipeline, config):
        held.append(_holder(output)["pid"])
        raise RuntimeError("injected fault while building the graph")

    monkeypatch.setattr("beam_pipeline.pipeline.build_pipeline", failing_graph)
    with pytest.raises(raised, match="injected fault"):
        entry.run(_argv(models_dir, image_dir, output, f"--commit_every={commit_every}"))
    assert held == [os.getpid()]
    assert _files(output) == {}  # no lock, no table: the folder validation made, empty


def test_a_stale_lock_is_taken_over_by_a_run_without_commits(models_dir, image_dir, tmp_path,
                                                             monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    (output / RUN_LOCK).write_text(json.dumps(
        {"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier"}))
    held = []
    monkeypatch.setattr(entry, "_execute",
                        lambda options, config, **kwargs: held.append(_holder(output)) or {})
    entry.run(_argv(models_dir, image_dir, output, "--commit_every=0"))
    assert [holder["pid"] for holder in held] == [os.getpid()]
    assert not (output / RUN_LOCK).exists()


def test_a_config_mistake_leaves_no_lock_and_no_folder(models_dir, image_dir, tmp_path,
                                                       monkeypatch, capsys):
    output = tmp_path / "new" / "out"
    monkeypatch.setattr(entry, "_execute", _never_started)
    with pytest.raises(SystemExit) as exited:
        entry.main(_argv(models_dir, image_dir, output, "--commit_every=0",
                         detector_model=models_dir / "colors.keras"))
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not output.exists()
