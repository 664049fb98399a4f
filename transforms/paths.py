"""Paths: on this machine's disk (plain or ``file://``) or behind another Beam filesystem."""

from __future__ import annotations

import os
import stat

__all__ = ["has_scheme", "is_local_path", "local_file_check", "local_file_problem", "local_path"]

LOCAL_SCHEME = "file://"


def has_scheme(path: str) -> bool:
    """True for a URL-like path (``gs://``, ``s3://``, ``file://``): taken as it is, never
    joined or normalized as a local path."""
    return "://" in path


def is_local_path(path: str) -> bool:
    """True for a path on this machine's disk (plain or ``file://``), False for ``gs://``,
    ``s3://`` and other object stores."""
    return not has_scheme(path) or path.startswith(LOCAL_SCHEME)


def local_path(path: str) -> str | None:
    """The path on this machine's disk (``file://`` removed), or None for a remote path."""
    return path.removeprefix(LOCAL_SCHEME) if is_local_path(path) else None


def local_file_problem(path: str) -> str | None:
    """Why a local path cannot be read as a file, or None (remote paths are not checked).

    Checked before opening: opening a FIFO blocks until something writes to it, which would
    hang the job rather than fail one image.
    """
    return local_file_check(path)[0]


def local_file_check(path: str) -> tuple[str | None, int | None]:
    """``local_file_problem`` and, for a regular local file, its size: one ``stat``."""
    local = local_path(path)
    if local is None:
        return None, None
    try:
        info = os.stat(local)
    except FileNotFoundError:
        if os.path.islink(local):
            return (f"it is a symbolic link to {os.readlink(local)!r}, which does not exist",
                    None)
        return "file not found (moved or deleted after it was listed?); check the path", None
    except OSError as exc:
        return f"cannot stat the file: {type(exc).__name__}: {exc}", None
    if stat.S_ISDIR(info.st_mode):
        return "it is a folder, not a file; list the images inside it instead", None
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a FIFO, socket or device); copy the image to a file", None
    return None, info.st_size
