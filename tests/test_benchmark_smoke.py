"""The pipeline benchmark runs end to end on tiny inputs and prints its table (no timing checks)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pipeline_benchmark_prints_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline_benchmark", "--images", "3", "--tiny",
         "--rows", "c", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(c) pipeline, DirectRunner in process" in result.stdout
    assert "images/s" in result.stdout
