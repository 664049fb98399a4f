"""Run identity: the run id, the fingerprint of what makes an image's rows, the record's fields."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

from transforms.box_formats import NORMALIZED

__all__ = [
    "RECORD_VERSION",
    "RunIdentity",
    "content_digest",
    "fingerprint",
    "library_versions",
    "new_run_id",
    "row_options",
    "run_identity",
    "utc_now",
]

# The run record's format; it enters the fingerprint too.
RECORD_VERSION = 1


def new_run_id(now: Optional[datetime.datetime] = None) -> str:
    """A run id that sorts by start time: ``20261130T051502.123456Z-1a2b3c4d``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(4)


def utc_now(moment: Optional[datetime.datetime] = None) -> str:
    """The current UTC time (or ``moment``), ISO 8601 to the millisecond with a ``Z``."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def content_digest(path: str) -> str:
    """SHA-256 of a file, or of a folder's files by their relative paths and bytes.

    By content, not location: the same model copied to another folder or bucket has the same
    digest. ``path`` must be local (object-store models are copied once by validation).
    """
    from transforms.model_files import local_model_problem

    problem = local_model_problem(path)  # a device or FIFO would never end or never answer
    if problem is not None:
        raise ValueError(problem)
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                relative = os.path.relpath(full, path).replace(os.sep, "/")
                digest.update(relative.encode("utf-8") + b"\0")
                _update_with_file(digest, full)
                digest.update(b"\0")
    else:
        _update_with_file(digest, path)
    return digest.hexdigest()


def _update_with_file(digest: Any, path: str) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def fingerprint(parts: Mapping[str, Any]) -> str:
    """One digest of everything that changes an image's rows (model digests, label contents,
    row-changing options), as canonical JSON; the first 16 bytes in hex."""
    text = json.dumps(dict(parts), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the rows."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name, dist in (("apache-beam", "apache-beam"), ("tensorflow", "tensorflow"),
                       ("keras", "keras"), ("opencv", "opencv-python-headless"),
                       ("pyarrow", "pyarrow"), ("numpy", "numpy")):
        try:
            versions[name] = version(dist)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunIdentity(NamedTuple):
    """What a run is, known before it starts."""

    run_id: str
    fingerprint: str
    record: dict[str, Any]  # the run record's fields but status, end and counts
    parts: dict[str, Any] = {}  # what the fingerprint digests (commits name a difference)


def row_options(opts: Any, *, min_score: float, classify_classes: Optional[frozenset[int]],
                box_format: str) -> dict[str, Any]:
    """Every option that changes an image's rows, as it enters the fingerprint (the one place
    that says which: add a new row-changing option here). Options that only change how the
    work is laid out (batch sizes, shards, runner, commits) are left out."""
    rows: dict[str, Any] = {
        "max_detections": opts.max_detections,
        "crop_padding": opts.crop_padding,
        "classifier_preprocess": opts.classifier_preprocess,
        "classify_detector_classes": sorted(classify_classes or []) or None,
        "tile_size": opts.tile_size,
        "min_score": min_score,
    }
    if box_format != NORMALIZED:  # only then, so earlier runs' fingerprints still match
        rows["detector_box_format"] = box_format
    if opts.tile_size:
        rows.update(tile_overlap=opts.tile_overlap, tile_full_image=opts.tile_full_image)
    return rows


def run_identity(opts: Any, *, rows: Mapping[str, Any], min_score_source: str,
                 labels: Sequence[str], detector_labels: Optional[Mapping[int, str]],
                 labels_path: str, detector_description: str) -> RunIdentity:
    """Digests the models (by content, from the local copies validation already made), builds
    the fingerprint from them, the labels and ``rows`` (``row_options``), and the record's
    fixed fields."""
    from apache_beam.options.pipeline_options import StandardOptions

    from beam_pipeline.options import job_option_names
    from transforms.model_files import local_model_path

    detector_digest = content_digest(local_model_path(opts.detector_model))
    classifier_digest = content_digest(local_model_path(opts.classifier_model))
    min_score = rows["min_score"]
    rows = dict(rows)
    parts = {
        "version": RECORD_VERSION,
        "detector": detector_digest,
        "classifier": classifier_digest,
        "classifier_labels": list(labels),
        "detector_label_map": {str(k): v for k, v in sorted((detector_labels or {}).items())},
        "options": rows,
    }
    started = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "version": RECORD_VERSION,
        "run_id": new_run_id(started),
        "status": "running",
        "started": utc_now(started),
        "ended": None,
        "runner": opts.view_as(StandardOptions).runner or "DirectRunner",
        "fingerprint": fingerprint(parts),
        "models": {
            "detector": {"path": opts.detector_model, "digest": detector_digest,
                         "signature": detector_description},
            "classifier": {"path": opts.classifier_model, "digest": classifier_digest},
            "classifier_labels": {"path": labels_path, "labels": list(labels)},
            "detector_label_map": parts["detector_label_map"] or None,
        },
        "min_score": {"value": min_score, "source": min_score_source},
        "options": {name: getattr(opts, name, None) for name in job_option_names()},
        "libraries": library_versions(),
    }
    return RunIdentity(record["run_id"], record["fingerprint"], record, parts)
