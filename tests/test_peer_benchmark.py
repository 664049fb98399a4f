"""The peer benchmark: its row check, its refusal of impossible CPU, and a tiny run of it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks._measure import Run, whole_process
from benchmarks.peer_benchmark import RowsDisagree, compare_rows, format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION = (0, (0.1, 0.2, 0.3, 0.4), 0.9, 2, 0.8)


def _run(*, cpu: float, seconds: float = 10.0) -> Run:
    samples = [(t / 10, cpu * t / (10 * seconds), 100 << 20) for t in range(int(seconds * 10) + 1)]
    return Run(start=0.0, end=seconds, samples=samples, stamps=[2.0, 3.0], info={}, processes=3,
               cpu=cpu)


def test_compare_rows_accepts_float_noise():
    noisy = (0, (0.1 + 1e-6, 0.2, 0.3, 0.4), 0.9 - 1e-6, 2, 0.8)
    compare_rows({"x.jpg": [noisy]}, {"x.jpg": [REGION]}, "b")


@pytest.mark.parametrize("rows", [
    {},  # an image missing
    {"x.jpg": []},  # a region missing
    {"x.jpg": [(0, (0.1, 0.2, 0.3, 0.5), 0.9, 2, 0.8)]},  # another box
    {"x.jpg": [(0, (0.1, 0.2, 0.3, 0.4), 0.9, 1, 0.8)]},  # another class
    {"x.jpg": [(0, (0.1, 0.2, 0.3, 0.4), 0.8, 2, 0.8)]},  # another score
])
def test_compare_rows_refuses_other_detections(rows):
    with pytest.raises(RowsDisagree):
        compare_rows(rows, {"x.jpg": [REGION]}, "b")


def test_whole_process_counts_cpu_per_image_and_refuses_more_cores_than_there_are():
    good = whole_process(_run(cpu=15.0), 100, cores=2)
    assert good["reason"] is None
    assert good["cpu_ms"] == pytest.approx(150.0)
    assert good["startup_s"] == pytest.approx(2.0)
    bad = whole_process(_run(cpu=26.0), 100, cores=2)
    assert "2.60 cores busy" in bad["reason"]


def test_format_table_prints_not_measurable_instead_of_figures():
    good = dict(whole_process(_run(cpu=15.0), 100, cores=2), load=(0.5, 0.6), choice="")
    bad = dict(whole_process(_run(cpu=26.0), 100, cores=2), load=(0.5, 0.6), choice="")
    table = format_table({100: {"a": [good], "b": [good], "c": [bad]}}, cores=2)
    row_c = next(line for line in table.splitlines() if line.startswith("(c)"))
    assert "not measurable: 2.60 cores busy" in row_c
    assert "x " not in row_c


def test_format_table_without_the_peers_prints_no_ratio():
    run = dict(whole_process(_run(cpu=15.0), 100, cores=2), load=(0.5, 0.6), choice="")
    table = format_table({100: {"e": [run, run], "f": [run, run]}}, cores=2)
    rows = [line for line in table.splitlines() if line.startswith(("(e)", "(f)"))]
    assert len(rows) == 2 and all(line.split()[-3:-1] == ["-", "-"] for line in rows)
    assert "per round" not in table


@pytest.mark.e2e
def test_peer_benchmark_runs_and_rows_agree(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.peer_benchmark", "--tiny", "--images", "12",
         "--rounds", "1", "--out", str(tmp_path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows agree" in result.stdout
    for label in ("(a) plain loop", "(b) tf.data pipeline", "(c) job default command"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(label))
        assert "not measurable" not in line, line
