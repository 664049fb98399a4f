"""Faults on real local clusters, measured: the job on the Flink session cluster and the Spark
standalone cluster of ``scripts/flink_cluster.sh`` / ``scripts/spark_cluster.sh``, with one
process killed (SIGKILL) once about a third of the images have left the detector.

    .venv/bin/python benchmarks/cluster_faults.py [--engine flink|spark|both] [--images 90]
        [--delay_ms 300] [--scenarios none,sdk,worker,fail,resume] [--out benchmarks/out/faults]

Scenarios, each printed as one line with the exit code, wall time, restarts the engine logged,
the rows checked and what the user saw last:
- ``none``: no fault (the job's wall time on the cluster);
- ``sdk``: the busiest SDK worker process (a child of the worker pool) is killed, retries on
  (Flink: the cluster's fixed-delay restart strategy, 3 attempts; Spark: spark.task.maxFailures 4);
- ``worker``: a TaskManager (Flink) or a Spark worker is killed, retries on, on a fresh cluster;
- ``fail``: the SDK-worker kill with retries off (Flink: restart-strategy none; Spark:
  spark.task.maxFailures 1), without commits: what the user sees;
- ``resume``: the same with ``--commit_every`` a third of the images (the kill in the second
  step), then that same command again, without a fault: it resumes from the commits.

Standard library only (the scene and the Parquet check run in the venv as subprocesses). The
detector is the benchmark's ``free`` one that waits ``--delay_ms`` per image without using the
CPU and logs each call, which is how the run is watched. Clusters are stopped in every case.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _clusters as clusters  # noqa: E402

JOB_TIMEOUT_S = 900


def start_scene(out: Path, images: int, delay_ms: int) -> subprocess.Popen:
    """Builds (or finds cached) ``images`` images and the free models, with a detector that
    waits ``delay_ms`` per call, under ``out/scene``; ``scene`` reads the result."""
    return subprocess.Popen(
        [clusters.PYTHON, "-m", "benchmarks._assets", "--out", str(out / "scene"),
         "--free_sizes", str(images), "--delay_ms", str(delay_ms)],
        cwd=clusters.ROOT, stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(clusters.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
             "PATH": "/usr/bin:/bin"})


def scene(process: subprocess.Popen, images: int) -> dict:
    stdout, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"benchmarks._assets failed (exit {process.returncode})")
    free = json.loads(stdout.strip().splitlines()[-1])["free"]
    return {"manifest": Path(free["manifests"][str(images)]), "detector": free["detector"],
            "classifier": free["classifier"], "labels": free["labels"], "images": images}


def job_argv(scene: dict, output: Path, cluster: clusters.Cluster, *extra: str) -> list[str]:
    return [f"--input={scene['manifest']}", f"--output={output}",
            f"--detector_model={scene['detector']}", f"--classifier_model={scene['classifier']}",
            f"--classifier_labels={scene['labels']}", *cluster.flags, *extra]


def run_once(cluster, scene, output: Path, fault: str, *extra: str, kill_at: int = 0,
             log: Path | None = None) -> dict:
    """One job on ``cluster``; ``fault`` (none, sdk, worker) once the detector has logged
    ``kill_at`` more calls than before the launch. Returns the measured line's fields."""
    log = log or output.with_suffix(".log")
    detector_log = Path(scene["detector"] + ".progress.log")
    base = clusters.count_lines(detector_log)
    restarts_before = clusters.restarts(cluster)
    began = time.monotonic()
    job = clusters.start_job(job_argv(scene, output, cluster, *extra), log)
    killed = "-"
    if fault != "none" and clusters.wait_for_lines(detector_log, base + kill_at, job,
                                                   JOB_TIMEOUT_S):
        seen = clusters.count_lines(detector_log) - base
        pid = (clusters.busiest_sdk_worker(cluster) if fault == "sdk"
               else cluster.pid(clusters.WORKER[cluster.engine]))
        killed = f"pid {pid} at {seen} calls" if clusters.kill(pid) else "nothing to kill"
    code = clusters.finish_job(job, JOB_TIMEOUT_S)
    text = log.read_text(errors="replace")
    loaded = re.search(r"models:\s+detector loaded (\d+)x", text)
    lines = [line for line in text.splitlines() if line.startswith(("error:", "time:"))]
    return {"exit": "hung" if code is None else code,
            "wall_s": round(time.monotonic() - began, 1), "killed": killed,
            "restarts": clusters.restarts(cluster) - restarts_before,
            "loaded": loaded and loaded.group(1),
            "resumed": (re.search(r"resumed: (\d+ images from \d+ earlier commits)", text)
                        or [None, None])[1],
            "user_saw": lines[-1][:200] if lines else text.strip().splitlines()[-1][:200],
            "check": clusters.check_output(output, scene["manifest"]), "log": str(log)}


def scenarios(engine: str, wanted: list[str], scene: dict, out: Path) -> list[tuple]:
    """(scenario, result) pairs; each cluster stopped before the next starts."""
    third = scene["images"] // 3
    results = []
    out.mkdir(parents=True, exist_ok=True)

    def report(name: str, result: dict) -> None:
        print(f"{name}: {json.dumps(result)}", flush=True)
        results.append((name, result))

    def on_cluster(name: str, retries: bool, runs):
        cluster = clusters.start_cluster(engine, out / f"{engine}-{name}-state", retries=retries)
        report(f"{engine} cluster start ({name})", {"start_s": round(cluster.start_s, 1)})
        try:
            for label, folder, fault, extra, kill_at in runs:
                output = out / f"{engine}-{folder}"
                log = out / f"{engine}-{label}.log"
                report(f"{engine} {label}", run_once(
                    cluster, scene, output, fault, *extra, kill_at=kill_at, log=log))
        finally:
            clusters.stop_cluster(cluster)

    base = [(name, name, name, (), 1 + third) for name in ("none", "sdk") if name in wanted]
    if base:
        on_cluster("retries", True, base)
    if "worker" in wanted:
        on_cluster("worker", True, [("worker", "worker", "worker", (), 1 + third)])
    commit = (f"--commit_every={third}",)
    runs = [("norestart", "norestart", "sdk", (), 1 + third)] if "fail" in wanted else []
    if "resume" in wanted:  # the kill in the second of three commit steps, then the same again
        runs += [("norestart-commits", "commits", "sdk", commit, 1 + third + max(2, third // 3)),
                 ("norestart-commits-rerun", "commits", "none", commit, 0)]
    if runs:
        on_cluster("no-retries", False, runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["flink", "spark", "both"], default="both")
    parser.add_argument("--images", type=int, default=90)
    parser.add_argument("--delay_ms", type=int, default=300)
    parser.add_argument("--scenarios", default="none,sdk,worker,fail,resume")
    parser.add_argument("--out", type=Path, default=clusters.ROOT / "benchmarks/out/faults")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    built = scene(start_scene(args.out, args.images, args.delay_ms), args.images)
    wanted = args.scenarios.split(",")
    engines = ["flink", "spark"] if args.engine == "both" else [args.engine]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for engine in engines:
        scenarios(engine, wanted, built, args.out / stamp)  # prints a line per result


if __name__ == "__main__":
    main()
