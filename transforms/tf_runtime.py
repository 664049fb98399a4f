"""TensorFlow process settings shared by both model handlers."""

from __future__ import annotations

import threading

__all__ = ["configure_tensorflow"]

_lock = threading.Lock()
_configured = False


def configure_tensorflow() -> None:
    """Enables GPU memory growth once per process, so two models can share one GPU.

    Must run before TensorFlow touches a GPU; later calls are no-ops.
    """
    global _configured
    with _lock:
        if _configured:
            return
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                # The GPU was already initialised by someone else; growth can no longer change.
                pass
        _configured = True
