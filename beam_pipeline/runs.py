"""Runs as units: the run record (``OUTPUT/run.json``), the fingerprint of what makes an image's
rows, the done set of earlier runs, and the latest view across runs.

An output folder is a finished run only when its ``run.json`` says ``"status": "complete"``;
the pipeline writes that file as its very last act, after both tables are final. Everything
here trusts nothing else (like Hadoop/Spark output committers, which write data first and a
small marker last).

Command line::

    python -m beam_pipeline.runs list 'results/*'
    python -m beam_pipeline.runs latest 'results/*' --table detections --output latest.parquet
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems

from transforms import writing
from transforms.model_files import is_local_path

__all__ = [
    "RECORD_VERSION",
    "ROW_OPTIONS",
    "RUN_RECORD",
    "ErrorGateFailed",
    "RunIdentity",
    "complete_outputs",
    "content_digest",
    "finish_run",
    "fingerprint",
    "latest_view",
    "library_versions",
    "new_run_id",
    "read_run_record",
    "run_counts",
    "run_identity",
    "table_files",
    "table_problem",
    "write_run_record",
]

RUN_RECORD = writing.RUN_RECORD
RECORD_VERSION = 1
_log = logging.getLogger(__name__)


def new_run_id(now: Optional[datetime.datetime] = None) -> str:
    """A run id that sorts by start time: ``20261130T051502.123456Z-1a2b3c4d``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(4)


def utc_now() -> str:
    """The current UTC time, ISO 8601 with a ``Z``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


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


def write_run_record(output: str, record: Mapping[str, Any]) -> None:
    """Writes ``OUTPUT/run.json`` (whole, in one create: object stores publish it atomically)."""
    data = json.dumps(dict(record), indent=2, sort_keys=False, default=str).encode("utf-8")
    with FileSystems.create(FileSystems.join(output, RUN_RECORD)) as handle:
        handle.write(data + b"\n")


class RunIdentity(NamedTuple):
    """What a run is, known before it starts."""

    run_id: str
    fingerprint: str
    record: dict[str, Any]  # the run record's fields but status, end and counts
    parts: dict[str, Any] = {}  # what the fingerprint digests (commits name a difference)


# Options that change an image's rows; each joins the fingerprint (add new ones here).
ROW_OPTIONS = ("max_detections", "crop_padding", "classifier_preprocess")


def run_identity(opts: Any, *, min_score: float, min_score_source: str,
                 labels: Sequence[str], detector_labels: Optional[Mapping[int, str]],
                 labels_path: str, detector_description: str,
                 row_options: Optional[Mapping[str, Any]] = None) -> RunIdentity:
    """Digests the models (by content, from the local copies validation already made), builds
    the fingerprint and the record's fixed fields. ``row_options`` adds options that change
    rows beyond ``ROW_OPTIONS`` (tiling, classified classes)."""
    from apache_beam.options.pipeline_options import StandardOptions

    from beam_pipeline.options import job_option_names
    from transforms.model_files import local_model_path

    detector_digest = content_digest(local_model_path(opts.detector_model))
    classifier_digest = content_digest(local_model_path(opts.classifier_model))
    rows = {name: getattr(opts, name) for name in ROW_OPTIONS}
    rows.update(row_options or {})
    rows["min_score"] = min_score
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
        "started": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
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


class ErrorGateFailed(RuntimeError):
    """The run's error fraction was over ``--max_error_fraction``; its record is written."""


def run_counts(image_counts: Mapping[str, int], detection_counts: Mapping[str, int],
               classify_failed: int, skipped: int) -> dict[str, Any]:
    """The record's ``counts`` from the per-table counts (``transforms.writing``)."""
    read = int(image_counts.get("images", 0))
    errors = {stage: int(image_counts.get(f"error_{stage}", 0))
              for stage in ("read", "decode", "detect", "classify")}
    regions = int(detection_counts.get("regions", 0))
    return {
        "images_read": read,
        "images_ok": int(image_counts.get("ok", 0)),
        "images_skipped": int(skipped),
        "errors_by_stage": errors,
        "regions_kept": regions + int(classify_failed),
        "regions_written": regions,
        "regions_classified": int(detection_counts.get("classified", 0)),
        "regions_failed_classify": int(classify_failed),
        "error_fraction": round(sum(errors.values()) / read, 6) if read else 0.0,
    }


def finish_run(_, output: str, record: Mapping[str, Any], image_counts: Mapping[str, int],
               detection_counts: Mapping[str, int], classify_failed: int, skipped: int,
               max_error_fraction: Optional[float]) -> None:
    """The pipeline's last step, on a worker once both tables are final: writes ``_SUCCESS``
    and then the complete run record; raises ErrorGateFailed after writing when the error
    fraction is over the gate, so the job fails even where the launcher does not wait."""
    counts = run_counts(image_counts, detection_counts, classify_failed, skipped)
    passed = max_error_fraction is None or counts["error_fraction"] <= max_error_fraction
    final = {**record, "status": "complete", "ended": utc_now(), "counts": counts,
             "error_gate": {"max_error_fraction": max_error_fraction, "passed": passed}}
    writing.write_success_marker(output)
    write_run_record(output, final)
    if not passed:
        raise ErrorGateFailed(
            f"error gate failed: {counts['error_fraction']:.4f} of the images read are errors, "
            f"over --max_error_fraction={max_error_fraction} (run recorded in {output}/run.json)")


