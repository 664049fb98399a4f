"""The README's ways to read the output run as written, in this environment, on a real run; and
``--help`` lists every option the README's table documents."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline.main import run
from beam_pipeline.options import job_option_names
from beam_pipeline.runs import latest_view
from tests.conftest import job_args

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The README shows how to read one run; docs/output.md how to read across runs.
OUTPUT_DOC = (ROOT / "docs" / "output.md").read_text(encoding="utf-8")
OPTIONS_DOC = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return [block for text in (README, OUTPUT_DOC)
            for block in re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)]


@pytest.fixture(scope="module")
def results(models_dir, image_dir, tmp_path_factory):
    """Two complete runs (the second stricter) in results/, and output/sample as a copy of the
    first, laid out as the README's examples expect (paths relative to the working folder)."""
    root = tmp_path_factory.mktemp("readme")
    run(job_args(models_dir, image_dir, root / "results" / "day1"))
    run(job_args(models_dir, image_dir, root / "results" / "day2", "--min_score=0.65"))
    shutil.copytree(root / "results" / "day1", root / "output" / "sample")
    return root


def _run_python(code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.e2e
def test_readme_pyarrow_example_runs(results):
    (block,) = [b for b in _blocks("python") if "output/sample" in b]
    printed = _run_python(block, results)
    assert "label" in printed and "broken.png" in printed  # labels counted; the error listed


@pytest.mark.e2e
def test_readme_sql_examples_run_in_duckdb(results):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in requirements-test.lock")
    by_label, latest = [block for block in _blocks("sql")]
    with duckdb.connect() as db:
        db.execute(f"SET file_search_path = '{results}'")
        counts = db.execute(by_label).fetchall()
        assert sum(row[1] for row in counts) == 9 and {row[0] for row in counts} == {
            "red", "green", "blue"}
        rows = db.execute(latest).to_arrow_table()
    expected = latest_view([str(results / "results" / "*")], "detections")
    key = ("image_path", "roi_index", "run_id")
    assert sorted(zip(*(rows[k].to_pylist() for k in key))) == sorted(
        zip(*(expected[k].to_pylist() for k in key)))
    assert len(rows) == 6  # the newer, stricter run's rows only


@pytest.mark.e2e
def test_readme_latest_view_python_example_runs(results):
    (block,) = [b for b in _blocks("python") if "latest_view" in b]
    printed = _run_python(block + "\nprint(table.num_rows, table.column_names)", results)
    assert printed.split()[0] == "6"


def test_help_lists_every_option_with_its_default():
    out = subprocess.run([sys.executable, "-m", "beam_pipeline", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: python -m beam_pipeline")
    documented = re.findall(r"^\| `--(\w+)` \|", OPTIONS_DOC, re.MULTILINE)
    assert sorted(documented) == sorted(job_option_names())
    for name in documented:
        assert f"--{name}" in out.stdout, name
    assert out.stdout.count("(default:") >= len(documented) - 2  # --input/--output: required
    assert "pipeline_options" in out.stdout  # where Beam's own options are documented
