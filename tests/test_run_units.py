"""Unit tests of the run record's last step and the printed summary: run_counts, finish_run,
read_run_record, collect_metrics and format_summary, as plain calls on a tmp_path folder."""

from __future__ import annotations

import json
import types

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.cells import DistributionData, DistributionResult
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metricbase import MetricName

from beam_pipeline.run_record import (
    RECORD_VERSION,
    ErrorGateFailed,
    finish_run,
    read_run_record,
    run_counts,
)
from beam_pipeline.summary import collect_metrics, format_summary
from transforms.records import METRICS_NAMESPACE

IMAGE_COUNTS = {"images": 10, "ok": 6, "error_read": 1, "error_decode": 1, "error_detect": 1,
                "error_classify": 1}
DETECTION_COUNTS = {"regions": 12, "classified": 9}
COUNTS = {
    "images_read": 10,
    "images_ok": 6,
    "images_skipped": 4,
    "errors_by_stage": {"read": 1, "decode": 1, "detect": 1, "classify": 1},
    "regions_kept": 15,
    "regions_written": 12,
    "regions_classified": 9,
    "regions_failed_classify": 3,
    "error_fraction": 0.4,
}


def test_run_counts_from_the_table_counts():
    assert run_counts(IMAGE_COUNTS, DETECTION_COUNTS, classify_failed=3, skipped=4) == COUNTS


def test_run_counts_of_a_run_with_no_rows_has_no_error_fraction():
    counts = run_counts({}, {}, classify_failed=0, skipped=7)
    assert counts == {
        "images_read": 0, "images_ok": 0, "images_skipped": 7,
        "errors_by_stage": {"read": 0, "decode": 0, "detect": 0, "classify": 0},
        "regions_kept": 0, "regions_written": 0, "regions_classified": 0,
        "regions_failed_classify": 0, "error_fraction": 0.0,
    }


def test_run_counts_rounds_the_error_fraction():
    counts = run_counts({"images": 3, "ok": 2, "error_decode": 1}, {}, 0, 0)
    assert counts["error_fraction"] == 0.333333


def _record() -> dict:
    return {"version": RECORD_VERSION, "run_id": "20261201T100000.000000Z-0000abcd",
            "status": "running", "started": "2026-12-01T10:00:00.000Z", "ended": None,
            "fingerprint": "fp-1"}


def _created_names(monkeypatch) -> list[str]:
    """Records the names FileSystems.create writes, in order."""
    names: list[str] = []
    create = FileSystems.create

    def recording(path, *args, **kwargs):
        names.append(path.rsplit("/", 1)[-1])
        return create(path, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "create", staticmethod(recording))
    return names


def test_finish_run_writes_success_then_the_complete_record(tmp_path, monkeypatch):
    created = _created_names(monkeypatch)
    record = _record()
    finish_run(2, str(tmp_path), record, IMAGE_COUNTS, DETECTION_COUNTS, 3, 4, None)
    assert created == ["_SUCCESS", "run.json"]  # the record last: it says the run is done
    assert (tmp_path / "_SUCCESS").read_bytes() == b"complete\n"
    written = read_run_record(str(tmp_path))
    ended = written["ended"]
    assert ended.startswith("20") and ended.endswith("Z") and ended > record["started"]
    assert written == {**_record(), "status": "complete", "ended": ended, "counts": COUNTS,
                       "error_gate": {"max_error_fraction": None, "passed": True}}
    assert record == _record()  # the caller's record is left as it was


@pytest.mark.parametrize("max_error_fraction, passed", [
    (None, True), (1.0, True), (0.4, True), (0.39, False), (0.0, False),
])
def test_finish_run_error_gate(tmp_path, max_error_fraction, passed):
    args = (1, str(tmp_path), _record(), IMAGE_COUNTS, DETECTION_COUNTS, 3, 4,
            max_error_fraction)
    if passed:
        finish_run(*args)
    else:
        with pytest.raises(ErrorGateFailed,
                           match=r"4 of 10 images are errors \(40\.0%\), over --max_error_fr"):
            finish_run(*args)
    # Written whether the gate passes or not: the rows and the record are the run's result.
    assert (tmp_path / "_SUCCESS").exists()
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["status"] == "complete"
    assert written["error_gate"] == {"max_error_fraction": max_error_fraction, "passed": passed}


def test_read_run_record_none_when_absent(tmp_path):
    assert read_run_record(str(tmp_path)) is None


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": RECORD_VERSION + 1}),
                                  json.dumps([RECORD_VERSION])])
