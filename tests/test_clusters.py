"""The engines tier on a real cluster: a Flink session cluster of separate processes
(``scripts/flink_cluster.sh``: a JobManager, two TaskManagers and Beam's EXTERNAL worker pool on
loopback) survives the kill of the SDK worker process that is detecting, a third of the way in.

The cluster's Flink comes from PyPI (``apache-flink-libraries``, fetched once into
``.engines/``), its job server from ``scripts/engines.sh flink``; without Java, or when a fetch
fails, the test skips with the reason. The cluster is stopped however the test ends.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import _clusters as clusters
from benchmarks.cluster_faults import run_once, scene, start_scene
from tests.test_engines import fetch_engine

pytestmark = pytest.mark.engines

IMAGES = 12
DELAY_MS = 500  # per image, without CPU: the kill lands with about 4 s of detecting left


@pytest.fixture(scope="module")
def flink_cluster(tmp_path_factory):
    """(a started Flink cluster with the recommended restart strategy, fixed-delay with 3
    attempts; the scene, built while the cluster starts). The cluster is stopped at the end
    of the module, also when a test fails."""
    if shutil.which("java") is None:
        pytest.skip("java not found on PATH: the Flink cluster needs it")
    fetch_engine("flink")
    state = tmp_path_factory.mktemp("flink-cluster")
    fetched = clusters.script("flink", "fetch", state)
    if fetched.returncode != 0:
        pytest.skip(f"scripts/flink_cluster.sh fetch failed (exit {fetched.returncode}): "
                    + " | ".join(fetched.stderr.strip().splitlines()[-3:]))
    building = start_scene(tmp_path_factory.mktemp("scene"), IMAGES, DELAY_MS)
    try:
        cluster = clusters.start_cluster("flink", state, retries=True)
    except clusters.ClusterError as exc:
        building.kill()
        pytest.fail(str(exc))
    try:
        yield cluster, scene(building, IMAGES)
    finally:
        clusters.stop_cluster(cluster)


def test_flink_cluster_survives_a_killed_sdk_worker(flink_cluster, tmp_path):
    cluster, built = flink_cluster
    detector_log = Path(built["detector"] + ".progress.log")
    calls_before = clusters.count_lines(detector_log)
    result = run_once(cluster, built, tmp_path / "out", "sdk", kill_at=1 + IMAGES // 3)
    assert result["killed"].startswith("pid "), result
    assert result["exit"] == 0, result
    # Flink restarted the failed tasks, and the detector ran again for the lost work.
    assert result["restarts"] >= 1, result
    assert clusters.count_lines(detector_log) - calls_before > 1 + IMAGES, result
    # Every input path exactly once, all rows of the one run, and its record complete.
    check = result["check"]
    assert (check["inputs"], check["images_rows"], check["missing"], check["repeated"]) == (
        IMAGES, IMAGES, 0, 0), check
    assert check["statuses"] == {"ok": IMAGES}, check
    assert check["detections_rows"] == IMAGES * 4 and check["run_ids"] == 1, check
    assert check["run_json"] == "complete", check
    assert check["counts"] == {"images_read": IMAGES, "images_ok": IMAGES,
                               "regions_written": IMAGES * 4}, check
    assert result["loaded"], result  # the summary's models line, from the final attempt
