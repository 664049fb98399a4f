"""Progress of a local run, the workers' side: each counts what it finishes into a small file in
a local folder, which the launcher's progress line (``beam_pipeline.progress``) sums.

Files rather than Beam metrics: the DirectRunner reports metrics only when the run is over, and
in ``multi_processing`` mode the work happens in other processes. Only the DirectRunner gets a
folder; distributed runners show progress in their own UI.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Optional

import apache_beam as beam

from transforms.records import STATUS_ERROR

__all__ = ["EVERY_ENV", "CountProgress", "read_progress"]

_WRITE_EVERY_S = 1.0
# How often each counter writes its file; ``--estimate`` asks its sample run for finer steps.
EVERY_ENV = "BDC_PROGRESS_EVERY_S"


def _write_every_s() -> float:
    try:
        return float(os.environ.get(EVERY_ENV, _WRITE_EVERY_S))
    except ValueError:
        return _WRITE_EVERY_S


class CountProgress(beam.DoFn):
    """Counts elements of one kind (``queued`` paths or ``done`` images rows) into ``folder``;
    ``done`` rows whose ``status`` is ``error`` are also counted as ``errors``.

    Each DoFn instance writes its own file (renamed into place, so readers never see half a
    file) at most once a second and when its bundle ends.
    """

    def __init__(self, folder: str, kind: str):
        self._folder = folder
        self._kind = kind
        self._count = 0
        self._errors = 0
        self._written_at = 0.0
        self._path: Optional[str] = None
        self._every = _WRITE_EVERY_S

    def setup(self) -> None:
        self._every = _write_every_s()
        self._path = os.path.join(self._folder, f"{self._kind}-{os.getpid()}-"
                                                f"{uuid.uuid4().hex[:8]}.json")

    def process(self, element):
        self._count += 1
        if getattr(element, "status", None) == STATUS_ERROR:
            self._errors += 1
        now = time.monotonic()
        if now - self._written_at >= self._every:
            self._write(now)
        yield element

    def finish_bundle(self) -> None:
        self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self._written_at = now
        if self._path is None or not os.path.isdir(self._folder):
            return
        temporary = self._path + ".tmp"
        try:
            with open(temporary, "w") as handle:
                json.dump({"kind": self._kind, "count": self._count, "errors": self._errors},
                          handle)
            os.replace(temporary, self._path)
        except OSError:
            pass  # progress is best effort; the run's results do not depend on it


def read_progress(folder: str) -> dict[str, int]:
    """Sums the counts of every worker's file in ``folder`` by kind."""
    totals = {"queued": 0, "done": 0, "errors": 0}
    try:
        names = os.listdir(folder)
    except OSError:
        return totals
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as handle:
                entry = json.load(handle)
            totals[entry["kind"]] = totals.get(entry["kind"], 0) + int(entry["count"])
            totals["errors"] += int(entry.get("errors", 0))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return totals
