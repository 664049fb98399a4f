"""The archive-rerun benchmark: its synthetic earlier run, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from beam_pipeline.runs import complete_outputs
from benchmarks._done_runs import done_path_array, write_done_run, write_manifest
from transforms.records import IMAGES_SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_done_run_is_a_complete_run_with_the_seed_fingerprint(tmp_path):
    seed = {"version": 1, "run_id": "20991231T000000.000000Z-00000000", "status": "complete",
            "fingerprint": "f" * 32, "counts": {"images_read": 1, "images_ok": 1}}
    paths = done_path_array(str(tmp_path), 0, 3).to_pylist()
    assert paths[2] == f"{tmp_path}/archive_not_on_disk/lot-00000/img-00000002.jpg"
    folder = write_done_run(str(tmp_path / "done_3"), seed, str(tmp_path), 3)
    [(found, record)] = complete_outputs([str(tmp_path / "*")])
    assert found == folder and record["fingerprint"] == seed["fingerprint"]
    assert record["run_id"] < seed["run_id"] and record["counts"]["images_ok"] == 3
    table = pq.read_table(os.path.join(folder, "images"))
    assert table.schema.equals(IMAGES_SCHEMA)
    assert table.column("image_path").to_pylist() == paths
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert not any(os.path.exists(path) for path in paths)
    listing = write_manifest(str(tmp_path / "m.txt"), ["/new/a.jpg"], str(tmp_path), 3)
    with open(listing) as handle:
        assert handle.read().split() == ["/new/a.jpg", *paths]


@pytest.mark.e2e
def test_skip_benchmark_checks_a_tiny_run(tmp_path):
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.skip_benchmark", "--new", "5", "--done", "40",
         "--out", str(tmp_path / "out"), "--json", str(figures)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(figures.read_text())
    assert runs["rerun"][0]["checked"]["record images_read"] == 0
    assert runs["rerun"][0]["checked"]["metric DetectObjects.num_inferences"] == 0
    for mode in ("one", "commits"):
        assert runs[f"done 40/{mode}"][0]["checked"]["record images_skipped"] == 40
        assert runs[f"done 40/{mode}"][0]["checked"]["record images_read"] == 5
    assert "done 40/commits" in done.stdout
