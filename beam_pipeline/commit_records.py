"""Commit records: ``OUTPUT/_commits/commit-NNNNN.json``, written atomically by a step's last
act and read by the launcher (the protocol is in ``beam_pipeline/commits.py``)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from transforms import output_folder
from transforms.paths import is_local_path

__all__ = ["COMMIT_VERSION", "fingerprint_difference", "read_commits", "resumable",
           "write_commit"]

COMMIT_VERSION = 1


def _commits_folder(output: str) -> str:
    return FileSystems.join(output.rstrip("/"), output_folder.COMMITS)


def read_commits(output: str) -> list[dict[str, Any]]:
    """The commit records of ``output``, by index; half-written (temporary) records are not
    commits. Raises ValueError for a record that cannot be read."""
    pattern = FileSystems.join(_commits_folder(output), "commit-*.json")
    records = []
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        try:
            with FileSystems.open(metadata.path, compression_type="uncompressed") as handle:
                record = json.loads(handle.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"commit record {metadata.path} cannot be read: "
                             f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict) or record.get("version") != COMMIT_VERSION:
            raise ValueError(f"{metadata.path} is not a commit record of version "
                             f"{COMMIT_VERSION}")
        records.append(record)
    return sorted(records, key=lambda record: record["commit"])


def resumable(output: str) -> bool:
    """Whether ``output`` holds an unfinished run that commits can resume: commit records, or
    only what a step leaves before its first commit (``part-c*`` files, Beam's temporary
    ``beam-temp-part-c*`` folders)."""
    if FileSystems.match([FileSystems.join(_commits_folder(output), "commit-*.json")]
                         )[0].metadata_list:
        return True
    names = []
    for table in output_folder.TABLES:
        folder = FileSystems.join(output.rstrip("/"), table)
        if is_local_path(output):
            local = folder.removeprefix("file://")
            names += os.listdir(local) if os.path.isdir(local) else []
        else:
            names += [m.path[len(folder):].lstrip("/")
                      for m in FileSystems.match([folder + "/**"])[0].metadata_list]
    ours = (output_folder.COMMIT_PART_PREFIX,
            output_folder.BEAM_TEMP_PREFIX + output_folder.COMMIT_PART_PREFIX)
    return bool(names) and all(name.startswith(ours) for name in names)


def _write_bytes_atomically(path: str, data: bytes) -> None:
    """Local: a temporary file beside ``path``, flushed to disk, then renamed over it. Object
    stores publish an object whole when its upload completes, so it is written directly."""
    if not is_local_path(path):
        with FileSystems.create(path) as handle:
            handle.write(data)
        return
    local = path.removeprefix("file://")
    os.makedirs(os.path.dirname(local), exist_ok=True)
    temporary = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, local)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write_commit(files: Sequence[str], output: str, index: int, header: Mapping[str, Any],
                 image_counts: Mapping[str, int], detection_counts: Mapping[str, int],
                 classify_failed: int) -> None:
    """A step's last act, on a worker once both tables' files are final: writes
    ``_commits/commit-<index>.json`` naming the files (relative to ``output``) and counts."""
    root = output.rstrip("/") + "/"
    if not files:
        # Prism emits no final file names from the sinks (seen with Beam 2.77): the step's own
        # part files, named by its index, are listed instead (they are final by now: this step
        # follows both sinks).
        prefix = f"{output_folder.COMMIT_PART_PREFIX}{index:05d}-"
        files = [m.path for table in output_folder.TABLES for m in FileSystems.match(
            [FileSystems.join(output.rstrip("/"), table, prefix + "*")])[0].metadata_list]
    relative = sorted(path[len(root):] if path.startswith(root) else path for path in files)
    record = {
        "version": COMMIT_VERSION, "commit": index, **dict(header),
        "written": _utc_now(), "images": int(image_counts.get("images", 0)),
        "files": relative, "image_counts": dict(image_counts),
        "detection_counts": dict(detection_counts), "classify_failed": int(classify_failed),
    }
    data = json.dumps(record, indent=1, default=str).encode("utf-8") + b"\n"
    name = output_folder.COMMIT_RECORD.format(index=index)
    _write_bytes_atomically(FileSystems.join(_commits_folder(output), name), data)


def _utc_now() -> str:
    from beam_pipeline.run_record import utc_now

    return utc_now()


def fingerprint_difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What differs between two fingerprints' parts, in a few words (``min_score 0.5 there,
    0.65 now``; ``detector model (other contents)``)."""
    words = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    words.append(f"{name} {old.get(name)!r} there, {new.get(name)!r} now")
        elif key in ("detector", "classifier"):
            words.append(f"{key} model (other contents)")
        else:
            words.append(f"{key.replace('_', ' ')}")
    return "; ".join(words) or "the fingerprint"
