"""Tests that start a local server: a free port, a bounded wait, a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["free_port", "start_server", "stop_server", "venv_env"]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_env(**extra: str) -> dict[str, str]:
    """The environment with this interpreter's bin folder first on PATH (Beam's worker pool
    starts workers with plain ``python``)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(command: Sequence[str], port: int, log_path: Path, *, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts ``command`` in its own process group and waits (at most ``timeout`` s) until it
    listens on ``port``; raises RuntimeError with the log's tail if it dies or never listens."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                   env=env or venv_env(), start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _listening(port):
            return process
        time.sleep(0.2)
    stop_server(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{command[0]} did not listen on port {port} within {timeout} s:\n{tail}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def stop_server(process: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """Stops the server and everything it started (its own process group): TERM, then KILL,
    since children (Beam's SDK workers) may outlive the leader."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)
