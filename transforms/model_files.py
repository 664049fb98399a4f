"""The bundled default models: named ``bundled:<path>`` so that the same option value finds
them on the launcher and on every worker, wherever the package is installed there."""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

from transforms.paths import is_local_path  # also imported from here by older code

__all__ = [
    "BUNDLED_PREFIX",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_CLASSIFIER_LABELS",
    "DEFAULT_DETECTOR",
    "DEFAULT_DETECTOR_LABEL_MAP",
    "is_local_path",
    "local_model_problem",
    "local_model_path",
    "model_exists",
    "read_score_threshold",
    "resolve_model_path",
]

BUNDLED_PREFIX = "bundled:"
DEFAULT_DETECTOR = "bundled:detector/saved_model"
DEFAULT_DETECTOR_LABEL_MAP = "bundled:detector/label_map.pbtxt"
DEFAULT_CLASSIFIER = "bundled:classifier/classifier.keras"
DEFAULT_CLASSIFIER_LABELS = "bundled:classifier/labels.txt"
# A detector may declare its recommended --min_score here, inside its SavedModel folder
# (assets.extra/ is TensorFlow Serving's place for files beside the graph): {"min_score": 0.3}.
SCORE_THRESHOLD_FILE = "assets.extra/score_threshold.json"


def _entry_problem(path: str, root: str) -> Optional[str]:
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"cannot stat it ({type(exc).__name__})"
    if stat.S_ISLNK(mode):
        target = os.path.realpath(path)
        inside = target == root or target.startswith(root.rstrip(os.sep) + os.sep)
        if not inside:
            return "a symbolic link that leaves the model folder"
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return "a symbolic link to nothing"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return "not a regular file (a device, FIFO or socket, which could block or never end)"


def local_model_problem(path: str) -> Optional[str]:
    """Why a local model file or folder cannot be read safely as files, or None: every entry
    must be a regular file or a folder, and a link must stay inside the model folder (a link
    to ``/dev/zero`` or a FIFO would make loading or digesting it hang). A single-file model
    may itself be a link to a regular file anywhere. Only ``lstat`` is used: nothing is opened.
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{path}: cannot stat it ({type(exc).__name__})"
    if not stat.S_ISDIR(mode):
        return None if stat.S_ISREG(mode) else (
            f"{path} is not a regular file (a device, FIFO or socket); copy the model to a file")
    root = os.path.realpath(path)
    for folder, dirs, files in os.walk(path):
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(folder, name)
            problem = _entry_problem(full, root)
            if problem is not None:
                return f"{full} is {problem}; a model folder may hold only files and folders"
    return None


def resolve_model_path(path: str) -> str:
    """Turns ``bundled:<path>`` into a path inside the installed ``models`` package; any other
    path (local, ``gs://``, ``s3://``) is returned unchanged."""
    if not path.startswith(BUNDLED_PREFIX):
        return path
    import models  # the data package shipped by setup.py

    return os.path.join(os.path.dirname(os.path.abspath(models.__file__)),
                        path[len(BUNDLED_PREFIX):])


def model_exists(path: str) -> bool:
    """Whether a model file or folder is at ``path``. Object stores (``gs://``, ``s3://``) have
    no folders, only keys under a prefix: a SavedModel folder there exists when it holds files.
    """
    from apache_beam.io.filesystems import FileSystems

    path = resolve_model_path(path)
    if FileSystems.exists(path):
        return True
    if is_local_path(path):
        return False
    return bool(FileSystems.match([path.rstrip("/") + "/*"], limits=[1])[0].metadata_list)


def local_model_path(path: str) -> str:
    """A local path for the model at ``path``: bundled and local paths as they are; a model on
    another Beam filesystem (``gs://``, ``s3://``) copied once to a local temporary folder,
    since TensorFlow and Keras read only some of those filesystems themselves."""
    path = resolve_model_path(path)
    return path if is_local_path(path) else _copy_to_local(path)


@functools.lru_cache(maxsize=None)
def _copy_to_local(path: str) -> str:
    """Copies a model from an object store once per process (validation and every later load
    reuse the copy); the copy is deleted when the process exits."""
    import atexit
    import shutil
    import tempfile

    from apache_beam.io.filesystems import FileSystems

    root = path.rstrip("/")
    scratch = tempfile.mkdtemp(prefix="beam-detect-classify-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    local_root = os.path.join(scratch, root.rsplit("/", 1)[-1])
    matches = FileSystems.match([root, root + "/**"])
    found = {m.path for result in matches for m in result.metadata_list}
    if not found:
        raise FileNotFoundError(f"no model files at {path}")
    for remote in sorted(found):
        local = local_root if remote == root else os.path.join(local_root, remote[len(root) + 1:])
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(remote, compression_type="uncompressed") as src, \
                open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return local_root


def read_score_threshold(local_detector: str) -> Optional[float]:
    """The ``min_score`` a detector declares in ``SCORE_THRESHOLD_FILE`` (a local SavedModel
    folder), or None when it declares none.

    Raises:
        ValueError: the file exists but holds no number in [0, 1] under ``min_score``.
    """
    path = os.path.join(local_detector, SCORE_THRESHOLD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            value = float(json.load(handle)["min_score"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} must be JSON with a number under 'min_score' "
                         f"({type(exc).__name__}: {exc})") from exc
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: min_score {value} is not between 0 and 1")
    return value