def test_read_run_record_refuses_what_is_not_a_record(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ValueError, match="run.json"):
        read_run_record(str(tmp_path) + "/")


def _metric(namespace, name, committed, attempted=None, step="Step"):
    return MetricResult(MetricKey(step, MetricName(namespace, name)), committed, attempted)


class _Result:
    def __init__(self, queried):
        self._queried = queried

    def metrics(self):
        return self

    def query(self, _filter):
        if isinstance(self._queried, Exception):
            raise self._queried
        return self._queried


def test_collect_metrics_names_sums_and_falls_back_to_attempted():
    distribution = DistributionResult(DistributionData(sum=750, count=3, min=200, max=300))
    result = _Result({
        "counters": [
            _metric(METRICS_NAMESPACE, "regions_kept", 5, step="CropRegions"),
            _metric(METRICS_NAMESPACE, "regions_kept", 2, step="CropRegions2"),
            # Spark's job server: committed None, attempted only.
            _metric(METRICS_NAMESPACE, "images_skipped", None, 4),
        ],
        "distributions": [
            _metric("DetectObjects", "load_model_latency_milli_secs", distribution),
            _metric(METRICS_NAMESPACE, "regions_per_image", None, None),
        ],
    })
    assert collect_metrics(result) == {
        "regions_kept": 7, "images_skipped": 4,
        "DetectObjects.load_model_latency_milli_secs.count": 3,
        "DetectObjects.load_model_latency_milli_secs.sum": 750,
    }


def test_collect_metrics_of_a_runner_that_reports_none():
    assert collect_metrics(_Result(NotImplementedError("no metrics"))) == {}


def _config(**record):
    return types.SimpleNamespace(detect=types.SimpleNamespace(min_score=0.35),
                                 run=types.SimpleNamespace(record=record, output="gs://b/out",
                                                           run_id="run-1"))


SUMMARY_RECORD = {
    "counts": COUNTS,
    "min_score": {"value": 0.35, "source": "the detector's metadata"},
    "models": {"detector": {"signature": "serving_default, uint8 [1, H, W, 3]"}},
}
SUMMARY_VALUES = {
    "regions_detected": 40, "regions_dropped_degenerate": 2,
    "DetectObjects.load_model_latency_milli_secs.count": 1,
    "ClassifyRegions.load_model_latency_milli_secs.count": 2,
}


def test_format_summary_of_a_complete_run():
    text = format_summary(SUMMARY_VALUES, SUMMARY_RECORD, _config(), startup_s=1.5,
                          run_s=2.0)
    assert text.splitlines() == [
        "images:  10 read, 6 ok, 4 skipped as done; errors by stage: read 1, decode 1, "
        "detect 1, classify 1",
        "regions: 40 detected, 15 kept, 9 classified, 2 dropped as degenerate",
        "choices: --min_score 0.35 (from the detector's metadata)",
        "detector: serving_default, uint8 [1, H, W, 3]",
        "models:  detector loaded 1x, classifier loaded 2x",
        "time:    3.5 s (1.5 s start-up and checks, 2.0 s running, 5.0 images/s)",
        "output:  gs://b/out/detections/ and images/ (Parquet), run.json (run run-1)",
    ]


def test_format_summary_says_how_it_ran_and_what_it_skipped():
    config = _config(running="DirectRunner, in process",
                     skip_done_in={"patterns": ["results/*"],
                                   "complete_runs_with_this_fingerprint": ["a", "b"]})
    lines = format_summary(SUMMARY_VALUES, SUMMARY_RECORD, config, startup_s=0.0,
                           run_s=1.0).splitlines()
    assert "running: DirectRunner, in process" in lines
    assert "skipping: 2 earlier complete runs with this fingerprint" in lines


def test_format_summary_without_a_record_or_metrics():
    text = format_summary({}, None, _config(), startup_s=1.0, run_s=0.0)
    lines = text.splitlines()
    assert lines[0] == ("images:  0 read, 0 ok, 0 skipped as done; errors by stage: read 0, "
                        "decode 0, detect 0, classify 0")
    assert lines[1] == "regions: 0 detected, 0 kept, 0 classified, 0 dropped as degenerate"
    assert lines[2] == "choices: --min_score 0.35 (from )"
    assert lines[4] == ("models:  this runner reports no metrics to the launcher; counts "
                        "above come from the run record")
    assert lines[5] == "time:    1.0 s (1.0 s start-up and checks, 0.0 s running, 0.0 images/s)"
    assert lines[-1] == "warning: no run.json was written: the run is not complete"
