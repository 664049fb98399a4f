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
