"""Start-up seconds and steady-state images/s of the job on each engine, next to the DirectRunner.

Usage::

    .venv/bin/python -m benchmarks.engines_benchmark [--images 300] \
        [--engines direct,prism,flink,spark]
        [--repeat 3] [--models real|free] [--tiny] [--json FILE]

Each row runs ``python -m benchmarks._run_pipeline`` (the job's own entry point) as its own
process, ``--repeat`` times, on the benchmark's cached inputs (``benchmarks._assets``); the
engines come from ``scripts/engines.sh`` (an engine whose fetch fails prints the reason instead
of a row). Prism runs with its default LOOPBACK workers, Flink (``[local]``, parallelism 2) and
Spark (``local[2]``) with LOOPBACK workers in the launching process.

- start-up s: from the process's start to the first image leaving the detector (interpreter,
  validation, job server or cluster start, graph translation, model loading);
- images/s: between the 10% and the 90% images leaving the detector (its progress log, see
  ``benchmarks._measure``), median of the runs with [min-max];
- cores busy: the process tree's CPU seconds per wall second in that window (the JVM or the
  Prism process included). A rate whose cores busy exceeds the CPUs this process may use is
  printed as "not measurable" with the reason, never as a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from benchmarks._assets import progress_log
from benchmarks._measure import (
    MIN_WINDOW_S,
    cpu_cores,
    load_average,
    measure,
    steady_state,
)
from benchmarks.pipeline_benchmark import _fmt, check_tables, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ("direct", "prism", "flink", "spark")


def engine_flags(engine: str, path: str) -> list[str]:
    """The job's runner flags for ``engine``, given what ``scripts/engines.sh`` printed."""
    return {
        "direct": [],
        "prism": ["--runner=PrismRunner", f"--prism_location={path}"],
        "flink": ["--runner=FlinkRunner", "--flink_master=[local]",
                  f"--flink_job_server_jar={path}", "--parallelism=2",
                  "--environment_type=LOOPBACK"],
        "spark": ["--runner=SparkRunner", "--spark_master_url=local[2]",
                  f"--spark_job_server_jar={path}", "--environment_type=LOOPBACK"],
    }[engine]


def fetch(engine: str) -> tuple[str | None, str | None]:
    """(path, None) from ``scripts/engines.sh``, or (None, why it could not be had)."""
    if engine == "direct":
        return "", None
    tool = "go" if engine == "prism" else "java"
    if shutil.which(tool) is None:
        return None, f"{tool} not found on PATH"
    done = subprocess.run([os.path.join(ROOT, "scripts", "engines.sh"), engine],
                          check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return None, (f"scripts/engines.sh {engine} exited {done.returncode}: "
                      + " | ".join(done.stderr.strip().splitlines()[-3:]))
    return done.stdout.strip().splitlines()[-1], None


def run_engine(engine: str, path: str, n: int, models: dict, out: str, cores: float,
               min_window: float) -> dict:
    """One run of the job on ``engine`` over ``n`` images: its figures (see ``steady_state``)."""
    output = os.path.join(out, "engines", f"{engine}_{n}")
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks._run_pipeline", "--input",
           models["manifests"][str(n)], "--output", output, "--detector_model",
           models["detector"], "--classifier_model", models["classifier"],
           "--classifier_labels", models["labels"], "--min_score", "0.5",
           *engine_flags(engine, path)]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    load_before = load_average()
    run = measure(cmd, cwd=ROOT, env=env, progress=progress_log(models["detector"]))
    figures = steady_state(run, n, cores, min_window=min_window)
    figures["load"] = (load_before, load_average())
    figures["regions"] = check_tables(output, n)
    return figures


