"""Progress of local runs: what workers count and what the launcher prints."""

from __future__ import annotations

from transforms.progress import CountProgress, format_progress, read_progress
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
