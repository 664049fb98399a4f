"""The local clusters of ``scripts/flink_cluster.sh`` and ``scripts/spark_cluster.sh``, started,
watched and hurt from Python (standard library only): shared by ``benchmarks/cluster_faults.py``
and ``tests/test_clusters.py``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("PYTHON", str(ROOT / ".venv" / "bin" / "python"))
SCRIPTS = {"flink": ROOT / "scripts" / "flink_cluster.sh",
           "spark": ROOT / "scripts" / "spark_cluster.sh"}
# The process each script records for one of the two workers: the one a fault run kills.
WORKER = {"flink": "taskmanager-2", "spark": "worker-2"}


class ClusterError(RuntimeError):
    """A cluster script failed; the message holds its exit code and the end of its stderr."""


@dataclass
class Cluster:
    """A started cluster: its engine, state folder, the job's flags and its start time."""

    engine: str
    state: Path
    flags: list[str]
    start_s: float

    def pid(self, name: str) -> Optional[int]:
        """The recorded pid of process ``name`` (``worker-pool``, ``taskmanager-1``, ...)."""
        path = self.state / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None


def _settings(engine: str, state: Path, retries: bool) -> dict[str, str]:
    """The environment of a script: its state folder, free ports, the retry settings."""
    prefix = engine.upper()
    env = {f"{prefix}_STATE": str(state)}
    ports = {"flink": ("REST", "POOL", "JM_RPC"), "spark": ("MASTER", "UI", "POOL")}[engine]
    env.update({f"{prefix}_{name}_PORT": "0" for name in ports})
    if engine == "flink":
        env["FLINK_RESTART_ATTEMPTS"] = "3" if retries else "0"
    else:
        env["SPARK_TASK_MAX_FAILURES"] = "4" if retries else "1"
    return env


def script(engine: str, command: str, state: Path, *, retries: bool = True,
           timeout: float = 900) -> subprocess.CompletedProcess:
    """``scripts/<engine>_cluster.sh <command>`` with the state folder and retry settings."""
    env = {**os.environ, **_settings(engine, state, retries)}
    return subprocess.run([str(SCRIPTS[engine]), command], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def start_cluster(engine: str, state: Path, *, retries: bool = True) -> Cluster:
    """Starts a cluster with its state in ``state``; raises ClusterError when it fails."""
    began = time.monotonic()
    done = script(engine, "start", state, retries=retries)
    if done.returncode != 0:
        script(engine, "stop", state)
        tail = " | ".join(done.stderr.strip().splitlines()[-6:])
        raise ClusterError(f"{SCRIPTS[engine].name} start: exit {done.returncode}: {tail}")
    flags = [line for line in done.stdout.splitlines() if line.startswith("--")]
    return Cluster(engine, state, flags, time.monotonic() - began)


def stop_cluster(cluster: Cluster) -> None:
    script(cluster.engine, "stop", cluster.state)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` in clock ticks; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def busiest_sdk_worker(cluster: Cluster) -> Optional[int]:
    """The SDK worker (a child of the worker pool) that has used the most CPU: the one that
    decodes, detects and classifies."""
    pool = cluster.pid("worker-pool")
    workers = children(pool) if pool else []
    return max(workers, key=cpu_ticks) if workers else None


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def wait_for_lines(path: Path, count: int, process: subprocess.Popen,
                   timeout: float) -> bool:
    """Waits until ``path`` has ``count`` lines; False if ``process`` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if count_lines(path) >= count:
            return True
        time.sleep(0.1)
    return False


def kill(pid: Optional[int]) -> bool:
    """SIGKILL to ``pid``; False when there was none or it was gone."""
    if not pid:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def restarts(cluster: Cluster) -> int:
    """Recoveries the engine recorded so far on ``cluster``: Flink's JobManager restarting
    tasks after a failure (one per failover); Spark tasks that ended other than in success
    (the jobs' event logs), each of which Spark ran again or gave up on."""
    if cluster.engine == "flink":
        text = (cluster.state / "jobmanager.log").read_text(errors="replace")
        return len(re.findall(r"tasks will be restarted to recover the failed task", text))
    failed = 0
    for log in (cluster.state / "events").glob("*"):
        for line in log.read_text(errors="replace").splitlines():
            if '"Event":"SparkListenerTaskEnd"' in line and '"Reason":"Success"' not in line:
                failed += 1
    return failed


def start_job(argv: list[str], log: Path) -> subprocess.Popen:
    """``python -m beam_pipeline ARGV`` in its own session, output (both streams) in ``log``;
    its workers' code is this checkout's (PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PATH"] = str(Path(PYTHON).parent) + os.pathsep + env.get("PATH", "")
    with open(log, "wb") as handle:
        return subprocess.Popen([PYTHON, "-m", "beam_pipeline", *argv], cwd=ROOT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish_job(process: subprocess.Popen, timeout: float) -> Optional[int]:
    """The job's exit code; None (and the job's process group killed) past ``timeout``."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def check_output(output: Path, manifest: Path) -> dict:
    """``benchmarks._fault_check`` on ``output`` (in the venv: it reads Parquet)."""
    import json

    done = subprocess.run([PYTHON, "-m", "benchmarks._fault_check", str(output), str(manifest)],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        raise RuntimeError(f"_fault_check failed on {output}")
    return json.loads(done.stdout.strip().splitlines()[-1])
