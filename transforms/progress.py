"""Progress of a local run: workers count what they finish into small files in a local folder,
and a thread in the launcher sums them and prints one line to stderr at most every 10 seconds.

Files rather than Beam metrics: the DirectRunner reports metrics only when the run is over, and
in ``multi_processing`` mode the work happens in other processes. Only the DirectRunner gets a
folder; distributed runners show progress in their own UI.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Optional, TextIO

import apache_beam as beam

from transforms.records import STATUS_ERROR

__all__ = ["CountProgress", "ProgressPrinter", "RateMeter", "format_progress", "read_progress"]

_WRITE_EVERY_S = 1.0


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

    def setup(self) -> None:
        self._path = os.path.join(self._folder, f"{self._kind}-{os.getpid()}-"
                                                f"{uuid.uuid4().hex[:8]}.json")

    def process(self, element):
        self._count += 1
        if getattr(element, "status", None) == STATUS_ERROR:
            self._errors += 1
        now = time.monotonic()
        if now - self._written_at >= _WRITE_EVERY_S:
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


def format_progress(totals: dict[str, int], rate: Optional[float]) -> str:
    """``progress: 1200/5000 images (24%), 31.5 images/s, 3 errors, about 2 min left``.

    ``rate``: images/s measured since the first image was done (``RateMeter``); None until it
    can be, and then the line has no rate and no estimate: a rate counted from the start would
    include the start-up and promise hours for a run of a minute.
    """
    done, queued, errors = totals.get("done", 0), totals.get("queued", 0), totals.get("errors", 0)
    if queued and queued >= done:
        text = f"progress: {done}/{queued} images ({100 * done / queued:.0f}%)"
    else:
        text = f"progress: {done} images"
    if rate is not None:
        text += f", {rate:.1f} images/s"
    text += f", {errors} errors"
    if queued > done and rate:
        left = (queued - done) / rate
        text += f", about {left:.0f} s left" if left < 120 else f", about {left / 60:.0f} min left"
    return text


class RateMeter:
    """Images/s between the first reading with an image done and the latest reading."""

    def __init__(self) -> None:
        self._first: Optional[tuple[float, int]] = None

    def update(self, done: int, now: float) -> Optional[float]:
        """The rate so far, or None while fewer than two readings have images done."""
        if self._first is None:
            if done > 0:
                self._first = (now, done)
            return None
        since, done_then = self._first
        if now <= since or done <= done_then:
            return None
        return (done - done_then) / (now - since)


class ProgressPrinter:
    """Prints ``format_progress`` of ``folder`` every ``interval`` seconds while running."""

    def __init__(self, folder: str, *, interval: float = 10.0, stream: TextIO = sys.stderr):
        self._folder = folder
        self._interval = interval
        self._stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        meter = RateMeter()
        while not self._stop.wait(self._interval):
            totals = read_progress(self._folder)
            rate = meter.update(totals.get("done", 0), time.monotonic())
            if totals.get("queued", 0) or totals.get("done", 0):
                print(format_progress(totals, rate), file=self._stream, flush=True)