def format_table(results: dict[str, dict], cores: float) -> str:
    """One line per engine; "not measurable" with the reason instead of a refused rate."""
    head = (f"{'engine':<8} {'images':>6} {'start-up s [min-max]':>21} "
            f"{'images/s [min-max]':>20} {'cores busy':>10} {'total s':>7} {'RSS MB':>6} "
            f"{'load':>9}")
    lines = [head, "-" * len(head)]
    for engine, r in results.items():
        if "unavailable" in r:
            lines.append(f"{engine:<8} not run: {r['unavailable']}")
            continue
        low, high = r.get("startup_s_range", (None, None))
        startup = f"{_fmt(r.get('startup_s'))} [{_fmt(low)}-{_fmt(high)}]"
        load = f"{r['load'][0]:.1f}-{r['load'][1]:.1f}"
        start = f"{engine:<8} {r['images']:>6} {startup:>21} "
        end = f"{r['total_s']:>7.1f} {r['rss'] / 2**20:>6.0f} {load:>9}"
        if r["reason"]:
            lines.append(f"{start}{'not measurable: ' + r['reason']:<31} {end}")
            continue
        low, high = r["images_s_range"]
        rate = f"{r['images_s']:.1f} [{low:.1f}-{high:.1f}]"
        lines.append(f"{start}{rate:>20} {r['cores_busy']:>10.2f} {end}")
    first = next((r for r in results.values() if "runs" in r), {"runs": 0})
    lines.append(f"median of {first['runs']} runs [min-max]; start-up: process start to the "
                 "first image out of the detector; images/s: 10%..90% images out of the "
                 f"detector; cores busy (of {cores:g}) in that window; load: 1-min load average "
                 "before-after")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per run")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated, from {','.join(ENGINES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine")
    parser.add_argument("--models", choices=("real", "free"), default="real",
                        help="real: MobileNetV2 320 detector and the bundled classifier; "
                             "free: fixed boxes and a one-layer classifier")
    parser.add_argument("--tiny", action="store_true", help="tiny detector (smoke tests)")
    parser.add_argument("--min_window", type=float, default=MIN_WINDOW_S,
                        help="shortest steady-state window in seconds that is timed")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "engines"),
                        help="inputs and outputs (its own: a detector's progress log is shared)")
    parser.add_argument("--json", help="also write the figures of every run to this file")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {','.join(unknown)}")
    sizes = ["--sizes", str(args.images)] if args.models == "real" else [
        "--free_sizes", str(args.images)]
    built = measure([sys.executable, "-m", "benchmarks._assets", "--out", args.out, *sizes]
                    + (["--tiny"] if args.tiny else []), cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=ROOT), progress=None).info
    models = built[args.models]
    cores = cpu_cores()
    print(f"{os.cpu_count()} CPUs, {cores:g} usable; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.models} models, "
          f"{args.images} images", flush=True)
    results, every = {}, {}
    for engine in engines:
        path, why = fetch(engine)
        if why:
            print(f"  {engine}: not run: {why}", flush=True)
            results[engine] = {"unavailable": why}
            continue
        runs = []
        for _ in range(max(args.repeat, 1)):
            runs.append(run_engine(engine, path, args.images, models, args.out, cores,
                                   args.min_window))
            r = runs[-1]
            print(f"  {engine}: {args.images} images in {r['total_s']:.1f} s, start-up "
                  f"{_fmt(r.get('startup_s'))} s, {_fmt(r.get('images_s'))} images/s, "
                  f"{_fmt(r.get('cores_busy'), '.2f')} cores busy, load {r['load'][0]:.2f} -> "
                  f"{r['load'][1]:.2f}" + (f" ({r['reason']})" if r["reason"] else ""),
                  flush=True)
        results[engine] = dict(summarize(runs), images=args.images)
        starts = [r["startup_s"] for r in runs if "startup_s" in r]
        if starts:
            results[engine]["startup_s_range"] = (min(starts), max(starts))
        every[engine] = runs
    print()
    print(format_table(results, cores))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cores": cores, "engines": every}, handle, indent=1)


if __name__ == "__main__":
    main()