# A run record is a few KB; anything much larger or deeper is not one (and must not cost memory).
MAX_RECORD_BYTES = 1 << 20
MAX_RECORD_DEPTH = 16
# Fields a record must have, with their types, to be trusted.
_RECORD_FIELDS = {"run_id": str, "status": str}
_OPTIONAL_OBJECTS = ("counts", "error_gate", "models", "options", "skip_done_in")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_RECORD_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _file_size(path: str) -> Optional[int]:
    found = FileSystems.match([path])[0].metadata_list
    return found[0].size_in_bytes if found else None


def read_run_record(output: str) -> Optional[dict[str, Any]]:
    """The run record of ``output``, or None when there is none. Raises ValueError (one line
    that never quotes the file's bytes) when it exists but is not a small JSON object of the
    known version and shape: over MAX_RECORD_BYTES (checked from its size before reading),
    nested deeper than MAX_RECORD_DEPTH, not a regular file, or missing its fields."""
    from transforms.reading import local_file_problem

    path = FileSystems.join(output.rstrip("/"), RUN_RECORD)
    try:
        if not FileSystems.exists(path):
            return None
        problem = local_file_problem(path)
        if problem is not None:
            raise ValueError(f"{path} cannot be read: {problem}")
        size = _file_size(path)
        if size is not None and size > MAX_RECORD_BYTES:
            raise ValueError(f"{path} is {size} bytes, over the {MAX_RECORD_BYTES} of any run "
                             "record")
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"{path} is over the {MAX_RECORD_BYTES} bytes of any run record")
        record = json.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise ValueError(f"{path} is nested too deeply to be a run record") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (at line {exc.lineno}, column "
                         f"{exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (at byte {exc.start})") from exc
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {type(exc).__name__}") from exc
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError(f"{path} is not a run record of version {RECORD_VERSION}")
    if _depth(record) > MAX_RECORD_DEPTH:
        raise ValueError(f"{path} is nested deeper than {MAX_RECORD_DEPTH} levels: not a run "
                         "record")
    wrong = [name for name, kind in _RECORD_FIELDS.items()
             if not isinstance(record.get(name), kind)]
    wrong += [name for name in ("fingerprint", "started", "ended")
              if record.get(name) is not None and not isinstance(record[name], str)]
    wrong += [name for name in _OPTIONAL_OBJECTS
              if record.get(name) is not None and not isinstance(record[name], dict)]
    if wrong:
        raise ValueError(f"{path} is not a run record of this job (wrong or missing: "
                         f"{', '.join(wrong)})")
    return record


# Columns a complete run's tables must have for the skip, the report and the latest view.
_NEEDED_COLUMNS = {"images": ("image_path", "status", "run_id", "fingerprint"),
                   "detections": ("image_path", "run_id")}


