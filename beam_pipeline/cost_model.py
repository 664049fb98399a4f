"""From the readings of ``--estimate``'s sample run to what the whole input costs: the steady
state per image apart from the fixed start-up, the wall time here, vCPU-hours, and the
machines a deadline needs. Pure functions on numbers (``beam_pipeline.estimate`` measures)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Optional

from beam_pipeline.commits import AUTO, next_step_size

__all__ = ["SampleRun", "SteadyState", "commit_steps", "estimate_lines", "steady_state"]

MAX_PARTS = 8
MIN_PART_S = 0.5


@dataclasses.dataclass(frozen=True)
class SampleRun:
    """One sample run of the job, measured from outside: ``timeline`` holds readings
    ``(s since start, tree CPU s, tree RSS bytes, images decoded, paths queued, processes
    that have decoded an image)``; ``workers``: the processes that run the images."""

    images: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    timeline: list[tuple[float, float, int, int, int, int]]
    workers: int = 1


@dataclasses.dataclass(frozen=True)
class SteadyState:
    """Per image once running, and when the run got there. ``window`` names the images the
    rates are taken over; ``parts`` are ``(images/s, CPU s per image)`` of its consecutive
    parts (the spread)."""

    wall_per_image: float
    cpu_per_image: float
    window: str
    parts: list[tuple[float, float]]
    first_done: tuple[float, float, int]  # (s, CPU s, RSS) at the first image decoded
    ready: Optional[tuple[float, float]]  # (s, CPU s) when the launcher queued the paths


def _changes(run: SampleRun) -> list[tuple[float, float, int, int]]:
    """``(s, CPU s, done, processes working)`` at each reading where the decoded count grew."""
    points, last = [], 0
    for t, cpu, _, done, _, working in run.timeline:
        if done > last:
            points.append((t, cpu, done, working))
            last = done
    return points


def _parts(points: list[tuple[float, float, int]], images: int) -> list[tuple[float, float]]:
    """Consecutive parts of at least ``images / MAX_PARTS`` images (4 or more) and
    ``MIN_PART_S``: shorter ones would show the progress counts' steps, not the work."""
    size = max(4, math.ceil(images / MAX_PARTS))
    parts, start = [], points[0]
    for point in points[1:]:
        if point[2] - start[2] >= size and point[0] - start[0] >= MIN_PART_S:
            count = point[2] - start[2]
            parts.append((count / (point[0] - start[0]), (point[1] - start[1]) / count))
            start = point
    return parts


def steady_state(run: SampleRun) -> Optional[SteadyState]:
    """The rates between the readings where 10% (and every worker process started) and 90% of
    the sample were decoded; when the
    progress counts are too coarse for that, from the first image decoded to the end of the run
    (which includes the tail: an upper bound). None when no image was counted decoded."""
    points = _changes(run)
    if not points:
        return None
    tenth = max(1, math.ceil(0.1 * run.images))
    # Not before every worker process has started on its share: until then the others are
    # still loading their models, start-up that is no image's cost.
    low = next((p for p in points if p[2] >= tenth and p[3] >= run.workers),
               next(p for p in points if p[2] >= tenth))
    high = next((p for p in points if p[2] >= math.floor(0.9 * run.images)), points[-1])
    window = [p for p in points if low[0] <= p[0] <= high[0]]
    if high[2] - low[2] >= 2 and high[0] > low[0]:
        count = high[2] - low[2]
        wall, cpu = (high[0] - low[0]) / count, (high[1] - low[1]) / count
        label = f"images {low[2]}-{high[2]} of {run.images}"
    else:
        first = points[0]
        count = max(1, run.images - first[2] + 1)
        wall = (run.wall_s - first[0]) / count
        cpu = max(0.0, run.cpu_s - first[1]) / count
        label = "from the first image decoded to the end (too few progress steps: an upper bound)"
    ready = next(((t, c) for t, c, _, _, queued, _ in run.timeline if queued), None)
    first = next((t, c, rss) for t, c, rss, done, _, _ in run.timeline if done)
    return SteadyState(wall, cpu, label, _parts(window, run.images), first, ready)


