"""Start-up output no one can act on, hidden unless ``--verbose``.

Hidden: OpenCV's log lines (a failed decode is already a row with its reason); TensorFlow's
C++ INFO lines and its load-time notes (oneDNN, CPU instructions, and on
a machine with no GPU the CUDA lines, including a ``failed call to cuInit`` "error" that only
says there is no GPU: see ``transforms.tf_runtime``); Beam's ``apitools not found`` and
``Resource module is not available`` (Beam logs the latter when one of its optional imports
fails; ``resource`` itself works). A failed job's engine message (on Spark a Java trace) is cut
to its first line. Every other warning and error is still shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence

__all__ = ["NOISE", "WORKER_NOISE", "quiet_startup", "quiet_worker_processes", "worker_log_flags"]

# Substrings of Python log messages that carry no action for the user.
NOISE = (
    "apitools not found",
    "Resource module is not available",
    "Discarding unparseable args",
    "No module named 'google.cloud'",
    "Unable to fetch remote workers",
)


# What Beam's local worker processes (multi_processing) write to the stderr they inherit
# without being asked: their start-up INFO lines, and warnings no one can act on.
WORKER_NOISE = (*NOISE, "semi_persistent_directory")


# Beam's own setting for its worker processes' log level; they log errors only unless asked.
WORKER_LOG_LEVEL = "ERROR"
_LEVEL_FLAG = "--default_sdk_harness_log_level"


def worker_log_flags(argv: Sequence[str], *, verbose: bool) -> tuple[str, ...]:
    """``--default_sdk_harness_log_level=ERROR`` for local worker processes, unless ``argv``
    sets it or the run is ``verbose``: the harness otherwise logs at INFO (``State channel
    established``, ``Resource module is not available`` at every batch). The lines a worker
    prints before it has read that option are dropped by ``quiet_worker_processes``."""
    if verbose or any(word.split("=", 1)[0] == _LEVEL_FLAG for word in argv):
        return ()
    return (f"{_LEVEL_FLAG}={WORKER_LOG_LEVEL}",)


def _worker_noise(line: str) -> bool:
    return line.startswith("INFO:") or any(text in line for text in WORKER_NOISE)


@contextlib.contextmanager
def quiet_worker_processes(*, enabled: bool = True) -> Iterator[None]:
    """Points file descriptor 2 (which child processes inherit) at a pipe for the duration,
    and forwards every line to the real stderr but the worker processes' start-up noise
    (``WORKER_NOISE`` and their INFO lines); errors and tracebacks pass."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not _worker_noise(line.decode("utf-8", "replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="quiet-workers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe closes once the worker processes, gone by now, let go
        thread.join(timeout=5)
        if not thread.is_alive():
            os.close(saved)


# Beam's portable runner logs a failed job's engine message, a Java trace on Spark, before
# wait_until_finish raises with it; the job's own error line then says it again in one line.
_ENGINE_MESSAGES = os.path.join("runners", "portability", "portable_runner.py")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # pylint: disable=broad-except
            return True
        if record.levelno >= logging.ERROR and "\n" in message \
                and record.pathname.endswith(_ENGINE_MESSAGES):
            record.msg, record.args = message.split("\n", 1)[0] + " (trace: --verbose)", ()
        return not any(text in message for text in NOISE)


@contextlib.contextmanager
def quiet_startup(*, enabled: bool = True) -> Iterator[None]:
    """Installs the filters for the duration of the job (the env settings stay: they must be
    in place before TensorFlow loads, and worker processes inherit them)."""
    if not enabled:
        os.environ["BDC_VERBOSE"] = "1"  # transforms.tf_runtime then shows TF's load output
        yield
        return
    # TensorFlow's C++ INFO lines; its load-time noise is filtered by transforms.tf_runtime.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # OpenCV's own log lines (libtiff warnings, "imdecode_: can't read data"): every image
    # it cannot decode is already a row with the reason. Read when cv2 is imported.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    noise = _DropNoise()
    root = logging.getLogger()
    if not root.handlers:  # records of named loggers reach only handlers, never root's filters
        logging.basicConfig(format="%(levelname)s:%(name)s:%(message)s")
    handlers = list(root.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    root.addFilter(noise)
    for handler in handlers:
        handler.addFilter(noise)
    try:
        yield
    finally:
        root.removeFilter(noise)
        for handler in handlers:
            handler.removeFilter(noise)
