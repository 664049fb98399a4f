"""The pipeline benchmark: its steady-state arithmetic, and a tiny end-to-end run of its table."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from benchmarks._measure import Run, steady_state
from benchmarks.pipeline_benchmark import ROWS, format_table, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*, cpu_per_s: float, images: int = 100, seconds: float = 10.0) -> Run:
    """A run that starts at t=0, sends one image out of the detector every seconds/images from
    t=2, and burns ``cpu_per_s`` CPU seconds every wall second."""
    stamps = [2.0 + i * seconds / images for i in range(images)]
    end = stamps[-1] + 1.0
    samples = [(t / 10, cpu_per_s * t / 10, 100 << 20) for t in range(int(end * 10) + 1)]
    return Run(start=0.0, end=end, samples=samples, stamps=stamps, info={}, processes=3,
               cpu=cpu_per_s * end)


def test_steady_state_times_the_middle_80_percent():
    figures = steady_state(_run(cpu_per_s=1.5), 100, cores=2)
    assert figures["reason"] is None
    assert figures["images_s"] == pytest.approx(10.0)  # 80 images in 8 s
    assert figures["cores_busy"] == pytest.approx(1.5, rel=1e-3)
    assert figures["cpu_ms"] == pytest.approx(150.0, rel=1e-3)
    assert figures["startup_s"] == pytest.approx(2.0)


def test_steady_state_refuses_more_cores_than_the_machine_has():
    figures = steady_state(_run(cpu_per_s=2.6), 100, cores=2)
    assert figures["reason"] is not None and "2.60 cores busy" in figures["reason"]


def test_steady_state_refuses_missing_progress_and_short_windows():
    assert "logged 100 of 200" in steady_state(_run(cpu_per_s=1.0), 200, cores=2)["reason"]
    short = steady_state(_run(cpu_per_s=1.0, seconds=0.5), 100, cores=2)
    assert "shorter than" in short["reason"]


def test_format_table_prints_not_measurable_instead_of_a_rate():
    good = dict(steady_state(_run(cpu_per_s=1.0), 100, cores=2), load=(0.5, 0.6))
    bad = dict(steady_state(_run(cpu_per_s=3.0), 100, cores=2), load=(0.5, 0.6))
    results = {"a": dict(summarize([good]), images=100),
               "c": dict(summarize([good, bad]), images=100)}
    table = format_table(results, cores=2)
    row_c = next(line for line in table.splitlines() if line.startswith(ROWS["c"][0]))
    assert "not measurable: 3.00 cores busy" in row_c
    assert "x " not in row_c  # no ratio against (a) either


@pytest.mark.e2e
def test_pipeline_benchmark_prints_finite_positive_rates(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline_benchmark", "--tiny", "--images", "40",
         "--free_images", "200", "--rows", "cef", "--repeat", "1", "--min_window", "0.01",
         "--out", str(tmp_path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rates = {}
    for row in "cef":
        line = next(line for line in result.stdout.splitlines() if line.startswith(ROWS[row][0]))
        assert "not measurable" not in line, line
        rates[row] = float(re.search(r"\s(\S+) \[\S+-\S+\]", line).group(1))
    assert all(math.isfinite(rate) and rate > 0 for rate in rates.values()), rates
    for images, table in ((40, "c_40"), (200, "f_200")):
        import pyarrow.parquet as pq

        paths = pq.read_table(tmp_path / "runs" / table / "images").column("image_path")
        assert sorted(paths.to_pylist()) == sorted(set(paths.to_pylist()))
        assert len(paths) == images
