"""Quiet ``multi_processing`` workers: what they log, and the two lines they print before that
can be set.

Beam's local worker processes (``python -m apache_beam.runners.worker.sdk_worker_main``) write
to the launcher's stderr. Importing Beam there logs ``apitools not found`` through the root
logger, which makes Python install a stderr handler; the harness then raises the root level to
INFO until it reads ``--default_sdk_harness_log_level``, so every INFO line of the harness
(``State channel established``, ``Logging handler created``, ...) and every warning (``Resource
module is not available`` at each inference batch) reached the terminal, about 30 lines a
worker. Two settings silence them:

- ``worker_log_flags``: Beam's own ``--default_sdk_harness_log_level=ERROR`` for the workers
  unless the user set it or ran with ``--verbose``; their errors still show (the launcher
  relays them as ``Worker: ...``);
- ``quiet_worker_output``: the two lines each worker prints before it has read that option
  (the import-time ``apitools`` warning and ``Logging handler created``) are dropped from the
  launcher's stderr (fd 2, which the workers inherit); every other line passes unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence

__all__ = ["WORKER_LOG_LEVEL", "WORKER_START_NOISE", "quiet_worker_output", "worker_log_flags"]

WORKER_LOG_LEVEL = "ERROR"
_LEVEL_FLAG = "--default_sdk_harness_log_level"
# Printed by each worker process before its log level is set (see the module docstring).
WORKER_START_NOISE = (
    b"WARNING:root:apitools not found",
    b"INFO:__main__:Logging handler created.",
)


def worker_log_flags(argv: Sequence[str], *, verbose: bool) -> tuple[str, ...]:
    """``--default_sdk_harness_log_level=ERROR`` unless ``argv`` sets it or ``verbose``."""
    if verbose or any(word.split("=", 1)[0] == _LEVEL_FLAG for word in argv):
        return ()
    return (f"{_LEVEL_FLAG}={WORKER_LOG_LEVEL}",)


def _drop(line: bytes) -> bool:
    return any(noise in line for noise in WORKER_START_NOISE)


def _copy(source: int, target: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not _drop(line))
        if kept:
            os.write(target, kept)
    if pending and not _drop(pending):
        os.write(target, pending)
    os.close(source)


@contextlib.contextmanager
def quiet_worker_output(*, enabled: bool = True) -> Iterator[None]:
    """Routes fd 2 through a filter that drops ``WORKER_START_NOISE`` lines, for the run."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    copier = threading.Thread(target=_copy, args=(read_end, saved), name="worker-output",
                              daemon=True)
    copier.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes this process's write end at fd 2
        # EOF once every worker that inherited the pipe has exited; workers are done by now.
        copier.join(timeout=5)
        if not copier.is_alive():
            os.close(saved)
