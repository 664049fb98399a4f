"""The progress line of a local run: a thread in the launcher sums what the workers counted
(``transforms.progress``) and prints one line to stderr at most every 10 seconds, with a rate
and the time left once a rate has been measured."""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO

from transforms.progress import read_progress

__all__ = ["ProgressPrinter", "RateMeter", "format_progress"]


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

    def __init__(self, folder: str, *, interval: float = 10.0,
                 stream: Optional[TextIO] = None):
        self._folder = folder
        self._interval = interval
        # Looked up now, not at import: whoever runs the job may have replaced sys.stderr since.
        self._stream = stream if stream is not None else sys.stderr
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
                try:
                    print(format_progress(totals, rate), file=self._stream, flush=True)
                except (OSError, ValueError):  # the stream was closed under us: stop printing
                    return
