"""The lock of an output folder: one run at a time writes it (``OUTPUT/_run.lock``), held by
the launcher from before ``--overwrite`` deletes anything to the run's end (docs/commits.md)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, Optional

from transforms import output_folder
from transforms.paths import local_path

__all__ = ["RunLock", "RunLocked"]


class RunLocked(RuntimeError):
    """Another live run holds the output folder's lock."""


def _utc_now() -> str:
    from beam_pipeline.run_identity import utc_now

    return utc_now()


class RunLock:
    """``OUTPUT/_run.lock``, created with ``O_EXCL`` and holding the pid and host of the run.

    A lock whose process is gone (same host, pid not alive) is stale and taken over. Object
    stores have no exclusive create: there the lock is not taken (docs/commits.md).

    Args:
        output: the run's ``--output``.
        overwrite: the run deletes an earlier run's files once it holds the lock; a refusal
            then says that nothing was deleted.
    """

    def __init__(self, output: str, *, overwrite: bool = False):
        self._output = output
        self._overwrite = overwrite
        self._path: Optional[str] = None

    def __enter__(self) -> "RunLock":
        folder = local_path(self._output)
        if folder is None:
            return self
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, output_folder.RUN_LOCK)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_if_live(path)
                try:
                    os.unlink(path)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": _utc_now()}, handle)
            self._path = path
            return self
        raise RunLocked(f"--output {self._output}: cannot take {path}; another run is "
                        "starting in this folder" + ("; --overwrite deleted nothing"
                                                     if self._overwrite else ""))

    def refuse_if_held(self) -> None:
        """Raises the refusal ``__enter__`` would, creating nothing, when a live run holds the
        lock now: the launcher asks before its checks load the models, so that a second run is
        refused in a moment and with this line, not another check's. The lock itself is still
        taken later, with ``O_EXCL``."""
        folder = local_path(self._output)
        path = os.path.join(folder, output_folder.RUN_LOCK) if folder is not None else ""
        if path and os.path.exists(path):
            self._refuse_if_live(path)

    def _refuse_if_live(self, path: str) -> None:
        holder = _lock_holder(path)
        if holder is not None and not _is_stale(holder):
            raise RunLocked(self._refusal(holder, path)) from None

    def _refusal(self, holder: Mapping[str, Any], path: str) -> str:
        deletes = "--overwrite deletes nothing while it runs: " if self._overwrite else ""
        return (f"--output {self._output} is being written by another run (pid "
                f"{holder.get('pid')} on {holder.get('host')} since {holder.get('since')}); "
                f"{deletes}wait for it to finish, or if no such run is alive delete {path}")

    def __exit__(self, *exc_info) -> None:
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None


def _lock_holder(path: str) -> Optional[dict[str, Any]]:
    for _ in range(20):  # the holder writes its pid right after creating the file
        try:
            with open(path) as handle:
                text = handle.read()
            if text:
                return json.loads(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {"pid": "?", "host": "?", "since": "?", "unreadable": True}


def _is_stale(holder: Mapping[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False  # another machine's process, or a lock being written: cannot tell
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