def commit_steps(images: int, every: int, wall_per_image: float) -> int:
    """How many commit steps (pipelines) a run over ``images`` makes at this rate."""
    if not every:
        return 1
    steps, left, last = 0, images, None
    while left > 0 or steps == 0:
        size = next_step_size(every, last)
        last = (size, size * wall_per_image)
        left -= size
        steps += 1
    return steps


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _spread(values: list[float], scale: float, spec: str) -> str:
    scaled = [value * scale for value in values]
    return "/".join(format(v, spec) for v in (min(scaled), statistics.median(scaled),
                                              max(scaled)))


def estimate_lines(run: SampleRun, steady: SteadyState, *, todo: int, cores: int,
                   every: int = AUTO, deadline_hours: Optional[float] = None) -> list[str]:
    """The estimate's lines after its first: the sample, start-up, per image, memory, the
    whole input here, and the deadline."""
    mb = 2**20
    start_s, start_cpu, start_rss = steady.first_done
    fixed_wall = max(0.0, run.wall_s - run.images * steady.wall_per_image)
    fixed_cpu = max(0.0, run.cpu_s - run.images * steady.cpu_per_image)
    ready_s, ready_cpu = steady.ready or (start_s, start_cpu)
    steps = commit_steps(todo, every, steady.wall_per_image)
    wall = fixed_wall + todo * steady.wall_per_image + (steps - 1) * (start_s - ready_s)
    cpu = fixed_cpu + todo * steady.cpu_per_image + (steps - 1) * (start_cpu - ready_cpu)
    spread = (f"; spread over {len(steady.parts)} parts (min/median/max): images/s "
              f"{_spread([p[0] for p in steady.parts], 1, '.1f')}, CPU ms "
              f"{_spread([p[1] for p in steady.parts], 1000, '.0f')}"
              if len(steady.parts) >= 2 else "; spread: too few parts to show")
    lines = [
        f"sample run: {run.wall_s:.1f} s wall, {run.cpu_s:.1f} CPU s, peak RSS "
        f"{run.peak_rss / mb:.0f} MB (the job's process tree, {run.images} images)",
        f"start-up (fixed, not per image): {start_s:.1f} s wall and {start_cpu:.1f} CPU s "
        "until the first image was decoded (imports, checks, model loads, worker start); "
        f"fixed in all: {fixed_wall:.1f} s wall, {fixed_cpu:.1f} CPU s",
        f"per image (steady state, {steady.window}): {steady.wall_per_image:.3f} s wall "
        f"({1 / steady.wall_per_image:.1f} images/s), {steady.cpu_per_image * 1000:.0f} CPU ms"
        + spread,
        f"memory: peak {run.peak_rss / mb:.0f} MB; {start_rss / mb:.0f} MB when the first "
        f"image was decoded, then {max(0, run.peak_rss - start_rss) / 1024 / run.images:+.0f} KB "
        "per image",
        f"whole input here: about {wall:.0f} s wall ({_duration(wall)}) for {todo} images "
        f"({fixed_wall:.0f} s fixed + {todo} x {steady.wall_per_image:.3f} s, {steps} commit "
        f"step{'s' if steps != 1 else ''}); {cpu / 3600:.3f} vCPU-hours ({cpu:.0f} CPU s: "
        f"{todo} x {steady.cpu_per_image * 1000:.0f} CPU ms + {fixed_cpu:.0f} CPU s fixed)",
    ]
    if deadline_hours:
        budget = deadline_hours * 3600 - fixed_wall
        if budget <= 0:
            lines.append(f"deadline {deadline_hours:g} h: cannot be met, the fixed start-up "
                         f"alone takes {fixed_wall:.0f} s")
        else:
            machines = max(1, math.ceil(todo * steady.wall_per_image / budget))
            lines.append(f"deadline {deadline_hours:g} h: {machines} worker"
                         f"{'s' if machines != 1 else ''} like this machine ({cores} cores, "
                         f"{steady.wall_per_image:.3f} s an image each), "
                         f"{machines * cores} vCPUs")
    return lines
