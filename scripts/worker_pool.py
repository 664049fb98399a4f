"""An EXTERNAL worker pool for a cluster whose TaskManagers or executors share one host.

Usage: ``python scripts/worker_pool.py PORT``. Each StartWorker request from a Flink
TaskManager or a Spark executor starts one SDK worker as a child process of this pool (plain
``python`` from PATH, with this process's environment: PATH and PYTHONPATH decide which
interpreter and which project code the workers run). SIGTERM or SIGINT stops the pool and its
workers. It listens on 127.0.0.1 only.

Why not Beam's own ``worker_pool_main``: it binds ``[::]``, and it keeps one process per worker
id. Worker ids are counted per TaskManager or executor ("1-1", "2-1", ...), which is right for
the sidecar pattern (one pool per pod) but not for two executors sharing one pool: a StopWorker
from one executor then kills the other's worker of the same id. On the Spark cluster that left a
task waiting for ever ("Still waiting for startup of environment ... for worker id 5-1"). Its
workers' stdout is also an unread pipe, which blocks a worker that prints 64 KiB.

Here every worker is kept with the control endpoint it was started for. StopWorker(id) stops
only the workers of that id whose endpoint no longer accepts connections (their runner has
closed it), so a worker of a live executor is never touched.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor

_LOGGER = logging.getLogger("worker_pool")

# How long StopWorker keeps watching a worker whose endpoint still answers: the runner closes
# its servers just after it asks for the stop.
STOP_GRACE_S = 30.0


def endpoint_open(url: str, timeout: float = 1.0) -> bool:
    """True when ``host:port`` accepts a TCP connection."""
    host, _, port = url.rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@dataclass
class Worker:
    worker_id: str
    control_url: str
    process: subprocess.Popen


class WorkerRegistry:
    """The pool's workers: any number per worker id, each with its control endpoint."""

    def __init__(self, grace_s: float = STOP_GRACE_S, poll_s: float = 0.5):
        self._grace_s = grace_s
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._workers: list[Worker] = []

    def add(self, worker: Worker) -> None:
        with self._lock:
            self._workers = [w for w in self._workers if w.process.poll() is None]
            self._workers.append(worker)

    def alive(self, worker_id: str | None = None) -> list[Worker]:
        with self._lock:
            return [w for w in self._workers if w.process.poll() is None
                    and worker_id in (None, w.worker_id)]

    def stop(self, worker_id: str) -> list[Worker]:
        """Stops the workers of ``worker_id`` whose control endpoint is closed, watching for
        up to the grace period; returns the ones it stopped."""
        stopped: list[Worker] = []
        deadline = time.monotonic() + self._grace_s
        while True:
            for worker in self.alive(worker_id):
                if not endpoint_open(worker.control_url):
                    _LOGGER.info("stopping worker %s (pid %d): %s is closed", worker_id,
                                 worker.process.pid, worker.control_url)
                    worker_pool_main.kill_process_gracefully(worker.process, timeout=5)
                    stopped.append(worker)
            if not self.alive(worker_id):
                return stopped
            if time.monotonic() >= deadline:
                for worker in self.alive(worker_id):
                    _LOGGER.info("left worker %s (pid %d) running: %s is still open",
                                 worker_id, worker.process.pid, worker.control_url)
                return stopped
            time.sleep(self._poll_s)

    def stop_all(self) -> None:
        for worker in self.alive():
            worker_pool_main.kill_process_gracefully(worker.process, timeout=5)


def worker_command(request: beam_fn_api_pb2.StartWorkerRequest) -> list[str]:
    """The command Beam's process pool runs for a StartWorker request."""
    return ["python", "-c",
            "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
            f"SdkHarness({request.control_endpoint.url!r}, worker_id={request.worker_id!r}, "
            "state_cache_size=0, data_buffer_time_limit_ms=0).run()"]


class WorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    def __init__(self, registry: WorkerRegistry):
        self.registry = registry

    def StartWorker(self, request, context=None):
        try:
            process = subprocess.Popen(worker_command(request), close_fds=True)
        except OSError as error:
            return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start a worker: {error}")
        self.registry.add(Worker(request.worker_id, request.control_endpoint.url, process))
        _LOGGER.info("started worker %s (pid %d) for %s", request.worker_id, process.pid,
                     request.control_endpoint.url)
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context=None):
        # The runner asks before it closes the worker's endpoint: watch in the background so
        # that the runner is not held up.
        threading.Thread(target=self.registry.stop, args=(request.worker_id,),
                         name=f"stop-{request.worker_id}", daemon=True).start()
        return beam_fn_api_pb2.StopWorkerResponse()


def serve(port: int) -> None:
    """Serves the pool on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    # force: importing Beam has already given the root logger a WARNING handler.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound != port:
        sys.exit(f"worker_pool: could not bind 127.0.0.1:{port}")
    registry = WorkerRegistry()
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
        WorkerPool(registry), server)
    server.start()
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    _LOGGER.info("worker pool listening on 127.0.0.1:%d", port)
    while not stopped.wait(1.0):
        pass
    server.stop(0)
    registry.stop_all()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python scripts/worker_pool.py PORT")
    serve(int(sys.argv[1]))
