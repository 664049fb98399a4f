"""Models loaded once per process: the ones the launcher's checks load, the handlers reuse.

A local run in process (and a portable runner's ``LOOPBACK`` workers) runs the pipeline in the
launcher's own process, which has just loaded both models to check them: loading them again in
``load_model`` costs seconds of start-up on every run and every commit step. The checks
``keep`` what they loaded; a handler's ``load_model`` ``reuse``s it when the files are the
same ones (path, and every file's size and modification time) and the options it would load
with are the same; worker processes of their own find nothing here and load as before. The
launcher ``forget``s when the pipeline runs in worker processes and when the run ends, so no
model outlives its run in a process that embeds the job.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

__all__ = ["forget", "keep", "reuse"]

_KEPT: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _identity(path: str) -> tuple:
    """``path`` and every file under it with its size and modification time: a model saved
    again at the same path is another model."""
    if not os.path.isdir(path):
        stat = os.stat(path)
        return ((path, stat.st_size, stat.st_mtime_ns),)
    found = []
    for folder, _, names in os.walk(path):
        for name in names:
            file = os.path.join(folder, name)
            stat = os.stat(file)
            found.append((os.path.relpath(file, path), stat.st_size, stat.st_mtime_ns))
    return (path, *sorted(found))


def _key(kind: str, path: str, options: dict) -> Optional[tuple]:
    try:
        return (kind, _identity(os.path.abspath(path)), tuple(sorted(options.items())))
    except OSError:
        return None


def keep(kind: str, path: str, model: Any, **options: Any) -> None:
    """Keeps ``model`` (a ``kind`` loaded from local ``path`` with ``options``) for ``reuse``."""
    key = _key(kind, path, options)
    if key is not None:
        with _LOCK:
            _KEPT[key] = model


def reuse(kind: str, path: str, **options: Any) -> Optional[Any]:
    """The model ``keep`` was given for these files and options, or None."""
    key = _key(kind, path, options)
    with _LOCK:
        return _KEPT.get(key) if key is not None else None


def forget() -> None:
    """Drops every kept model (their memory goes once nothing else holds them)."""
    with _LOCK:
        _KEPT.clear()
