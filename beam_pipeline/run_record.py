"""The run record, ``OUTPUT/run.json``: its counts from the tables written, the error gate,
and reading and writing the record safely (what a run is: ``beam_pipeline.run_identity``).

An output folder is a finished run only when its ``run.json`` says ``"status": "complete"``;
the pipeline writes that file as its very last act, after both tables are final. Everything
trusts nothing else (like Hadoop/Spark output committers, which write data first and a small
marker last).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.run_identity import (
    RECORD_VERSION,
    RunIdentity,
    content_digest,
    fingerprint,
    library_versions,
    new_run_id,
    row_options,
    run_identity,
    utc_now,
)
from transforms import output_folder
from transforms.output_folder import RUN_RECORD
from transforms.records import ERROR_STAGES

# The run's identity (beam_pipeline.run_identity) is re-exported: older importers take it here.
__all__ = [
    "RECORD_VERSION",
    "ErrorGateFailed",
    "RunIdentity",
    "content_digest",
    "finish_run",
    "fingerprint",
    "gate_line",
    "gate_passed",
    "library_versions",
    "new_run_id",
    "read_run_record",
    "run_counts",
    "row_options",
    "run_identity",
    "utc_now",
    "write_run_record",
]


def write_run_record(output: str, record: Mapping[str, Any]) -> None:
    """Writes ``OUTPUT/run.json`` (whole, in one create: object stores publish it atomically)."""
    data = json.dumps(dict(record), indent=2, sort_keys=False, default=str).encode("utf-8")
    with FileSystems.create(FileSystems.join(output, RUN_RECORD)) as handle:
        handle.write(data + b"\n")


class ErrorGateFailed(RuntimeError):
    """The run's error fraction was over ``--max_error_fraction``; its record is written."""


def run_counts(image_counts: Mapping[str, int], detection_counts: Mapping[str, int],
               classify_failed: int, skipped: int) -> dict[str, Any]:
    """The record's ``counts`` from the per-table counts (``transforms.parquet_sink``)."""
    read = int(image_counts.get("images", 0))
    errors = {stage: int(image_counts.get(f"error_{stage}", 0))
              for stage in ERROR_STAGES}
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
    output_folder.write_success_marker(output)
    write_run_record(output, final)
    if not gate_passed(final):
        raise ErrorGateFailed(gate_line(final, output))


def gate_passed(record: Optional[Mapping[str, Any]]) -> bool:
    """False only for a record whose error gate failed (no record, no gate: nothing failed)."""
    return bool((record or {}).get("error_gate", {}).get("passed", True))


def gate_line(record: Mapping[str, Any], output: str) -> str:
    """The one line a failed error gate prints (the launcher's exit 3, the job's failure)."""
    counts, gate = record.get("counts", {}), record.get("error_gate", {})
    errors = sum(counts.get("errors_by_stage", {}).values())
    return (f"error gate failed: {errors} of {counts.get('images_read')} images are errors "
            f"({counts.get('error_fraction', 0):.1%}), over --max_error_fraction="
            f"{gate.get('max_error_fraction')}; rows and {output}/{RUN_RECORD} are written")


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
    from transforms.paths import local_file_problem

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
