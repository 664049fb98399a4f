"""Committed progress: a run makes its finished images durable in steps, and the same command
again resumes an interrupted run (docs/commits.md).

The protocol, in one output folder (names in ``transforms/output_folder.py``):

1. The launcher lists the input once, drops the paths a commit already holds (and, with
   ``--skip_done_in``, those complete earlier runs finished), and runs the rest in steps of
   ``--commit_every`` paths, each step a pipeline of its own.
2. A step's sinks write final part files ``TABLE/part-cNNNNN-*.parquet`` (Beam's own temp +
   rename); its last act, on a worker once both tables are renamed, writes the commit record
   ``_commits/commit-NNNNN.json`` (temp + rename) naming those files, their counts and the
   fingerprint. A commit exists exactly when its record does.
3. After the last step the launcher writes ``_SUCCESS`` and ``run.json`` from every commit.

A resume first deletes commit part files that no record names and Beam's temporary folders
(what a crash in the middle of a commit leaves), then goes on from step 1. A lock file, created
with ``O_EXCL``, keeps a second run of the same command out of a folder while one is running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.run_lock import RunLock, RunLocked
from beam_pipeline.selection import committed_set, done_set, list_input, select_paths
from transforms import output_folder
from transforms.paths import is_local_path
from transforms.records import short_message

__all__ = [
    "COMMIT_VERSION",
    "AUTO",
    "DEFAULT_LOCAL_COMMIT_EVERY",
    "LOCAL_RUNNERS",
    "RunLock",
    "RunLocked",
    "RunStopped",
    "commit_every",
    "fingerprint_difference",
    "list_input",
    "next_step_size",
    "read_commits",
    "resumable",
    "run_in_commits",
    "write_commit",
    "write_queued",
]

COMMIT_VERSION = 1
# The local default: steps of about AUTO_STEP_S of work each, sized from the rate of the step
# before (a step's cost is a pipeline start: about 2-5 s in process, 20 s or more with
# multi_processing workers, docs/commits.md); the first step, before any rate is known, has
# FIRST_AUTO_STEP images. So a crash loses at most about 10 minutes or FIRST_AUTO_STEP images.
AUTO = -1
AUTO_STEP_S = 600.0
FIRST_AUTO_STEP = 5000
MIN_AUTO_STEP, MAX_AUTO_STEP = 1000, 200_000
DEFAULT_LOCAL_COMMIT_EVERY = AUTO
# Runners where nothing retries failed work, so commits are on by default.
LOCAL_RUNNERS = ("DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "PrismRunner", "prism")


class RunStopped(RuntimeError):
    """A step failed; what earlier steps committed is kept, and the message says so."""


def commit_every(opts: Any) -> int:
    """``--commit_every`` as given, or its default for the runner (0 = off, AUTO = steps of
    about ``AUTO_STEP_S``)."""
    from apache_beam.options.pipeline_options import StandardOptions

    if opts.commit_every is not None:
        return int(opts.commit_every)
    runner = opts.view_as(StandardOptions).runner or "DirectRunner"
    return DEFAULT_LOCAL_COMMIT_EVERY if runner in LOCAL_RUNNERS else 0


# -- Commit records ------------------------------------------------------------------------------

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


# -- Running in commits ---------------------------------------------------------------------------

def next_step_size(every: int, last: Optional[tuple[int, float]]) -> int:
    """Images in the next step: ``every`` when set; for AUTO, FIRST_AUTO_STEP and then about
    AUTO_STEP_S at the rate of the step before (``last``: its images and seconds)."""
    if every != AUTO:
        return every
    if last is None or last[0] <= 0 or last[1] <= 0:
        return FIRST_AUTO_STEP
    return max(MIN_AUTO_STEP, min(MAX_AUTO_STEP, round(last[0] / last[1] * AUTO_STEP_S)))


def _add(total: dict, values: Mapping[str, Any]) -> dict:
    for key, value in values.items():
        total[key] = total.get(key, 0) + (value or 0)
    return total


def run_in_commits(config: Any, run_step: Callable[[Any], dict[str, float]], *,
                   progress_folder: Optional[str] = None) -> dict[str, float]:
    """Runs ``config`` (a JobConfig with ``commit_every`` set) as consecutive steps, each
    ``run_step(step_config)`` (one pipeline, returning its metrics), then writes ``_SUCCESS``
    and ``run.json`` from every commit. Returns the metrics summed over the steps, with
    ``images_resumed`` and ``images_skipped``. Raises RunStopped when a step fails (its
    leftovers deleted, earlier commits kept) and RunLocked when another run holds the folder.
    """
    from beam_pipeline.run_record import ErrorGateFailed, finish_run

    run, select = config.run, config.select
    output, every = run.output, run.commit_every
    with RunLock(output):
        earlier = read_commits(output)
        for commit in earlier:  # checked by validation too; the folder may have moved on since
            if commit.get("fingerprint") != run.fingerprint:
                raise RunStopped(f"--output {output} holds commits of other settings: "
                                 + fingerprint_difference(commit.get("fingerprint_parts", {}),
                                                          run.fingerprint_parts))
        output_folder.delete_uncommitted(output, [name for c in earlier for name in c["files"]])
        chosen = select_paths(
            select.input, sample=select.sample, held=committed_set(output, earlier),
            done=done_set(select.done_tables, run.fingerprint) if select.done_tables else None)
        todo, skipped, resumed, listing = (chosen.todo, chosen.skipped, chosen.resumed,
                                           chosen.counts)
        if progress_folder:
            write_queued(progress_folder, len(todo))
        first = (earlier[-1]["commit"] + 1) if earlier else 0
        header = {"run_id": run.run_id, "fingerprint": run.fingerprint,
                  "fingerprint_parts": dict(run.fingerprint_parts),
                  "started": run.record.get("started"),
                  "commit_every": "auto" if every == AUTO else every, "attempt": _utc_now()}
        values: dict[str, float] = {}
        position, last, index = 0, None, first
        # Nothing to do and nothing committed: one empty step still writes the empty tables.
        while position < len(todo) or (index == first and not earlier):
            paths = todo[position:position + next_step_size(every, last)]
            step = dataclasses.replace(
                config,
                select=dataclasses.replace(select, input_paths=tuple(paths), done_tables=(),
                                           sample=1.0),
                run=dataclasses.replace(
                    run, part_prefix=f"{output_folder.COMMIT_PART_PREFIX}{index:05d}",
                    commit_index=index, commit_header=header))
            began = time.monotonic()
            try:
                _add(values, run_step(step))
            except Exception as exc:  # pylint: disable=broad-except
                kept = read_commits(output)
                try:
                    output_folder.delete_uncommitted(output, [n for c in kept for n in c["files"]])
                except OSError:
                    pass
                images = sum(int(c.get("images", 0)) for c in kept)
                first_line = short_message(
                    (str(exc).strip() or type(exc).__name__).splitlines()[0], 300)
                raise RunStopped(
                    f"the run stopped in step {index - first + 1}, images {position + 1}-"
                    f"{position + len(paths)} of the {len(todo)} to do "
                    f"({type(exc).__name__}: {first_line}); {len(kept)} commits holding "
                    f"{images} images are kept in {output}: fix the cause and run the same "
                    "command again to resume") from exc
            last = (len(paths), time.monotonic() - began)
            position += len(paths)
            index += 1
        commits = read_commits(output)
        image_counts: dict = {}
        detection_counts: dict = {}
        for commit in commits:
            _add(image_counts, commit["image_counts"])
            _add(detection_counts, commit["detection_counts"])
        record = {**run.record, "commits": {
            "every": "auto" if every == AUTO else every, "count": len(commits),
            "images_resumed": resumed,
            "attempts": len({c.get("attempt") for c in commits} | {header.get("attempt")})}}
        try:
            finish_run(None, output, record, image_counts, detection_counts,
                       sum(int(c["classify_failed"]) for c in commits), skipped,
                       run.max_error_fraction)
        except ErrorGateFailed:
            pass  # the record says so; the launcher reports it like any other run's gate
    # Like Beam's counters, only what counted something (an uninterrupted run in steps reports
    # what the same run as one pipeline does).
    extra = {**listing, "images_resumed": resumed, "commits_resumed": len(earlier),
             "images_skipped": values.get("images_skipped", 0) + skipped}
    values.update({name: value for name, value in extra.items() if value})
    return values


def write_queued(folder: str, count: int) -> None:
    """Progress counts every step's paths once, up front (steps do not count theirs)."""
    try:
        with open(os.path.join(folder, "queued-launcher.json"), "w") as handle:
            json.dump({"kind": "queued", "count": count, "errors": 0}, handle)
    except OSError as exc:
        print(f"warning: progress: {exc}", file=sys.stderr)
