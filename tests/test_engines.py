"""The engine tier: the job on Prism, Flink and Spark, run here for real, giving the
DirectRunner's rows, its completion marker and (where the engine reports them) its metrics.

What each engine needs comes from ``scripts/engines.sh`` (Prism built with Go, the Flink and
Spark job servers from Maven; cached in ``.engines/``). Without Go, Java or Maven, or when the
fetch fails, each test skips with that reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from beam_pipeline.main import run
from tests.conftest import check_run, job_args, read_table

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parent.parent
FETCH_TIMEOUT_S = 1800  # a first Prism build took 15.7 min on 2 busy cores

# engine -> (tools scripts/engines.sh needs, the job's flags given the fetched path)
ENGINES = {
    "prism": (("go",), lambda path: [
        "--runner=PrismRunner", f"--prism_location={path}"]),
    "flink": (("java", "mvn", "jar"), lambda path: [
        "--runner=FlinkRunner", "--flink_master=[local]", f"--flink_job_server_jar={path}",
        "--parallelism=2", "--environment_type=LOOPBACK"]),
    "spark": (("java", "mvn", "jar"), lambda path: [
        "--runner=SparkRunner", "--spark_master_url=local[2]", f"--spark_job_server_jar={path}",
        "--environment_type=LOOPBACK"]),
}



def fetch_engine(engine: str) -> str:
    """The path ``scripts/engines.sh`` prints for ``engine``; skips the test, saying why,
    when a tool is missing or the fetch or build fails."""
    tools, _ = ENGINES[engine]
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found on PATH: the {engine} engine needs it")
    try:
        done = subprocess.run([str(ROOT / "scripts" / "engines.sh"), engine],
                              check=False, cwd=ROOT, capture_output=True, text=True,
                              timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"scripts/engines.sh {engine} ran past {FETCH_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.skip(f"scripts/engines.sh {engine} failed (exit {done.returncode}): "
                    + " | ".join(done.stderr.strip().splitlines()[-4:]))
    path = done.stdout.strip().splitlines()[-1]
    assert os.path.exists(path), f"scripts/engines.sh {engine} printed {path!r}: not a file"
    return path


class Run(NamedTuple):
    """One finished run of the job: its output folder, returned metrics and printed summary."""

    output: Path
    metrics: dict[str, float]
    summary: str


@pytest.fixture(scope="module")
def runs(models_dir, image_dir, tmp_path_factory):
    """``runs(engine)``: the job on the shared scene on ``engine`` ("direct" for the
    DirectRunner), run once per module and kept for the tests that read it."""
    done: dict[str, Run] = {}

    def get(engine: str) -> Run:
        if engine not in done:
            flags = [] if engine == "direct" else ENGINES[engine][1](fetch_engine(engine))
            output = tmp_path_factory.mktemp(engine) / "out"
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                metrics = run(job_args(models_dir, image_dir, output, *flags))
            done[engine] = Run(output, metrics, printed.getvalue())
        return done[engine]

    return get


def completion_marker(output: Path) -> dict:
    """The run record when the job writes ``run.json``; else ``_SUCCESS`` (the marker before
    run records) must be there."""
    record = output / "run.json"
    if record.exists():
        return json.loads(record.read_text())
    assert (output / "_SUCCESS").exists(), f"no run.json and no _SUCCESS in {output}"
    return {"status": "complete"}


def job_metrics(values: dict[str, float]) -> dict[str, float]:
    """The counts that must not depend on the engine: the job's own counters and
    distributions' counts and sums, RunInference's inference and model-load counts."""
    # How many batches the elements came in depends on the runner's bundles (Flink and Spark
    # split the scene across 2 workers); the elements batched (the sums) do not.
    return {name: value for name, value in values.items()
            if not name.startswith("beam.metric:") and "latency" not in name
            and "msec" not in name and "byte_size" not in name
            and not (name.endswith("batch_size.count") or "num_batches" in name)}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engine_gives_the_direct_runners_rows(engine, runs, models_dir, image_dir):
    result = runs(engine)
    # Same rows, the broken image included (the images table and its dead letter).
    assert check_run(result.output, image_dir, models_dir) == check_run(
        runs("direct").output, image_dir, models_dir)
    record = completion_marker(result.output)
    assert record["status"] == "complete"
    if "counts" in record:
        assert record["counts"]["images_read"] == 4
        assert record["counts"]["errors_by_stage"]["decode"] == 1
    if "runner" in record:
        assert record["runner"] == ENGINES[engine][1]("x")[0].split("=")[1]
    assert "images:  4 read" in result.summary


@pytest.mark.parametrize("engine", ["prism", "flink", "spark"])
def test_engine_reports_the_direct_runners_metrics(engine, runs):
    # Spark's job server reports attempted values only; the summary falls back to them.
    assert job_metrics(runs(engine).metrics) == job_metrics(runs("direct").metrics)
    assert "models:  detector loaded 1x, classifier loaded 1x" in runs(engine).summary


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engine_skips_what_a_complete_run_did(engine, runs, models_dir, image_dir, tmp_path):
    # The archive-run steps on the engine: ReadAllFromParquet of the earlier images table and
    # the keyed join; only the earlier decode error is processed again.
    flags = ENGINES[engine][1](fetch_engine(engine))
    output = tmp_path / "again"
    with contextlib.redirect_stdout(io.StringIO()):
        run(job_args(models_dir, image_dir, output, *flags,
                     f"--skip_done_in={runs(engine).output}"))
    assert [row["image_path"] for row in read_table(output, "images")] == [
        str(image_dir / "broken.png")]
    record = json.loads((output / "run.json").read_text())
    assert record["counts"]["images_skipped"] == 3 and record["status"] == "complete"


def test_engine_prism_tiles_like_the_direct_runner(models_dir, image_dir, tmp_path):
    tiles = ["--tile_size=64", "--tile_overlap=0.25", "--tile_batch_size=2"]
    with contextlib.redirect_stdout(io.StringIO()):
        run(job_args(models_dir, image_dir, tmp_path / "direct", *tiles))
        run(job_args(models_dir, image_dir, tmp_path / "prism", *tiles,
                     *ENGINES["prism"][1](fetch_engine("prism"))))

    def rows(output, table):
        return [{k: v for k, v in row.items() if k != "run_id"}
                for row in read_table(output, table)]

    for table in ("detections", "images"):
        assert rows(tmp_path / "prism", table) == rows(tmp_path / "direct", table)
    assert rows(tmp_path / "direct", "detections")  # tiles found something to compare
