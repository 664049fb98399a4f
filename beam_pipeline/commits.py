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
(what a crash in the middle of a commit leaves), then goes on from step 1. The launcher holds
the folder's lock (``beam_pipeline.run_lock``) around all of it: one run at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from beam_pipeline.commit_records import (
    COMMIT_VERSION,
    fingerprint_difference,
    read_commits,
    resumable,
    write_commit,
)
from beam_pipeline.selection import committed_set, done_set, list_input, select_paths
from transforms import output_folder
from transforms.records import short_message

__all__ = [
    "COMMIT_VERSION",
    "AUTO",
    "DEFAULT_LOCAL_COMMIT_EVERY",
    "LOCAL_RUNNERS",
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
    leftovers deleted, earlier commits kept). The caller holds the folder's lock (``main.run``).
    """
    from beam_pipeline.run_identity import utc_now

    run, select = config.run, config.select
    output, every = run.output, run.commit_every
    earlier = _earlier_commits(output, run)
    chosen = select_paths(
        select.input, sample=select.sample, held=committed_set(output, earlier),
        done=done_set(select.done_tables, run.fingerprint) if select.done_tables else None)
    todo = chosen.todo
    if progress_folder:
        write_queued(progress_folder, len(todo))
    first = (earlier[-1]["commit"] + 1) if earlier else 0
    header = {"run_id": run.run_id, "fingerprint": run.fingerprint,
              "fingerprint_parts": dict(run.fingerprint_parts),
              "started": run.record.get("started"),
              "commit_every": "auto" if every == AUTO else every, "attempt": utc_now()}
    values: dict[str, float] = {}
    position, last, index = 0, None, first
    # Nothing to do and nothing committed: one empty step still writes the empty tables.
    while position < len(todo) or (index == first and not earlier):
        paths = todo[position:position + next_step_size(every, last)]
        began = time.monotonic()
        try:
            _add(values, run_step(_step_config(config, paths, index, header)))
        except Exception as exc:  # pylint: disable=broad-except
            where = (f"step {index - first + 1}, images {position + 1}-"
                     f"{position + len(paths)} of the {len(todo)} to do")
            raise _stopped(output, where, exc) from exc
        last = (len(paths), time.monotonic() - began)
        position += len(paths)
        index += 1
    _finish(config, header, resumed=chosen.resumed, skipped=chosen.skipped)
    # Like Beam's counters, only what counted something (an uninterrupted run in steps reports
    # what the same run as one pipeline does).
    extra = {**chosen.counts, "images_resumed": chosen.resumed, "commits_resumed": len(earlier),
             "images_skipped": values.get("images_skipped", 0) + chosen.skipped}
    values.update({name: value for name, value in extra.items() if value})
    return values


def _earlier_commits(output: str, run: Any) -> list[dict[str, Any]]:
    """The commits an earlier attempt left, checked against this run's fingerprint (validation
    checked too; the folder may have moved on since), with their uncommitted leftovers gone."""
    earlier = read_commits(output)
    for commit in earlier:
        if commit.get("fingerprint") != run.fingerprint:
            raise RunStopped(f"--output {output} holds commits of other settings: "
                             + fingerprint_difference(commit.get("fingerprint_parts", {}),
                                                      run.fingerprint_parts))
    output_folder.delete_uncommitted(output, [name for c in earlier for name in c["files"]])
    return earlier


def _step_config(config: Any, paths: Sequence[str], index: int,
                 header: Mapping[str, Any]) -> Any:
    """The config of step ``index``: its paths only, its part files and commit record."""
    return dataclasses.replace(
        config,
        select=dataclasses.replace(config.select, input_paths=tuple(paths), done_tables=(),
                                   sample=1.0),
        run=dataclasses.replace(
            config.run, part_prefix=f"{output_folder.COMMIT_PART_PREFIX}{index:05d}",
            commit_index=index, commit_header=header))


def _stopped(output: str, where: str, exc: Exception) -> RunStopped:
    """A failed step's leftovers deleted; the one line that says what is kept."""
    kept = read_commits(output)
    try:
        output_folder.delete_uncommitted(output, [n for c in kept for n in c["files"]])
    except OSError:
        pass
    images = sum(int(c.get("images", 0)) for c in kept)
    first_line = short_message((str(exc).strip() or type(exc).__name__).splitlines()[0], 300)
    return RunStopped(
        f"the run stopped in {where} ({type(exc).__name__}: {first_line}); {len(kept)} "
        f"commits holding {images} images are kept in {output}: fix the cause and run the "
        "same command again to resume")


def _finish(config: Any, header: Mapping[str, Any], *, resumed: int, skipped: int) -> None:
    """``_SUCCESS`` and ``run.json`` from every commit record; a failed error gate is in the
    record, and the launcher reports it like any other run's."""
    from beam_pipeline.run_record import ErrorGateFailed, finish_run

    run = config.run
    commits = read_commits(run.output)
    image_counts: dict = {}
    detection_counts: dict = {}
    for commit in commits:
        _add(image_counts, commit["image_counts"])
        _add(detection_counts, commit["detection_counts"])
    every = run.commit_every
    record = {**run.record, "commits": {
        "every": "auto" if every == AUTO else every, "count": len(commits),
        "images_resumed": resumed,
        "attempts": len({c.get("attempt") for c in commits} | {header.get("attempt")})}}
    try:
        finish_run(None, run.output, record, image_counts, detection_counts,
                   sum(int(c["classify_failed"]) for c in commits), skipped,
                   run.max_error_fraction)
    except ErrorGateFailed:
        pass


def write_queued(folder: str, count: int) -> None:
    """Progress counts every step's paths once, up front (steps do not count theirs)."""
    try:
        with open(os.path.join(folder, "queued-launcher.json"), "w") as handle:
            json.dump({"kind": "queued", "count": count, "errors": 0}, handle)
    except OSError as exc:
        print(f"warning: progress: {exc}", file=sys.stderr)
