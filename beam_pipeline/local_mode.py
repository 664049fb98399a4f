"""How a local (DirectRunner) run uses the machine, chosen from its cores and the input's size
unless the user set Beam's own flags.

In process, one Python process runs decoding, cropping and the Beam machinery between model
calls, which leaves cores idle; ``multi_processing`` with one worker per core keeps them busy but
pays each worker's start-up (importing TensorFlow, loading both models: about 15 s here). So long
inputs get one worker per core and short ones run in process (``docs/performance.md``).

Each worker sizes its TensorFlow and OpenCV thread pools to its share of the cores
(``transforms.tf_runtime.process_threads``; ``BDC_THREADS`` overrides) and logs only errors
(``beam_pipeline.quiet``); the reason line, which ``run.json`` records as ``running``,
says both.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.quiet import worker_log_flags
from transforms.inputs import InputSpec, manifest_paths
from transforms.tf_runtime import THREADS_ENV, threads_per_process, usable_cores

__all__ = ["LONG_INPUT_IMAGES", "LocalMode", "choose_local_mode", "count_inputs_up_to",
           "usable_cores"]

# At or above this many input paths a local run uses one worker process per core: where two
# workers overtook one process on 2 cores with the benchmark's models (about 760 images,
# docs/performance.md, "Short runs").
LONG_INPUT_IMAGES = 750
# Each worker process holds TensorFlow and both models (about 0.8 GB with the bundled ones).
MAX_AUTO_WORKERS = 8
_BEAM_FLAGS = ("--direct_running_mode", "--direct_num_workers")


class LocalMode(NamedTuple):
    """Extra Beam flags for the run, and one line saying what was chosen and why."""

    flags: tuple[str, ...]
    reason: str


def count_inputs_up_to(spec: InputSpec, limit: int) -> int:
    """How many paths ``--input`` names, counting no further than ``limit`` (a listing or a
    manifest is read only that far)."""
    if spec.kind == "manifest":
        return sum(1 for _ in itertools.islice(manifest_paths(spec), limit))
    found = FileSystems.match([spec.location], limits=[limit])[0].metadata_list
    return len(found)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for index, word in enumerate(argv):
        name, _, value = word.partition("=")
        if name == flag:
            return value if value or index + 1 >= len(argv) else argv[index + 1]
    return None


def _workers_line(workers: int, cores: int) -> str:
    """What each worker process was given: its thread pools and its logging."""
    threads = os.environ.get(THREADS_ENV, "").strip()
    pools = (f"{THREADS_ENV}={threads}" if threads
             else f"{threads_per_process(cores, workers)} TensorFlow/OpenCV threads")
    return f"; each worker: {pools}, logs errors only"


def choose_local_mode(argv: Sequence[str], spec: InputSpec, *, cores: int | None = None,
                      skipping: bool = False, verbose: bool = False) -> LocalMode:
    """Beam's explicit flags win; otherwise a long input on several cores gets
    ``multi_processing`` with one worker per core (at most ``MAX_AUTO_WORKERS``), unless
    earlier complete runs are being skipped (``skipping``): a rerun is mostly done paths, which
    cost less in one process (docs/archive-runs.md). Worker processes log errors only unless
    ``verbose`` (``worker_log_flags``)."""
    cores = cores or usable_cores()
    if any(word.split("=", 1)[0] in _BEAM_FLAGS for word in argv):
        reason = "as set by --direct_running_mode / --direct_num_workers"
        if _flag_value(argv, "--direct_running_mode") != "multi_processing":
            return LocalMode((), reason)
        try:
            workers = int(_flag_value(argv, "--direct_num_workers") or 0) or cores
        except ValueError:
            workers = cores
        return LocalMode(worker_log_flags(argv, verbose=verbose),
                         reason + _workers_line(workers, cores))
    if skipping:
        return LocalMode((), "in process (--skip_done_in: most paths are expected to be done; "
                             "--direct_running_mode=multi_processing for many new images)")
    if cores < 2:
        return LocalMode((), "in process (1 core)")
    count = count_inputs_up_to(spec, LONG_INPUT_IMAGES)
    if count < LONG_INPUT_IMAGES:
        return LocalMode((), f"in process ({count} inputs, under {LONG_INPUT_IMAGES}: worker "
                             "start-up would cost more than it saves)")
    workers = min(cores, MAX_AUTO_WORKERS)
    return LocalMode(("--direct_running_mode=multi_processing",
                      f"--direct_num_workers={workers}",
                      *worker_log_flags(argv, verbose=verbose)),
                     f"multi_processing, {workers} workers ({LONG_INPUT_IMAGES}+ inputs on "
                     f"{cores} cores; --direct_running_mode=in_memory to stay in process)"
                     + _workers_line(workers, cores))
