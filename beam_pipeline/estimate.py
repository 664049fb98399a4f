"""``--estimate``: what a run would cost, measured before it. Lists the input as the run would
(``--sample`` and ``--skip_done_in`` applied), picks a small deterministic sample with
``--sample``'s hash, runs the real job on it here (``python -m beam_pipeline``, in the mode the
whole run would use) into a temporary folder, and prints the cost per image and for the whole
input. Nothing is written to ``--output``; the temporary folder is removed."""

from __future__ import annotations

import argparse
import heapq
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from beam_pipeline.cost_model import SampleRun, estimate_lines, steady_state
from beam_pipeline.errors import ConfigError
from beam_pipeline.process_tree import TreeSampler
from transforms.progress import EVERY_ENV, read_progress
from transforms.skipping import HASH_SPACE, sample_value

__all__ = ["estimate"]

# Flags the sample run does not take from the command: it gets its own input and output, its
# paths are sampled and skipped already, and it must count progress.
_DROPPED = ("--estimate", "--estimate_images", "--deadline_hours", "--input", "--output",
            "--skip_done_in", "--sample", "--progress", "--commit_every", "--overwrite")
_PROGRESS_EVERY_S = "0.2"
_TAIL_CHARS = 3000


def _drop_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the flags ``names`` (``--f=v``, ``--f v``; a switch's bare word and
    any value it was given)."""
    from beam_pipeline.early_flags import switch
    from beam_pipeline.options import job_parser

    takes_value = {option: action.nargs is None for action in job_parser()._actions
                   for option in action.option_strings}
    kept, words = [], list(argv)
    while words:
        word = words.pop(0)
        name = word.split("=", 1)[0]
        if name not in names:
            kept.append(word)
            continue
        if "=" in word or not words:
            continue
        if takes_value.get(name, True):
            words.pop(0)
        else:
            try:
                switch(words[0])
                words.pop(0)  # --estimate true
            except argparse.ArgumentTypeError:
                pass  # the next word is another flag
    return kept


def _checked(argv: list[str], work: str):
    """The options and plan of the command, every check passed (ConfigError otherwise), with
    the temporary folder as its output: the command's own ``--output`` is never looked at."""
    from beam_pipeline.main import _configure, _is_local_direct
    from transforms import model_cache

    probe = [*_drop_flags(argv, ("--output", "--estimate", "--overwrite")),
             "--output", os.path.join(work, "checks")]
    options, config = _configure(probe)
    model_cache.forget()  # the sample runs in a process of its own
    if not _is_local_direct(options):
        raise ConfigError("--estimate measures on this machine's DirectRunner: leave out "
                          "--runner (the vCPU-hours it prints hold for any runner's workers "
                          "of this kind)")
    return options, config


def _sample_paths(config, images: int) -> tuple[list[str], int, int]:
    """The sample (the ``images`` paths with the lowest ``--sample`` hash of those the run
    would do), the number of paths to do and the number skipped as done."""
    from beam_pipeline.selection import done_set, select_paths

    select = config.select
    done = done_set(select.done_tables, config.run.fingerprint) if select.done_tables else None
    chosen = select_paths(select.input, sample=select.sample, done=done)
    return heapq.nsmallest(images, chosen.todo, key=sample_value), len(chosen.todo), \
        chosen.skipped


def _run_sample(argv: list[str], work: str, images: int, workers: int) -> SampleRun:
    """``python -m beam_pipeline argv`` here, its process tree and progress counts (images
    decoded, entering detection one at a time; paths queued) sampled."""
    from beam_pipeline.main import PROGRESS_FOLDER_ENV

    progress, scratch = os.path.join(work, "progress"), os.path.join(work, "tmp")
    os.makedirs(progress)
    os.makedirs(scratch)
    env = dict(os.environ, **{PROGRESS_FOLDER_ENV: progress, EVERY_ENV: _PROGRESS_EVERY_S,
                              "TMPDIR": scratch})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "beam_pipeline", *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def counts() -> tuple[int, int, int]:
        totals = read_progress(progress)
        working = sum(1 for name in os.listdir(progress) if name.startswith("decoded-")) \
            if os.path.isdir(progress) else 0
        return totals.get("decoded", 0), totals.get("queued", 0), working

    with TreeSampler(child.pid, every=0.1, extra=counts) as sampler:
        _, stderr = child.communicate()
        wall = time.monotonic() - start
    if child.returncode != 0:
        raise RuntimeError(f"the sample run exited {child.returncode}:\n"
                           f"{stderr[-_TAIL_CHARS:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    timeline = [(t - start, c, rss, *extra) for t, c, rss, extra in sampler.samples]
    return SampleRun(images, wall, max(cpu, timeline[-1][1] if timeline else 0.0),
                     max((row[2] for row in timeline), default=0), timeline, workers)


def _workers(argv: Sequence[str]) -> int:
    """The worker processes a DirectRunner run of ``argv`` decodes images in."""
    from beam_pipeline.local_mode import _flag_value, usable_cores

    if _flag_value(argv, "--direct_running_mode") != "multi_processing":
        return 1
    try:
        return int(_flag_value(argv, "--direct_num_workers") or 0) or usable_cores()
    except ValueError:
        return usable_cores()


def estimate(argv: Sequence[str]) -> None:
    """Prints the estimate for the run ``argv`` asks for (``--estimate`` in it)."""
    from beam_pipeline.commits import commit_every
    from beam_pipeline.local_mode import choose_local_mode, usable_cores
    from beam_pipeline.options import DetectClassifyOptions

    argv = list(argv)
    work = tempfile.mkdtemp(prefix="bdc-estimate-")
    try:
        options, config = _checked(argv, work)
        job = options.view_as(DetectClassifyOptions)
        if job.estimate_images < 1 or (job.deadline_hours is not None
                                       and job.deadline_hours <= 0):
            raise ConfigError("--estimate_images must be at least 1 and --deadline_hours "
                              "above 0")
        sample, todo, skipped = _sample_paths(config, job.estimate_images)
        mode = choose_local_mode(argv, config.select.input,
                                 skipping=bool(config.select.done_tables))
        head = (f"estimate: {todo} images to do ({skipped} skipped as done); a sample of "
                f"{len(sample)}")
        if not sample:
            print(head + ": nothing to run", flush=True)
            return
        fraction = (sample_value(sample[-1]) + 1) / HASH_SPACE
        print(f"{head} (the paths --sample {fraction:.3g} picks), run here as the whole run "
              f"would run: DirectRunner, {mode.reason}", flush=True)
        manifest = os.path.join(work, "sample.txt")
        with open(manifest, "w", encoding="utf-8") as handle:
            handle.write("\n".join(sample) + "\n")
        sample_argv = [*_drop_flags(argv, _DROPPED),
                       *(flag for flag in mode.flags if flag.startswith("--direct_")),
                       "--input", manifest, "--output", os.path.join(work, "out")]
        run = _run_sample(sample_argv, work, len(sample), _workers(sample_argv))
        steady = steady_state(run)
        if steady is None:
            raise RuntimeError("the sample run counted no image decoded")
        print("\n".join(estimate_lines(run, steady, todo=todo, cores=usable_cores(),
                                       every=commit_every(job),
                                       deadline_hours=job.deadline_hours)), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
