"""Times one benchmark process: its process tree's CPU and memory, and the detector's steady state.

The steady state is read from the detector's own progress log (one ``<epoch s> <batch>`` line
per call, see ``benchmarks._assets``): the window between the 10% and the 90% images leaving the
detector. Start-up (imports, model loading, graph construction, worker processes) and the tail
(joins, file writes, finalize) fall outside it and are reported on their own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import subprocess
import time

from beam_pipeline.process_tree import TICK, TreeSampler

SAMPLE_S = 0.02  # CPU and RSS of the known processes
SCAN_S = 0.25  # looking for new descendants walks all of /proc: less often
MIN_WINDOW_S = 1.0


def cpu_cores() -> float:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 quota if one is set."""
    cores = float(len(os.sched_getaffinity(0)))
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cores


def load_average() -> float:
    return os.getloadavg()[0]


@dataclasses.dataclass
class Run:
    """One process run: epoch start/end, tree samples ``(t, cpu_s, rss)`` and detector stamps."""

    start: float
    end: float
    samples: list[tuple[float, float, int]]
    stamps: list[float]
    info: dict
    processes: int
    cpu: float  # the whole tree's CPU seconds
    stdout: str = ""

    @property
    def peak_rss(self) -> int:
        return max((s[2] for s in self.samples), default=0)

    def cpu_at(self, when: float) -> float:
        """Tree CPU seconds at epoch ``when``, interpolated between samples."""
        previous = (self.start, 0.0)
        for t, cpu, _ in self.samples:
            if t >= when:
                if t == previous[0]:
                    return cpu
                share = (when - previous[0]) / (t - previous[0])
                return previous[1] + share * (cpu - previous[1])
            previous = (t, cpu)
        return previous[1]


def measure(cmd: list[str], *, cwd: str, env: dict, progress: str | None) -> Run:
    """Runs ``cmd``; samples its process tree until it exits. Raises on a non-zero exit."""
    if progress and os.path.exists(progress):
        os.remove(progress)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid, every=SAMPLE_S, scan=SCAN_S, clock=time.time) as sampler:
        stdout, stderr = proc.communicate()
        end = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Each process's own CPU, its last reading kept after it exits: counted once.
    samples = [(t, cpu, rss) for t, cpu, rss, _ in sampler.samples]
    pids = sampler.pids
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
    info = {}
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            info = json.loads(line)
            break
    # getrusage counts only reaped descendants; the samples miss processes that lived < SCAN_S.
    cpu = max((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
              samples[-1][1] if samples else 0.0)
    return Run(start, end, samples, read_stamps(progress) if progress else [], info, len(pids),
               cpu, stdout)


def read_stamps(path: str) -> list[float]:
    """One epoch time per image that left the detector, sorted."""
    stamps: list[float] = []
    if not os.path.exists(path):
        return stamps
    with open(path) as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 2:
                stamps.extend([float(parts[0])] * int(parts[1]))
    return sorted(stamps)


def steady_state(run: Run, images: int, cores: float, *,
                 min_window: float = MIN_WINDOW_S) -> dict:
    """Figures of one run; ``reason`` says why the steady state could not be timed."""
    figures = {"total_s": run.end - run.start, "total_cpu_s": run.cpu,
               "rss": run.peak_rss, "reason": None}
    stamps = run.stamps[-images:] if images else []
    if len(stamps) < images or images < 5:
        figures["reason"] = f"the detector logged {len(run.stamps)} of {images} images"
        return figures
    first, last = int(0.1 * images), math.ceil(0.9 * images) - 1
    window = stamps[last] - stamps[first]
    figures.update(startup_s=stamps[0] - run.start, tail_s=run.end - stamps[-1],
                   window_s=window,
                   # Everything after the first image: the tail's joins and writes count too.
                   run_images_s=(images - 1) / max(run.end - stamps[0], 1e-9))
    if window < min_window:
        figures["reason"] = (f"steady-state window {window:.2f} s is shorter than "
                             f"{min_window:g} s; run more images")
        return figures
    cpu = run.cpu_at(stamps[last]) - run.cpu_at(stamps[first])
    # What sampling can add: one sample interval of every core at each end, a tick per process.
    slack = 2 * (cores * SAMPLE_S + run.processes * TICK)
    counted = last - first
    figures.update(images_s=counted / window, cpu_ms=1000 * cpu / counted,
                   cores_busy=cpu / window)
    if (cpu - slack) / window > cores:
        figures["reason"] = (f"{cpu / window:.2f} cores busy on a machine with {cores:g}: "
                             "the CPU or the clock readings are wrong")
    return figures


def whole_process(run: Run, images: int, cores: float) -> dict:
    """Wall time and CPU of the whole process tree (start-up, model loading and the writes
    included) per image; ``reason`` says why the CPU figure cannot be true."""
    wall = run.end - run.start
    figures = {"total_s": wall, "total_cpu_s": run.cpu, "rss": run.peak_rss,
               "images_s": images / wall, "cpu_ms": 1000 * run.cpu / max(images, 1),
               "cores_busy": run.cpu / wall, "reason": None,
               "startup_s": run.stamps[0] - run.start if run.stamps else None,
               # CPU spent before the first image left the detector: imports, model loading,
               # worker processes; the rest of ``cpu_ms`` is spent on the images.
               "startup_cpu_s": run.cpu_at(run.stamps[0]) if run.stamps else None}
    # What sampling can add: one sample interval of every core, a tick per process.
    slack = cores * SAMPLE_S + run.processes * TICK
    if (run.cpu - slack) / wall > cores:
        figures["reason"] = (f"{run.cpu / wall:.2f} cores busy on a machine with {cores:g}: "
                             "the CPU or the clock readings are wrong")
    return figures
