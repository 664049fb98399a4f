"""The output folder's checks, before any work: not a root, never where the input is, never a
folder that holds names of this job it did not write, an earlier run only with --overwrite (or
an unfinished one that commits resume), and writable."""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.errors import ConfigError
from beam_pipeline.run_record import read_run_record
from transforms.inputs import InputSpec, first_manifest_path
from transforms.output_folder import (
    COMMITS,
    OUTPUT_NAMES,
    RUN_RECORD,
    SUCCESS_MARKER,
    TABLES,
    list_output,
)
from transforms.paths import local_path
from transforms.records import short_list

__all__ = ["check_output", "check_output_location", "input_locations"]


def _is_root(output: str) -> bool:
    local = local_path(output)
    if local is not None:
        path = os.path.realpath(local or ".")
        return os.path.dirname(path) == path
    _, _, rest = output.partition("://")
    return "/" not in rest.strip("/")  # s3://bucket, gs://bucket/: the bucket itself


def _comparable(path: str) -> str:
    """A path to compare folders by: local paths absolute with links resolved."""
    local = local_path(path)
    if local is not None:
        return os.path.realpath(local or ".").rstrip("/") or "/"
    return path.rstrip("/")


def input_locations(spec: InputSpec) -> list[tuple[str, bool]]:
    """What an input reads, for the output-overlap check: ``(location, reaches_below)``. A
    folder reaches below itself (``reaches_below``); a glob is its folder before the first
    wildcard, reaching below it when a wildcard can match folders too (``**``, or one before
    the last ``/``); a single file or a manifest is the file itself, plus a manifest's first
    listed path's folder (not reaching below it)."""
    if spec.kind == "manifest":
        first = first_manifest_path(spec)
        return [(spec.location, False)] + ([(posixpath.dirname(first), False)] if first else [])
    if spec.root is not None:
        return [(spec.root, True)]
    location = spec.location
    cuts = [location.find(char) for char in "*?[" if char in location]
    if not cuts:
        return [(location, False)]
    folder = posixpath.dirname(location[:min(cuts)]) or "."
    reaches = "**" in location or "/" in location[min(cuts):]
    return [(folder, reaches)]


def check_output_location(output: str, spec: InputSpec) -> None:
    """Refuses a filesystem root or bucket, and an output that equals or contains what the
    input reads, or lies inside a folder it reads recursively: deleting or listing there
    would reach the user's images."""
    if _is_root(output):
        raise ConfigError(f"--output {output} is a filesystem root or a bucket's top; give a "
                          "folder of its own (for example results/run-1)")
    out = _comparable(output)
    for location, reaches_below in input_locations(spec):
        where = _comparable(location)
        if out == where:
            relation = f"is the input {location}"
        elif where.startswith(out.rstrip("/") + "/"):
            relation = f"contains the input {location}"
        elif reaches_below and out.startswith(where.rstrip("/") + "/"):
            relation = f"lies inside the input folder {location}"
        else:
            continue
        raise ConfigError(f"--output {output} {relation}; the job never writes where it "
                          "reads: choose an --output outside the input (nothing was touched)")


def _job_output_shown(output: str, listing) -> tuple[bool, Optional[str]]:
    """Whether ``output`` shows it is this job's output (a readable run record, or part files)
    and the record's state for messages."""
    try:
        record = read_run_record(output)
    except ValueError:
        record = None
    if record is not None:
        return True, "finished" if record.get("status") == "complete" else "unfinished"
    # Part files, commit records, the run lock or a sink's temporary folder: names only this
    # job writes (run.json and _SUCCESS alone could be anyone's).
    loose = {FileSystems.join(output, name) for name in (RUN_RECORD, SUCCESS_MARKER)}
    shown = listing.parts > 0 or any(path not in loose for path in listing.ours)
    return shown, f"unfinished, no {RUN_RECORD}"


def check_output(output: str, *, overwrite: bool, resume: bool = False) -> None:
    """Refuses an output folder that holds an earlier run of this job (unless ``overwrite``, or
    ``resume`` for an unfinished run with commits, which the same command resumes),
    one that holds names this job writes (``run.json``, ``_SUCCESS``, ``detections/``,
    ``images/``) without showing it is this job's output, or one where those names are links;
    then proves the folder is writable by writing and deleting a probe file.

    Nothing is deleted here: ``validate`` deletes the earlier run's files only once every other
    check has passed, so a configuration mistake never costs an earlier run's results.
    """
    local = local_path(output)
    if local is not None and os.path.isfile(local):
        raise ConfigError(f"--output {output} is a file; --output names a folder (it gets "
                          "detections/, images/ and run.json): choose another path")
    if local is not None:
        links = [name for name in OUTPUT_NAMES if os.path.islink(os.path.join(local, name))]
        if links:
            raise ConfigError(f"--output {output} has {', '.join(links)} as a symbolic link; the "
                              "job never writes or deletes through links: choose another --output")
    listing = list_output(output)
    ours_shown, state = _job_output_shown(output, listing)

    def top(path: str) -> str:  # the first name below output
        relative = os.path.relpath(path, local) if local is not None \
            else path[len(output.rstrip("/")) + 1:]
        return relative.replace(os.sep, "/").split("/", 1)[0]

    claimed = [path for path in listing.others if top(path) in OUTPUT_NAMES]
    if not ours_shown and (listing.ours or claimed):
        raise ConfigError(
            f"--output {output} holds {short_list(listing.ours + claimed)}, which this job did not "
            f"write (no run record of this job, no part-*.parquet files): choose another "
            "--output; nothing was deleted")
    # An earlier run is its record, part files or commit records; the run lock or a sink's
    # temporary folder alone is a run still starting (the lock then speaks) or one killed
    # before it wrote anything.
    earlier = state == "finished" or listing.parts > 0 or any(
        top(path) == COMMITS for path in listing.ours) or any(
        top(path) == RUN_RECORD for path in listing.ours)
    if earlier and not overwrite and not (resume and state != "finished"):
        tables = sorted({top(path) for path in listing.ours} & set(TABLES))
        existing = [FileSystems.join(output, table) for table in tables] or [
            FileSystems.join(output, RUN_RECORD)]
        hint = ""
        if state != "finished" and FileSystems.match(
                [FileSystems.join(output, COMMITS, "commit-*.json")])[0].metadata_list:
            hint = " (it has commits: run its command again, with --commit_every on, to resume)"
        raise ConfigError(f"--output {output} already holds a run's tables ({state}{hint}: "
                          f"{', '.join(existing)}); pass --overwrite to replace them, or "
                          "choose another --output")
    probe = FileSystems.join(output, f".write-probe-{uuid.uuid4().hex}")
    try:
        if local is not None:
            os.makedirs(local, exist_ok=True)
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # pylint: disable=broad-except
        raise ConfigError(f"--output {output} is not writable ({type(exc).__name__}: {exc}); "
                          "fix its permissions or choose another folder") from exc