def table_problem(output: str, table: str) -> Optional[str]:
    """Why a table of a complete run cannot be read (a part file that is not Parquet, cut
    short, not a regular file, or lacks the columns read), or None. Reads each file's footer
    only, not its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.reading import local_file_problem

    for metadata in FileSystems.match([table_files(output, table)])[0].metadata_list:
        name = metadata.path.rsplit("/", 1)[-1]
        problem = local_file_problem(metadata.path)
        if problem is not None:
            return f"{table}/{name}: {problem}"
        try:
            with FileSystems.open(metadata.path, compression_type="uncompressed") as handle:
                names = pq.ParquetFile(handle).schema_arrow.names
        except (pa.ArrowException, OSError, ValueError) as exc:
            return f"{table}/{name} is not a readable Parquet file ({type(exc).__name__})"
        missing = [column for column in _NEEDED_COLUMNS[table] if column not in names]
        if missing:
            return f"{table}/{name} lacks the columns {', '.join(missing)}"
    return None


def _candidate_folders(patterns: Iterable[str]) -> list[str]:
    """Folders matched by the globs: each pattern is matched against ``<pattern>/run.json``,
    so ``results/*`` finds every run folder in ``results/`` without listing their tables."""
    folders = set()
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for result in FileSystems.match([FileSystems.join(pattern, RUN_RECORD)]):
            for metadata in result.metadata_list:
                folders.add(metadata.path[:-len(RUN_RECORD) - 1])
    return sorted(folders)


def complete_outputs(patterns: Sequence[str], *, warn: bool = True,
                     exclude: Sequence[str] = (),
                     tables: Sequence[str] = writing.TABLES) -> list[tuple[str, dict[str, Any]]]:
    """``(output folder, record)`` of every complete run matching the globs, oldest first.

    Folders without a record, or whose record says anything but complete, are not finished
    runs and are skipped silently; an unreadable record, one of an unknown version, or a
    complete run one of whose ``tables`` cannot be read is skipped with one warning line
    (``warn``): treated as not done, never fatal.
    """
    excluded = {_normal(path) for path in exclude}
    found = []
    for folder in _candidate_folders(patterns):
        if _normal(folder) in excluded:
            continue
        try:
            record = read_run_record(folder)
        except ValueError as exc:
            if warn:
                print(f"warning: ignoring {folder} (treated as not done): {exc}",
                      file=sys.stderr)
            continue
        if record is None or record.get("status") != "complete":
            continue
        problem = next(filter(None, (table_problem(folder, table) for table in tables)), None)
        if problem is not None:
            if warn:
                print(f"warning: ignoring {folder} (treated as not done): {problem}",
                      file=sys.stderr)
            continue
        found.append((folder, record))
    return sorted(found, key=lambda item: item[1].get("run_id", ""))


def _normal(path: str) -> str:
    path = path.rstrip("/")
    return os.path.abspath(path) if is_local_path(path) else path


def table_files(output: str, table: str) -> str:
    """The glob of one table's Parquet files in an output folder."""
    return FileSystems.join(output.rstrip("/"), table, "*.parquet")


def _read_table(outputs: Sequence[str], table: str, columns: Optional[Sequence[str]]):
    import pyarrow as pa
    import pyarrow.dataset as ds

    tables = []
    for output in outputs:
        paths = [m.path for m in FileSystems.match([table_files(output, table)])[0].metadata_list]
        if not paths:
            continue
        if is_local_path(output):
            dataset = ds.dataset(paths, format="parquet")
        else:
            from pyarrow import fs as pafs

            filesystem, _ = pafs.FileSystem.from_uri(paths[0])
            dataset = ds.dataset([p.split("://", 1)[1] for p in paths], format="parquet",
                                 filesystem=filesystem)
        tables.append(dataset.to_table(columns=list(columns) if columns else None))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def latest_view(patterns: Sequence[str], table: str,
                columns: Optional[Sequence[str]] = None):
    """Rows of ``table`` ("detections" or "images") from the newest complete run of each image
    path, over every complete run matching the globs; a ``pyarrow.Table``.

    A path's newest run is the largest ``run_id`` among the complete runs whose images table
    has a row for it; its detections come from that run only, so an image that lost all its
    detections in a newer run shows none.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if table not in ("detections", "images"):
        raise ValueError(f"table must be 'detections' or 'images', not {table!r}")
    outputs = [folder for folder, _ in complete_outputs(patterns)]
    images = _read_table(outputs, "images", ["image_path", "run_id"])
    wanted = list(columns) if columns else None
    if wanted is not None:
        wanted = list(dict.fromkeys([*wanted, "image_path", "run_id"]))
    rows = _read_table(outputs, table, wanted) if table == "detections" else \
        _read_table(outputs, "images", wanted)
    if images is None or rows is None:
        from transforms.records import DETECTIONS_SCHEMA, IMAGES_SCHEMA

        schema = DETECTIONS_SCHEMA if table == "detections" else IMAGES_SCHEMA
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    newest = images.group_by("image_path").aggregate([("run_id", "max")]).rename_columns(
        ["image_path", "run_id"])
    keys = pc.binary_join_element_wise(newest["image_path"], newest["run_id"], "\x00")
    row_keys = pc.binary_join_element_wise(rows["image_path"], rows["run_id"], "\x00")
    latest = rows.filter(pc.is_in(row_keys, value_set=keys))
    if columns:
        latest = latest.select(list(columns))
    return latest.combine_chunks() if isinstance(latest, pa.Table) else latest


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``list`` the complete runs of a glob, or write their ``latest`` view as Parquet."""
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.runs",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="Complete runs matching the globs, oldest first.")
    listing.add_argument("runs", nargs="+", help="Output folders or globs, e.g. 'results/*'.")
    latest = commands.add_parser("latest", help="The newest complete run's rows per image.")
    latest.add_argument("runs", nargs="+", help="Output folders or globs, e.g. 'results/*'.")
    latest.add_argument("--table", choices=("detections", "images"), default="detections")
    latest.add_argument("--output", required=True, help="Parquet file to write.")
    args = parser.parse_args(argv)
    if args.command == "list":
        for folder, record in complete_outputs(args.runs):
            counts = record.get("counts", {})
            print(f"{record['run_id']}  {folder}  images_read={counts.get('images_read')} "
                  f"ok={counts.get('images_ok')} skipped={counts.get('images_skipped')} "
                  f"fingerprint={record.get('fingerprint')}")
        return
    import pyarrow.parquet as pq

    view = latest_view(args.runs, args.table)
    pq.write_table(view, args.output, compression="zstd")
    print(f"{view.num_rows} {args.table} rows from the latest complete run per image -> "
          f"{args.output}")


if __name__ == "__main__":
    main()
