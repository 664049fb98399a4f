"""TensorFlow process settings shared by both model handlers and the launcher's checks."""

from __future__ import annotations

import os
import sys
import tempfile
import threading

__all__ = ["configure_tensorflow", "STARTUP_NOISE"]

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


def configure_tensorflow() -> None:
    """Loads TensorFlow quietly and enables GPU memory growth once per process, so two models
    can share one GPU. Must run before TensorFlow touches a GPU; later calls are no-ops."""
    global _configured
    with _lock:
        if _configured:
            return
        if os.environ.get("BDC_VERBOSE") == "1" or "tensorflow" in sys.modules:
            _load_tensorflow()
        else:
            _with_filtered_stderr(_load_tensorflow)
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
