"""The portable path: the job on PortableRunner with SDK workers in separate processes started
by a Beam worker pool on loopback, giving the same rows as the DirectRunner."""

from __future__ import annotations

import subprocess
import sys

import pytest

from beam_pipeline.main import run
from tests._servers import free_port, start_server, stop_server, venv_env
from tests.conftest import check_run, job_args

pytestmark = pytest.mark.e2e  # runs the job, subprocesses or builds: the slow tier


@pytest.fixture()
def worker_pool(tmp_path):
    """A Beam worker pool on a free loopback port; yields (port, log file), stops pool and
    workers."""
    port = free_port()
    log = tmp_path / "worker_pool.log"
    pool = start_server(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
         f"--service_port={port}"],
        port, log, timeout=60, env=venv_env())
    try:
        yield port, log
    finally:
        stop_server(pool)


def test_workers_can_import_the_project():
    # Workers are started as plain `python` from PATH: with the venv first, that interpreter
    # must import both packages and find the bundled models package (pip install -e .).
    probe = ("import beam_pipeline, transforms, models, transforms.model_files as m; "
             "print(m.resolve_model_path(m.DEFAULT_DETECTOR))")
    out = subprocess.run(["python", "-c", probe], env=venv_env(), capture_output=True,
                         text=True, timeout=60, check=True, cwd="/")
    assert out.stdout.strip().endswith("models/detector/saved_model")


def test_portable_runner_gives_the_direct_runners_rows(worker_pool, models_dir, image_dir,
                                                       tmp_path):
    port, pool_log = worker_pool
    run(job_args(models_dir, image_dir, tmp_path / "direct"))
    run(job_args(models_dir, image_dir, tmp_path / "portable",
              "--runner=PortableRunner", "--job_endpoint=embed",
              "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"))
    direct = check_run(tmp_path / "direct", image_dir, models_dir)
    portable = check_run(tmp_path / "portable", image_dir, models_dir)
    assert portable == direct
    # The work ran in SDK workers the pool started, not in this process.
    assert "Starting worker with command" in pool_log.read_text(errors="replace")
