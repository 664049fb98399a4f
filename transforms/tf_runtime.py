"""TensorFlow process settings shared by both model handlers and the launcher's checks.

Thread pools: TensorFlow (intra- and inter-op) and OpenCV each size their pools to every core
of the machine, so two ``multi_processing`` workers on two cores run four compute pools against
each other. A worker process of Beam's local ``multi_processing`` mode therefore sizes them to
its share of the cores (``threads_per_process``); ``BDC_THREADS`` overrides the figure in any
process (``0``: the libraries' own defaults).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from typing import Optional

__all__ = ["THREADS_ENV", "configure_tensorflow", "process_threads", "threads_per_process",
           "STARTUP_NOISE"]

THREADS_ENV = "BDC_THREADS"

_lock = threading.Lock()
_configured = False

# Lines TensorFlow's C++ side writes to stderr while it loads, none of which needs action:
# the absl preamble, "no CUDA drivers" on CPU machines (also as a cuInit "error"), oneDNN and
# CPU-instruction notes, duplicate plugin registrations.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog()",
    "cudart_stub.cc",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "oneDNN custom operations",
    "This TensorFlow binary is optimized",
    "rebuild TensorFlow with the appropriate compiler flags",
    "Unable to register cu",
    "computation placer already registered",
    "TF-TRT Warning",
    "cuda_executor.cc",
    "cuda_diagnostics.cc",
    "gpu_device.cc",
    "Cannot dlopen some GPU libraries",
    "Skipping registering GPU devices",
)


def _load_tensorflow() -> None:
    """Imports TensorFlow and looks for GPUs with stderr (fd 2) captured, then writes back
    every captured line that is not known start-up noise. ``BDC_VERBOSE=1`` shows all."""
    import tensorflow as tf  # noqa: F401  (imported here so its load is what is captured)

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # The GPU was already initialised by someone else; growth can no longer change.
            pass


def usable_cores() -> int:
    """CPUs this process may run on (its affinity where Linux says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(cores: int, processes: int) -> int:
    """Each of ``processes`` worker processes' share of ``cores``, at least one."""
    return max(1, cores // max(1, processes))


def _local_workers(environ: dict) -> Optional[int]:
    """The worker count when this process is a worker of Beam's local ``multi_processing`` mode
    (its harness gets the pipeline options in ``PIPELINE_OPTIONS``), else None."""
    try:
        options = json.loads(environ.get("PIPELINE_OPTIONS") or "{}")
    except ValueError:
        return None
    options = options.get("options", options) if isinstance(options, dict) else {}
    mode = options.get("direct_running_mode", options.get("beam:option:direct_running_mode:v1"))
    workers = options.get("direct_num_workers", options.get("beam:option:direct_num_workers:v1"))
    if mode != "multi_processing":
        return None
    try:
        return int(workers) if int(workers) > 0 else usable_cores()
    except (TypeError, ValueError):
        return None


def process_threads(environ: Optional[dict] = None) -> Optional[int]:
    """Threads for this process's TensorFlow and OpenCV pools: ``BDC_THREADS`` when set (0 or
    empty: None), a ``multi_processing`` worker's share of the cores, else None (the libraries'
    defaults: every core)."""
    environ = os.environ if environ is None else environ
    if environ.get(THREADS_ENV, "").strip():
        try:
            threads = int(environ[THREADS_ENV])
        except ValueError:
            return None
        return threads if threads > 0 else None
    workers = _local_workers(environ)
    return None if workers is None else threads_per_process(usable_cores(), workers)


def _size_thread_pools(threads: Optional[int]) -> None:
    """Before TensorFlow's first op: its pools (intra- and inter-op) and OpenCV's."""
    if threads is None:
        return
    import cv2
    import tensorflow as tf

    cv2.setNumThreads(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already ran an op in this process: its pools are fixed


def configure_tensorflow() -> None:
    """Loads TensorFlow quietly, sizes its thread pools (``process_threads``) and enables GPU
    memory growth once per process, so two models can share one GPU. Must run before
    TensorFlow touches a GPU or runs an op; later calls are no-ops."""
    global _configured
    with _lock:
        if _configured:
            return
        if os.environ.get("BDC_VERBOSE") == "1" or "tensorflow" in sys.modules:
            _load_tensorflow()
        else:
            _with_filtered_stderr(_load_tensorflow)
        _size_thread_pools(process_threads())
        _configured = True


def _with_filtered_stderr(action) -> None:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            action()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines()
                    if line.strip() and not any(noise in line for noise in STARTUP_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
