"""The entry point: what it reads from the command line before the job runs."""

from __future__ import annotations

import contextlib

import pytest

from beam_pipeline import main as entry


@pytest.mark.parametrize(("flag", "quiet"), [
    ("--verbose", False), ("--verbose=yes", False), ("--verbose=1", False),
    ("--verbose=true", False), ("--verbose=no", True), ("--verbose=false", True), (None, True)])
def test_main_reads_verbose_from_the_parsed_value(monkeypatch, flag, quiet):
    seen = []

    @contextlib.contextmanager
    def recording(*, enabled):
        seen.append(enabled)
        yield

    monkeypatch.setattr(entry, "quiet_startup", recording)
    monkeypatch.setattr(entry, "run", lambda argv: {})
    entry.main(["--input=in", "--output=out", *([flag] if flag else [])])
    assert seen == [quiet]


def test_main_says_a_failed_job_in_one_line(monkeypatch, capsys):
    # What a Flink or Spark job that the engine gave up on raises from wait_until_finish.
    def failing(argv):
        raise RuntimeError("Pipeline BeamApp-x failed in state FAILED: java.lang.Exception: "
                           "CANCELLED: client cancelled\n\tat org.apache.flink.Foo(Foo.java:1)")

    monkeypatch.setattr(entry, "run", failing)
    with pytest.raises(SystemExit) as exited:
        entry.main(["--input=in", "--output=out"])
    assert exited.value.code == entry.EXIT_ERROR == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the job failed (RuntimeError: Pipeline")
    assert "client cancelled" in lines[0] and "Foo.java" not in lines[0]
    assert "--commit_every" in lines[0]


def test_quiet_cuts_a_failed_jobs_engine_trace_to_one_line():
    import logging

    from beam_pipeline.quiet import _DropNoise

    record = logging.LogRecord(
        "root", logging.ERROR,
        "/venv/lib/apache_beam/runners/portability/portable_runner.py", 540, "%s",
        ("org.apache.spark.SparkException: Job aborted due to stage failure\n\tat "
         "org.apache.spark.Foo(Foo.scala:1)",), None)
    assert _DropNoise().filter(record)
    assert record.getMessage() == ("org.apache.spark.SparkException: Job aborted due to stage "
                                   "failure (trace: --verbose)")
