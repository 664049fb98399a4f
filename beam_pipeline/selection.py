"""SelectPaths in the launcher, for local runs: list the input, sample it, and drop what this
run's commits hold and what complete earlier runs finished, keeping only the paths to do as
strings (the rest as 128-bit digests, ``beam_pipeline.path_set``). Distributed runners select
on the workers (``beam_pipeline.steps.SelectPaths``, ``transforms.skipping``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.path_set import BATCH, PathSet, batched, digests, read_path_set
from transforms.reading import InputSpec, listed_kind, manifest_paths
from transforms.skipping import in_sample

__all__ = ["Selection", "committed_set", "done_set", "list_input", "select_in_launcher",
           "select_paths"]


@dataclasses.dataclass(frozen=True)
class Selection:
    """What a local run does with its listed paths; each distinct listed path (within the
    sample) is counted once, in exactly one of ``todo``, ``skipped`` and ``resumed``."""

    todo: list[str]  # to process: distinct, sorted
    skipped: int  # finished by a complete earlier run (and not held by this run's commits)
    resumed: int  # held by this run's own commits
    counts: dict[str, int]  # the listing's counters, as the pipeline's listing counts them


def _listed(spec: InputSpec, tally: dict[str, int]) -> Iterator[str]:
    """The paths ``--input`` names, repeats kept: a manifest is read lazily; a folder keeps
    its visible image files (``tally`` gets what was skipped and ``files_listed``)."""
    if spec.kind == "manifest":
        yield from manifest_paths(spec)
        return
    paths = [m.path for m in FileSystems.match([spec.location])[0].metadata_list]
    if spec.only_images:
        kinds = [listed_kind(path, spec.root) for path in paths]
        for kind, name in (("hidden", "files_skipped_hidden"),
                           ("other", "files_skipped_not_image")):
            tally[name] = kinds.count(kind)
        paths = [path for path, kind in zip(paths, kinds) if kind == "image"]
    tally["files_listed"] = len(paths)
    yield from paths


def _distinct(chunks: Sequence[np.ndarray]) -> int:
    return len(PathSet.from_digests(chunks))


def select_paths(spec: InputSpec, *, sample: float = 1.0, done: Optional[PathSet] = None,
                 held: Optional[PathSet] = None) -> Selection:
    """The listed paths within ``sample``, split into to do, ``done`` by earlier runs and
    ``held`` by this run's commits. Memory: the paths to do as strings, every other listed
    path as a 16-byte digest."""
    tally: dict[str, int] = {}
    todo: set[str] = set()
    skipped, resumed = [], []
    sampled = (path for path in _listed(spec, tally) if in_sample(path, sample))
    for batch in batched(sampled, BATCH):
        if not done and not held:
            todo.update(batch)
            continue
        words = digests(batch)
        in_held = held.contains(words) if held else np.zeros(len(batch), dtype=bool)
        in_done = (done.contains(words) if done else np.zeros(len(batch), dtype=bool)) \
            & ~in_held
        resumed.append(words[in_held])
        skipped.append(words[in_done])
        todo.update(path for path, keep in zip(batch, ~(in_held | in_done)) if keep)
    counts = {name: value for name, value in tally.items() if value}
    return Selection(sorted(todo), _distinct(skipped), _distinct(resumed), counts)


def list_input(spec: InputSpec, *, sample: float = 1.0,
               counts: Optional[dict[str, int]] = None) -> list[str]:
    """The paths ``--input`` names, once each and sorted, as ``ReadImagePaths`` lists them
    (a folder: visible image files only), within ``--sample``. ``counts`` gets the listing's
    counters as the pipeline's listing counts them (``files_listed``, ``files_skipped_hidden``,
    ``files_skipped_not_image``), so a run in commit steps reports the same metrics."""
    selection = select_paths(spec, sample=sample)
    if counts is not None:
        counts.update(selection.counts)
    return selection.todo


def committed_set(output: str, commits: Iterable[Mapping[str, Any]]) -> PathSet:
    """The image paths the commits' images files hold."""
    return read_path_set([FileSystems.join(output.rstrip("/"), name) for commit in commits
                          for name in commit["files"] if name.startswith("images/")])


def done_set(done_tables: Sequence[str], fingerprint: str) -> PathSet:
    """Paths complete earlier runs finished ``ok`` with ``fingerprint`` (their images-table
    globs), read in the launcher (``SkipDoneImages`` does the same join on workers)."""
    files = [m.path for result in FileSystems.match(list(done_tables))
             for m in result.metadata_list]
    return read_path_set(files, fingerprint=fingerprint)


def select_in_launcher(config: Any) -> tuple[Any, dict[str, int]]:
    """A local run's JobConfig with its paths selected here (``select_paths`` with the done
    set of ``done_tables``), not by the graph's keyed join; and the counters the graph's
    listing and join would have counted (``images_skipped``, ``files_listed``, ...)."""
    select, run = config.select, config.run
    chosen = select_paths(select.input, sample=select.sample,
                          done=done_set(select.done_tables, run.fingerprint))
    config = dataclasses.replace(
        config,
        select=dataclasses.replace(select, input_paths=tuple(chosen.todo), done_tables=(),
                                   sample=1.0),
        run=dataclasses.replace(run, skipped_in_launcher=chosen.skipped))
    counts = {**chosen.counts, "images_skipped": chosen.skipped}
    return config, {name: value for name, value in counts.items() if value}
