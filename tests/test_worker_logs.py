"""Quiet worker processes: Beam's log level for them, and a whole multi_processing job's
stderr (the fd 2 filter itself: tests/test_hostile.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from beam_pipeline.quiet import worker_log_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_worker_log_flags_respect_verbose_and_the_users_own_setting():
    assert worker_log_flags([], verbose=False) == ("--default_sdk_harness_log_level=ERROR",)
    assert worker_log_flags([], verbose=True) == ()
    assert worker_log_flags(["--default_sdk_harness_log_level", "INFO"], verbose=False) == ()


@pytest.mark.e2e
def test_multi_processing_job_prints_only_progress_lines(models_dir, image_dir, tmp_path):
    from tests.conftest import job_args

    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "BDC_VERBOSE", "BDC_THREADS")}
    env["PYTHONPATH"] = ROOT
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipeline",
         *job_args(models_dir, image_dir, tmp_path / "out"),
         "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    others = [line for line in lines if not line.startswith("progress: ")]
    assert others == [], "\n".join(others)
