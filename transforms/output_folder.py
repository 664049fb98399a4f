"""The output folder's contract: every name a run of this job writes into ``--output``, how to
list them, and the only code that deletes there.

An output folder holds one run: ``detections/`` and ``images/`` (Parquet part files),
``_SUCCESS``, ``run.json`` (written last), ``_commits/`` when a local run commits in steps, and
``_run.lock`` while a run writes a local folder. Everything that deletes in ``--output`` deletes
only these names, never through a link and never the lock (``delete_tables``,
``delete_uncommitted``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

from transforms.paths import local_path

__all__ = [
    "BEAM_TEMP_PREFIX",
    "COMMITS",
    "COMMIT_FILE",
    "COMMIT_PART_FILE",
    "COMMIT_PART_PREFIX",
    "COMMIT_RECORD",
    "OUTPUT_NAMES",
    "PART_FILE",
    "RUN_LOCK",
    "RUN_RECORD",
    "SUCCESS_MARKER",
    "TABLES",
    "TEMP_FOLDER",
    "OutputListing",
    "delete_tables",
    "delete_uncommitted",
    "is_job_name",
    "list_output",
    "table_files",
    "write_success_marker",
]

TABLES = ("detections", "images")
# Written into --output after both tables are final; its absence means the run did not finish.
SUCCESS_MARKER = "_SUCCESS"
# The run record (beam_pipeline.runs): written after _SUCCESS, the run's very last act.
RUN_RECORD = "run.json"
# Committed progress (beam_pipeline.commits): each commit's final part files in the tables are
# named COMMIT_PART_PREFIX + its 5-digit index (``images/part-c00003-00000-of-00001.parquet``),
# its record is ``COMMITS/commit-00003.json`` (written last, by temp + rename: a commit without
# its record is absent). RUN_LOCK (pid and host of the run writing a local folder,
# beam_pipeline.run_lock) keeps a second run out while one is running; it is its holder's to
# remove, so nothing here deletes it.
COMMITS = "_commits"
COMMIT_RECORD = "commit-{index:05d}.json"
COMMIT_PART_PREFIX = "part-c"
RUN_LOCK = "_run.lock"
# Beam's file sinks write into TABLE/beam-temp-<prefix>-<uuid>/ and rename into place.
BEAM_TEMP_PREFIX = "beam-temp-"
# What a run writes inside each table folder: Beam's final shards (the default shard template
# of WriteParquetTable's prefix, with a commit's index when it commits in steps) and its sink's
# temporary folders (FileBasedSink); in COMMITS, the commit records and their temporary files.
PART_FILE = re.compile(r"part-(c\d{5}-)?\d{5}-of-\d{5}\.parquet")
COMMIT_PART_FILE = re.compile(r"part-c\d{5}-\d{5}-of-\d{5}\.parquet")
TEMP_FOLDER = re.compile(r"beam-temp-part(-c\d{5})?-[0-9a-f]{32}")
COMMIT_FILE = re.compile(r"commit-\d{5}\.json(\.tmp-[0-9a-f]{8})?")
# Every name this job writes at the top of --output. Everything that deletes in --output
# (delete_tables, delete_uncommitted) deletes only these and, inside the table folders and
# COMMITS, PART_FILE / TEMP_FOLDER / COMMIT_FILE.
OUTPUT_NAMES = (RUN_RECORD, SUCCESS_MARKER, RUN_LOCK, COMMITS, *TABLES)


class OutputListing(NamedTuple):
    """What is in an output folder: ``ours`` are paths a run of this job writes (its record,
    its success marker, part files and sink temporary folders in the table folders), ``others``
    everything else there (never deleted). ``parts`` counts the part files among ``ours``."""

    ours: list[str]
    others: list[str]
    parts: int


def is_job_name(relative: str) -> bool:
    """Whether a path relative to --output is one this job writes (see OUTPUT_NAMES)."""
    parts = relative.strip("/").split("/")
    if len(parts) == 1:
        return parts[0] in (RUN_RECORD, SUCCESS_MARKER, RUN_LOCK)
    if parts[0] == COMMITS:
        return len(parts) == 2 and COMMIT_FILE.fullmatch(parts[1]) is not None
    if parts[0] not in TABLES:
        return False
    if len(parts) == 2 and PART_FILE.fullmatch(parts[1]):
        return True
    return TEMP_FOLDER.fullmatch(parts[1]) is not None


def list_output(output: str) -> OutputListing:
    """Lists ``output`` without following links: a link is never one of ours, even when it
    has one of our names, so nothing is ever deleted or written through it."""
    ours: list[str] = []
    others: list[str] = []
    root = local_path(output)
    if root is not None:
        if not os.path.isdir(root) or os.path.islink(root):
            return OutputListing([], [], 0)
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name in (*TABLES, COMMITS) and entry.is_dir(follow_symlinks=False):
                for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    relative = f"{entry.name}/{inner.name}"
                    kind_ok = (inner.is_dir(follow_symlinks=False)
                               if TEMP_FOLDER.fullmatch(inner.name)
                               else inner.is_file(follow_symlinks=False))
                    (ours if is_job_name(relative) and kind_ok else others).append(inner.path)
            elif is_job_name(entry.name) and entry.is_file(follow_symlinks=False):
                ours.append(entry.path)
            else:
                others.append(entry.path)
    else:
        prefix = output.rstrip("/") + "/"
        for metadata in FileSystems.match([prefix + "**"])[0].metadata_list:
            relative = metadata.path[len(prefix):]
            (ours if is_job_name(relative) else others).append(metadata.path)
    parts = sum(1 for path in ours if PART_FILE.fullmatch(path.rstrip("/").rsplit("/", 1)[-1]))
    return OutputListing(ours, others, parts)


def delete_tables(output: str) -> list[str]:
    """Deletes what a run of this job wrote in ``output``: the run record first (so an
    interrupted delete never leaves a folder that looks complete), the success marker, then
    the part files and temporary folders of the tables; a table folder left empty goes too.
    Nothing else is touched, the run lock neither (the caller's run holds it). Returns the
    paths left alone (``OutputListing.others``)."""
    listing = list_output(output)
    ours = [path for path in listing.ours if not path.endswith("/" + RUN_LOCK)]
    first = sorted(ours, key=lambda path: not path.endswith("/" + RUN_RECORD))
    root = local_path(output)
    for path in first:
        if root is not None and os.path.isdir(path):
            shutil.rmtree(path)  # a sink's temporary folder; rmtree does not follow links
        elif root is not None:
            os.remove(path)
        else:
            FileSystems.delete([path])
    if root is not None:
        for table in (*TABLES, COMMITS):
            folder = os.path.join(root, table)
            if os.path.isdir(folder) and not os.path.islink(folder) and not os.listdir(folder):
                os.rmdir(folder)
    return listing.others


def write_success_marker(output: str) -> None:
    """Marks ``output`` as holding the complete tables of a finished run."""
    with FileSystems.create(FileSystems.join(output, SUCCESS_MARKER)) as handle:
        handle.write(b"complete\n")  # not empty: S3 refuses an upload with no parts


def delete_uncommitted(output: str, committed: Iterable[str]) -> list[str]:
    """Deletes what an interrupted commit left in the tables of ``output``: commit part files
    that no commit record lists (``committed``: their paths relative to ``output``, e.g.
    ``images/part-c00003-00000-of-00001.parquet``) and Beam's temporary folders, found by
    ``list_output`` (links never followed). Nothing else is touched. Returns the relative
    paths deleted."""
    keep = set(committed)
    local = local_path(output)
    prefix = (output if local is None else local).rstrip("/") + "/"
    deleted = []
    for path in list_output(output).ours:
        relative = path[len(prefix):] if path.startswith(prefix) else path
        table, _, name = relative.partition("/")
        if table not in TABLES or relative in keep:
            continue
        if TEMP_FOLDER.fullmatch(name.split("/", 1)[0]):  # object stores: its objects
            if local is not None:
                shutil.rmtree(path, ignore_errors=True)
            else:
                FileSystems.delete([path])
        elif COMMIT_PART_FILE.fullmatch(name):
            FileSystems.delete([path])
        else:
            continue
        deleted.append(relative)
    return deleted


def table_files(output: str, table: str) -> str:
    """The glob of one table's Parquet files in an output folder."""
    return FileSystems.join(output.rstrip("/"), table, "*.parquet")
