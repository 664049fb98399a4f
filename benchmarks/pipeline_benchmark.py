"""Throughput of the job against a plain loop with the same models, timed in steady state.

Usage::

    .venv/bin/python -m benchmarks.pipeline_benchmark [--images 3000] [--free_images 4000]
        [--rows abcdef] [--repeat 3]

Builds its own inputs under ``benchmarks/out/`` (cached; see ``benchmarks._assets``). Every
row is its own process, run ``--repeat`` times:

- (a) limit: plain loop, same models, batched compiled classification, one Parquet write
- (b) origin: plain loop with one ``model.predict`` per region (on images/10)
- (c) the job on the DirectRunner, in process
- (d) the job on the DirectRunner, ``multi_processing`` with 2 worker processes
- (e) the plain loop with models made nearly free (fixed boxes, tiny classifier, small JPEGs)
- (f) the job in process with the same nearly free models: the job's own cost

Rows run interleaved (a, b, ..., f, then again), and ``vs loop`` is the median over rounds of
a row's rate over its loop's rate in the same round, so a machine whose speed drifts during
the benchmark skews no row.

Rates are timed between the 10% and the 90% images leaving the detector (its progress log);
``cores busy`` is the process tree's CPU seconds per wall second in that window. A rate whose
cores busy exceeds the CPUs this process may use is not printed ("not measurable").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys

from benchmarks._assets import progress_log
from benchmarks._measure import (
    MIN_WINDOW_S,
    cpu_cores,
    load_average,
    measure,
    steady_state,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# row -> (label, runner, model set, reference row for the "vs loop" column)
ROWS = {
    "a": ("(a) limit: plain loop, batched tf.function", "limit", "real", None),
    "b": ("(b) origin: model.predict per region", "origin", "real", "a"),
    "c": ("(c) pipeline, DirectRunner in process", "job", "real", "a"),
    "d": ("(d) pipeline, DirectRunner 2 processes", "job2", "real", "a"),
    "e": ("(e) free models: plain loop", "limit", "free", None),
    "f": ("(f) free models: pipeline in process", "job", "free", "e"),
}


def images_for(row: str, images: int, free_images: int) -> int:
    if ROWS[row][2] == "free":
        return free_images
    return max(2, images // 10) if row == "b" else images


def check_tables(output: str, images: int) -> int:
    """Regions written; raises unless every input path is in ``images`` exactly once."""
    import pyarrow.parquet as pq

    paths = pq.read_table(os.path.join(output, "images"), columns=["image_path"])
    paths = paths.column("image_path").to_pylist()
    if len(paths) != images or len(set(paths)) != images:
        raise RuntimeError(f"{output}: images table has {len(paths)} rows for {len(set(paths))} "
                           f"paths; expected each of {images} paths once")
    return pq.read_table(os.path.join(output, "detections"), columns=["roi_index"]).num_rows


def run_row(row: str, n: int, assets: dict, out: str, cores: float, min_window: float) -> dict:
    """One run of ``row`` on ``n`` images: its figures (see ``steady_state``)."""
    _, runner, models, _ = ROWS[row]
    models = assets[models]
    output = os.path.join(out, "runs", f"{row}_{n}")
    shutil.rmtree(output, ignore_errors=True)
    manifest = models["manifests"][str(n)]
    if runner in ("limit", "origin"):
        cmd = [sys.executable, "-m", "benchmarks._loops", runner, manifest,
               models["detector"], models["classifier"], models["labels"], output]
    else:
        cmd = [sys.executable, "-m", "benchmarks._run_pipeline", "--input", manifest,
               "--output", output, "--detector_model", models["detector"],
               "--classifier_model", models["classifier"],
               "--classifier_labels", models["labels"], "--min_score", "0.5"]
        # Explicit both ways: without these flags the job picks its local mode itself.
        cmd += (["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
                if runner == "job2" else ["--direct_running_mode=in_memory"])
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    load_before = load_average()
    run = measure(cmd, cwd=ROOT, env=env, progress=progress_log(models["detector"]))
    figures = steady_state(run, n, cores, min_window=min_window)
    figures["load"] = (load_before, load_average())
    figures["regions"] = (run.info["regions"] if "regions" in run.info
                          else check_tables(output, n))
    return figures


def summarize(runs: list[dict]) -> dict:
    """Median, min and max of the rate over the runs; medians of the rest; RSS at its max."""
    refused = [r["reason"] for r in runs if r["reason"]]
    summary = {"runs": len(runs), "reason": refused[0] if refused else None,
               "refused": len(refused), "rss": max(r["rss"] for r in runs),
               "load": (min(r["load"][0] for r in runs), max(r["load"][1] for r in runs))}
    for key in ("total_s", "startup_s", "tail_s", "cpu_ms", "cores_busy", "images_s",
                "run_images_s"):
        values = [r[key] for r in runs if key in r]
        if values:
            summary[key] = statistics.median(values)
    rates = [r["images_s"] for r in runs if "images_s" in r]
    if rates:
        summary["images_s_range"] = (min(rates), max(rates))
    return summary


def paired_ratios(runs: list[dict], reference: list[dict]) -> list[float]:
    """Each run's rate over its reference row's rate in the same round."""
    return [r["images_s"] / ref["images_s"] for r, ref in zip(runs, reference)
            if "images_s" in r and "images_s" in ref]


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: dict[str, dict], cores: float) -> str:
    head = (f"{'row':<42} {'images':>6} {'images/s [min-max]':>20} {'CPU ms/img':>10} "
            f"{'cores busy':>10} {'after start-up img/s':>20} {'start-up s':>10} {'tail s':>6} "
            f"{'total s':>7} "
            f"{'RSS MB':>6} {'vs loop':>7} {'load':>9}")
    lines = [head, "-" * len(head)]
    for row, r in results.items():
        label = ROWS[row][0]
        load = f"{r['load'][0]:.1f}-{r['load'][1]:.1f}"
        start = (f"{label:<42} {r['images']:>6} ")
        end = (f"{_fmt(r.get('run_images_s')):>20} {_fmt(r.get('startup_s')):>10} "
               f"{_fmt(r.get('tail_s')):>6} "
               f"{r['total_s']:>7.1f} {r['rss'] / 2**20:>6.0f}")
        if r["reason"]:
            lines.append(f"{start}{'not measurable: ' + r['reason']:<42} {end} {'-':>7} "
                         f"{load:>9}")
            continue
        low, high = r["images_s_range"]
        ratio = "-"
        if r.get("paired"):
            ratio = f"{statistics.median(r['paired']):.2f}x"
        rate = f"{r['images_s']:.1f} [{low:.1f}-{high:.1f}]"
        lines.append(f"{start}{rate:>20} {r['cpu_ms']:>10.1f} {r['cores_busy']:>10.2f} "
                     f"{end} {ratio:>7} {load:>9}")
    lines.append(f"images/s: median of {next(iter(results.values()))['runs']} runs [min-max], "
                 f"10%..90% images out of the detector; CPU ms/img and cores busy (of "
                 f"{cores:g}) in that window; after start-up: from the first image out of the "
                 "detector to the end (tail included); load: 1-min load average before-after")
    lines.append("vs loop: median over rounds of the row's rate / its loop's rate in the same "
                 "round (rows run interleaved, one round after another)")
    for row, r in results.items():
        if r.get("paired"):
            lines.append(f"  {ROWS[row][0]} / {ROWS[ROWS[row][3]][0]}: "
                         + " ".join(f"{v:.2f}" for v in r["paired"]))
    lines.extend(break_even(results))
    return "\n".join(lines)


def break_even(results: dict[str, dict]) -> list[str]:
    """Above how many images (d) finishes before (c), counting each one's fixed cost."""
    c, d = results.get("c"), results.get("d")
    if not c or not d or c["reason"] or d["reason"]:
        return []
    fixed_c = c["total_s"] - c["images"] / c["images_s"]
    fixed_d = d["total_s"] - d["images"] / d["images_s"]
    if d["images_s"] <= c["images_s"]:
        return [(f"(d) is not faster than (c) in steady state here ({d['images_s']:.1f} "
                 f"against {c['images_s']:.1f} images/s): it never pays off its {fixed_d:.1f} s "
                 f"fixed cost (against {fixed_c:.1f} s)")]
    images = max(0.0, (fixed_d - fixed_c) / (1 / c["images_s"] - 1 / d["images_s"]))
    return [(f"(d) finishes first above about {images:.0f} images (fixed cost {fixed_d:.1f} s "
             f"against {fixed_c:.1f} s for (c))")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="images for rows a, c, d")
    parser.add_argument("--free_images", type=int, default=4000, help="images for rows e, f")
    parser.add_argument("--rows", default="abcdef", help="which rows to run, e.g. 'acd'")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row")
    parser.add_argument("--tiny", action="store_true", help="tiny detector (smoke tests)")
    parser.add_argument("--min_window", type=float, default=MIN_WINDOW_S,
                        help="shortest steady-state window in seconds that is timed")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    parser.add_argument("--json", help="also write the figures of every run to this file")
    args = parser.parse_args(argv)
    rows = [row for row in ROWS if row in args.rows]
    real = sorted({images_for(r, args.images, args.free_images) for r in rows
                   if ROWS[r][2] == "real"})
    free = [args.free_images] if any(ROWS[r][2] == "free" for r in rows) else []
    built = measure([sys.executable, "-m", "benchmarks._assets", "--out", args.out, "--sizes",
                     *map(str, real), "--free_sizes", *map(str, free)]
                    + (["--tiny"] if args.tiny else []), cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=ROOT), progress=None).info
    cores = cpu_cores()
    print(f"{os.cpu_count()} CPUs, {cores:g} usable; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; real: 640x480 JPEG, 5 regions each, "
          f"detector {'tiny' if args.tiny else 'MobileNetV2 320'}; free: 160x120 JPEG, "
          "4 regions each, fixed boxes, 32x32 one-conv classifier", flush=True)
    every: dict[str, list[dict]] = {row: [] for row in rows}
    # Repeats are interleaved (a b c, a b c, ...): a machine that drifts slows every row alike,
    # and each row's run is paired with its reference row's run of the same round.
    for _ in range(max(args.repeat, 1)):
        for row in rows:
            n = images_for(row, args.images, args.free_images)
            r = run_row(row, n, built, args.out, cores, args.min_window)
            every[row].append(r)
            print(f"  {ROWS[row][0]}: {n} images in {r['total_s']:.1f} s, "
                  f"{_fmt(r.get('images_s'))} images/s, {_fmt(r.get('cpu_ms'))} CPU ms/img, "
                  f"{_fmt(r.get('cores_busy'), '.2f')} "
                  f"cores busy, load {r['load'][0]:.2f} -> {r['load'][1]:.2f}"
                  + (f" ({r['reason']})" if r["reason"] else ""), flush=True)
    results = {row: dict(summarize(runs), images=images_for(row, args.images, args.free_images),
                         paired=paired_ratios(runs, every.get(ROWS[row][3] or "", [])))
               for row, runs in every.items()}
    print()
    print(format_table(results, cores))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cores": cores, "rows": every}, handle, indent=1)


if __name__ == "__main__":
    main()
