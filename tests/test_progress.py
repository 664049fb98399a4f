"""Progress of local runs: what workers count and what the launcher prints."""

from __future__ import annotations

from beam_pipeline.progress import RateMeter, format_progress
from transforms.progress import CountProgress, read_progress
from transforms.records import ImageRow


def _count(folder, kind, elements):
    counter = CountProgress(str(folder), kind)
    counter.setup()
    passed = [out for element in elements for out in counter.process(element)]
    counter.finish_bundle()
    return passed


def test_done_rows_are_counted_with_their_errors_and_passed_on(tmp_path):
    ok = ImageRow(image_path="a.png", status="ok")
    bad = ImageRow.failed("b.png", "decode", "not an image")
    assert _count(tmp_path, "queued", ["a.png", "b.png", "c.png"]) == ["a.png", "b.png", "c.png"]
    assert _count(tmp_path, "done", [ok, bad]) == [ok, bad]
    _count(tmp_path, "done", [ImageRow.failed("c.png", "classify", "3 of 3 regions failed")])
    assert read_progress(str(tmp_path)) == {"queued": 3, "done": 3, "errors": 2}


def test_progress_line_says_how_far_and_how_long():
    line = format_progress({"queued": 400, "done": 100, "errors": 2}, 10.0)
    assert line == "progress: 100/400 images (25%), 10.0 images/s, 2 errors, about 30 s left"
    assert read_progress("/nonexistent/folder") == {"queued": 0, "done": 0, "errors": 0}


def test_progress_line_has_no_estimate_before_a_rate_is_measured():
    line = format_progress({"queued": 3000, "done": 4, "errors": 0}, None)
    assert line == "progress: 4/3000 images (0%), 0 errors"


def test_rate_is_measured_from_the_first_image_done_not_from_the_start():
    meter = RateMeter()
    assert meter.update(0, 10.0) is None  # start-up: nothing done yet
    assert meter.update(4, 20.0) is None  # the first images: no interval to measure yet
    assert meter.update(4, 25.0) is None  # nothing new since
    assert meter.update(104, 30.0) == 10.0  # 100 images in the 10 s since the first reading


def test_printer_writes_to_the_stderr_of_its_run_and_stops_on_a_closed_stream(tmp_path,
                                                                           monkeypatch):
    import io
    import time

    from beam_pipeline.progress import ProgressPrinter

    _count(tmp_path, "queued", ["a.png", "b.png"])
    now = io.StringIO()
    monkeypatch.setattr("sys.stderr", now)  # replaced after the module was imported
    with ProgressPrinter(str(tmp_path), interval=0.05):
        time.sleep(0.3)
    assert now.getvalue().startswith("progress: 0/2 images")
    closed = io.StringIO()
    closed.close()
    printer = ProgressPrinter(str(tmp_path), interval=0.05, stream=closed)
    with printer:
        time.sleep(0.3)
    assert not printer._thread.is_alive()  # ended quietly, no exception in the thread
