"""How a local (DirectRunner) run uses the machine, chosen from its cores and the input's size
unless the user set Beam's own flags.

In process, one Python process runs decoding, cropping and the Beam machinery between model
calls, which leaves cores idle; ``multi_processing`` with one worker per core keeps them busy but
pays each worker's start-up (importing TensorFlow, loading both models: about 15 s here). So long
inputs get one worker per core and short ones run in process (``docs/performance.md``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

from transforms.reading import InputSpec, parse_manifest_line

__all__ = ["LONG_INPUT_IMAGES", "LocalMode", "choose_local_mode", "count_inputs_up_to"]

# At or above this many input paths a local run uses one worker process per core.
LONG_INPUT_IMAGES = 1000
# Each worker process holds TensorFlow and both models (about 0.8 GB with the bundled ones).
MAX_AUTO_WORKERS = 8
_BEAM_FLAGS = ("--direct_running_mode", "--direct_num_workers")


class LocalMode(NamedTuple):
    """Extra Beam flags for the run, and one line saying what was chosen and why."""

    flags: tuple[str, ...]
    reason: str


def usable_cores() -> int:
    """CPUs this process may run on (affinity and container limits aware where Linux says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def count_inputs_up_to(spec: InputSpec, limit: int) -> int:
    """How many paths ``--input`` names, counting no further than ``limit`` (a listing or a
    manifest is read only that far)."""
    if spec.kind == "manifest":
        count = 0
        with FileSystems.open(spec.location, compression_type="uncompressed") as handle:
            lines = io.TextIOWrapper(handle, encoding="utf-8", errors="replace")
            if spec.csv_column is not None:
                next(lines, None)
            for line in lines:
                if parse_manifest_line(line, base="", csv_column=spec.csv_column) is not None:
                    count += 1
                    if count >= limit:
                        break
        return count
    found = FileSystems.match([spec.location], limits=[limit])[0].metadata_list
    return len(found)


def choose_local_mode(argv: Sequence[str], spec: InputSpec, *, cores: int | None = None,
                      skipping: bool = False) -> LocalMode:
    """Beam's explicit flags win; otherwise a long input on several cores gets
    ``multi_processing`` with one worker per core (at most ``MAX_AUTO_WORKERS``), unless
    earlier complete runs are being skipped (``skipping``): a rerun is mostly done paths, which
    cost less in one process (docs/archive-runs.md)."""
    if any(word.split("=", 1)[0] in _BEAM_FLAGS for word in argv):
        return LocalMode((), "as set by --direct_running_mode / --direct_num_workers")
    if skipping:
        return LocalMode((), "in process (--skip_done_in: most paths are expected to be done; "
                             "--direct_running_mode=multi_processing for many new images)")
    cores = cores or usable_cores()
    if cores < 2:
        return LocalMode((), "in process (1 core)")
    count = count_inputs_up_to(spec, LONG_INPUT_IMAGES)
    if count < LONG_INPUT_IMAGES:
        return LocalMode((), f"in process ({count} inputs, under {LONG_INPUT_IMAGES}: worker "
                             "start-up would cost more than it saves)")
    workers = min(cores, MAX_AUTO_WORKERS)
    return LocalMode(("--direct_running_mode=multi_processing",
                      f"--direct_num_workers={workers}"),
                     f"multi_processing, {workers} workers ({LONG_INPUT_IMAGES}+ inputs on "
                     f"{cores} cores; --direct_running_mode=in_memory to stay in process)")
