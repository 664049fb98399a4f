"""Beam's EXTERNAL worker pool bound to 127.0.0.1 only (``worker_pool_main`` binds ``[::]``).

Usage: ``python scripts/worker_pool.py PORT``. Each StartWorker request from a Flink
TaskManager or a Spark executor starts one SDK worker as a child process of this pool (plain
``python`` from PATH, with this process's environment: PATH and PYTHONPATH decide which
interpreter and which project code the workers run). SIGTERM or SIGINT stops the pool and its
workers.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor


def serve(port: int) -> None:
    """Serves the pool on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound != port:
        sys.exit(f"worker_pool: could not bind 127.0.0.1:{port}")
    pool = worker_pool_main.BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()

    def stop_workers() -> None:
        for process in list(pool._worker_processes.values()):
            worker_pool_main.kill_process_gracefully(process, timeout=5)

    atexit.register(stop_workers)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    logging.info("worker pool listening on 127.0.0.1:%d", port)
    while not stopped.wait(1.0):
        pass
    server.stop(0)
    sys.exit(0)  # atexit stops the workers


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python scripts/worker_pool.py PORT")
    serve(int(sys.argv[1]))
