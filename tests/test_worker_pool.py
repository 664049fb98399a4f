"""scripts/worker_pool.py: two executors sharing one pool count worker ids alike ("5-1" from
each); a StopWorker for one id must stop only the worker whose runner closed its endpoint,
never the live one of the other executor (the Spark standalone hang)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "worker_pool.py"


@pytest.fixture(scope="module")
def pool_module():
    spec = importlib.util.spec_from_file_location("worker_pool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


@pytest.fixture
def listening():
    """A control endpoint that is still open, like a live executor's."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"localhost:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def closed():
    """A control endpoint its runner has closed."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"localhost:{port}"


def test_stop_leaves_the_other_executors_worker_of_the_same_id(pool_module, listening, closed):
    registry = pool_module.WorkerRegistry(grace_s=1.0, poll_s=0.1)
    live = pool_module.Worker("5-1", listening, sleeper())
    done = pool_module.Worker("5-1", closed, sleeper())
    registry.add(live)
    registry.add(done)
    try:
        stopped = registry.stop("5-1")
        assert [w.process.pid for w in stopped] == [done.process.pid]
        assert done.process.poll() is not None
        assert live.process.poll() is None
        assert registry.alive("5-1") == [live]
    finally:
        registry.stop_all()
    assert live.process.poll() is not None


def test_stop_returns_at_once_when_the_worker_ended_by_itself(pool_module, closed):
    registry = pool_module.WorkerRegistry(grace_s=30.0, poll_s=0.1)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    registry.add(pool_module.Worker("1-1", closed, ended))
    assert registry.stop("1-1") == []
    assert registry.alive() == []


def test_worker_command_starts_a_harness_for_the_request(pool_module):
    from apache_beam.portability.api import beam_fn_api_pb2, endpoints_pb2
    request = beam_fn_api_pb2.StartWorkerRequest(
        worker_id="2-1", control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="localhost:1"))
    command = pool_module.worker_command(request)
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<worker>", "exec")
    assert "SdkHarness('localhost:1', worker_id='2-1'" in command[2]
