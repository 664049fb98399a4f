"""Archive reruns with ``--skip_done_in``: time and peak RSS on the DirectRunner, in process.

Usage::

    .venv/bin/python -m benchmarks.skip_benchmark [--new 1000] [--done 1000000 --done 10000000]
        [--steps one,commits] [--repeat 1] [--models free|bundled] [--json FILE] [--profile]
    .venv/bin/python -m benchmarks.skip_benchmark --report FILE.json...

Each row runs the job's own ``beam_pipeline.main.run`` in a fresh process whose process tree is
sampled from /proc (``benchmarks._measure``), and checks its run.json, metrics and images table:

- ``seed``: ``--new`` generated JPEGs, nothing to skip; its run.json gives the fingerprint;
- ``rerun``: the same manifest, ``--skip_done_in`` the seed: no image read, no inference;
- ``done N``: ``--skip_done_in`` a synthetic complete run (an ``images/`` table of N ``ok`` rows
  with the seed's fingerprint, written with pyarrow in batches, run.json copied from the
  seed's) over a manifest of the ``--new`` real paths then the N done paths, which are not
  files: exactly ``--new`` images are read. Built once per N and fingerprint (cached).

``--steps``: ``one`` runs each row as one pipeline (``--commit_every=0``), ``commits`` in
commit steps (the local default); both select the paths in the launcher.
Models: ``free`` (default; ``benchmarks._assets``: 160x120 JPEGs, 4 fixed boxes, a one-conv
32x32 classifier) keeps the new images cheap so that skipping is what is timed; ``bundled`` is
``models/`` on 640x480 wafer JPEGs. ``--profile`` reruns the largest ``done`` row under cProfile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys

from benchmarks._done_runs import done_inputs, write_manifest
from benchmarks._measure import load_average, measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = "runs"  # under --out: the job outputs, replaced on every run


def build_assets(out: str, new: int, models: str) -> dict:
    """The ``new`` images and the models: ``{"images": [...], "job": [model flags]}``."""
    if models == "free":
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
        built = measure([sys.executable, "-m", "benchmarks._assets", "--out", out,
                         "--free_sizes", str(new)], cwd=ROOT, env=env, progress=None).info
        free = built["free"]
        with open(free["manifests"][str(new)]) as handle:
            images = handle.read().split()
        return {"images": images, "job": [
            "--detector_model", free["detector"], "--classifier_model", free["classifier"],
            "--classifier_labels", free["labels"], "--min_score", "0.5"]}
    from benchmarks._assets import REAL_SIZE, build_images

    bundled = os.path.join(ROOT, "models")
    return {"images": build_images(out, new, REAL_SIZE), "job": [
        "--detector_model", os.path.join(bundled, "detector", "saved_model"),
        "--classifier_model", os.path.join(bundled, "classifier", "classifier.keras"),
        "--classifier_labels", os.path.join(bundled, "classifier", "labels.txt")]}


def run_job(argv: list[str], output: str, *, profile: str | None = None) -> dict:
    """The job in a fresh process: wall s, peak RSS of its tree, load, metrics and record."""
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks.skip_benchmark", "--job",
           *(["--profile_to", profile] if profile else []), "--", *argv, "--output", output]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    load_before = load_average()
    run = measure(cmd, cwd=ROOT, env=env, progress=None)
    with open(os.path.join(output, "run.json")) as handle:
        record = json.load(handle)
    return {"wall_s": run.end - run.start, "cpu_s": run.cpu, "rss_mb": run.peak_rss / 2**20,
            "load": (load_before, load_average()), "metrics": run.info.get("metrics", {}),
            "summary_time": run.info.get("time"), "record": record}


def check(figures: dict, output: str, *, read: int, skipped: int) -> None:
    """Raises unless the run read ``read`` images, skipped ``skipped`` and wrote ``read`` rows."""
    import pyarrow.parquet as pq

    counts, metrics = figures["record"]["counts"], figures["metrics"]
    rows = 0
    if os.path.isdir(os.path.join(output, "images")):
        rows = pq.read_table(os.path.join(output, "images"), columns=["image_path"]).num_rows
    inferences = metrics.get("DetectObjects.num_inferences", 0)
    found = {"record images_read": counts["images_read"], "images rows": rows,
             "record images_skipped": counts["images_skipped"],
             "metric images_skipped": metrics.get("images_skipped", 0),
             "metric images_read": metrics.get("images_read", 0),
             "metric DetectObjects.num_inferences": inferences}
    wanted = {"record images_read": read, "images rows": read, "record images_skipped": skipped,
              "metric images_skipped": skipped, "metric images_read": read,
              "metric DetectObjects.num_inferences": read}
    wrong = {k: (v, wanted[k]) for k, v in found.items() if v != wanted[k]}
    if wrong or figures["record"]["status"] != "complete":
        raise RuntimeError(f"{output}: (found, expected) {wrong}, status "
                           f"{figures['record']['status']}")
    figures["checked"] = found


def _line(name: str, f: dict) -> str:
    c = f["checked"]
    return (f"  {name}: read {c['record images_read']}, skipped {c['record images_skipped']}, "
            f"{c['metric DetectObjects.num_inferences']} inferences; {f['wall_s']:.1f} s wall, "
            f"{f['cpu_s']:.1f} s CPU, {f['rss_mb']:.0f} MB peak RSS, load {f['load'][0]:.1f} -> "
            f"{f['load'][1]:.1f}\n    job's own {f['summary_time']}")


def _spread(values: list[float], spec: str) -> str:
    return (f"{format(statistics.median(values), spec)} "
            f"[{format(min(values), spec)}-{format(max(values), spec)}]")


def _added_lines(every: dict[str, list[dict]], mode: str) -> list[str]:
    """What each done path adds from the smallest to the largest ``done N/mode`` row."""
    done = sorted((runs[0]["checked"]["record images_skipped"], runs)
                  for name, runs in every.items() if name.startswith("done ")
                  and name.endswith("/" + mode))
    if len(done) < 2 or done[-1][0] <= done[0][0]:
        return []
    (low, low_runs), (high, high_runs) = done[0], done[-1]

    def added(key: str) -> float:
        return (statistics.median(r[key] for r in high_runs)
                - statistics.median(r[key] for r in low_runs)) / (high - low)

    rss = (max(r["rss_mb"] for r in high_runs)
           - max(r["rss_mb"] for r in low_runs)) * 2**20 / (high - low)
    return [f"{mode}: each done path from {low} to {high} adds {added('wall_s') * 1e3:.4f} ms "
            f"wall, {added('cpu_s') * 1e3:.4f} ms CPU, {rss:.0f} bytes of peak RSS "
            "(medians; RSS: largest run)"]


def summary_lines(every: dict[str, list[dict]]) -> list[str]:
    """Per row: runs, median [min-max] of wall s and CPU s, peak RSS (largest run), load range;
    then what each done path adds, from the smallest to the largest ``done`` row."""
    head = (f"{'row':<22} {'listed':>9} {'read':>5} {'infer':>5} {'runs':>4} {'wall s':>20} "
            f"{'CPU s':>20} {'RSS MB':>7} {'load':>9}")
    lines = [head, "-" * len(head)]
    for name, runs in every.items():
        checked = runs[0]["checked"]
        listed = checked["record images_read"] + checked["record images_skipped"]
        load = (f"{min(r['load'][0] for r in runs):.1f}-"
                f"{max(r['load'][1] for r in runs):.1f}")
        lines.append(f"{name:<22} {listed:>9} {checked['record images_read']:>5} "
                     f"{checked['metric DetectObjects.num_inferences']:>5} {len(runs):>4} "
                     f"{_spread([r['wall_s'] for r in runs], '.1f'):>20} "
                     f"{_spread([r['cpu_s'] for r in runs], '.1f'):>20} "
                     f"{max(r['rss_mb'] for r in runs):>7.0f} {load:>9}")
    for mode in dict.fromkeys(name.split("/")[1] for name in every if "/" in name):
        lines += _added_lines(every, mode)
    lines.append("listed: manifest lines; read: run.json images_read; infer: metric "
                 "DetectObjects.num_inferences; wall s, CPU s: median [min-max] of the job "
                 "process from start to exit (imports, checks, model loads included), CPU of its "
                 "process tree; RSS MB: the tree's peak, largest run; load: 1-min load average")
    return lines


STEPS = {"one": ["--commit_every=0"], "commits": []}  # commits: the local default (auto)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=1000, help="real new images per run")
    parser.add_argument("--done", type=int, action="append",
                        help="done paths of the synthetic earlier run (repeatable; default "
                             "100000)")
    parser.add_argument("--steps", default="one,commits",
                        help="comma-separated: one (--commit_every=0), commits (the default)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row")
    parser.add_argument("--models", choices=("free", "bundled"), default="free")
    parser.add_argument("--rows", default="seed,rerun,done",
                        help="rows to run; without 'seed' the seed run already in --out is used")
    parser.add_argument("--direct_running_mode", default="in_memory",
                        choices=("in_memory", "multi_threading", "multi_processing", "auto"),
                        help="the job's DirectRunner mode; auto: no flag, the job chooses "
                             "(multi_processing, one worker per core, on 750+ inputs)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the largest done row once (cProfile, CPU time)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "skip"))
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="run nothing: print the summary of earlier --json files")
    return parser


def _report(paths: list[str]) -> None:
    merged: dict[str, list[dict]] = {}
    for path in paths:
        with open(path) as handle:
            for name, runs in json.load(handle).items():
                merged.setdefault(name, []).extend(runs)
    print("\n".join(summary_lines(merged)))


def _profile(out: str, job: list[str], seed_record: dict, new: list[str], count: int) -> None:
    import pstats

    profile = os.path.join(out, f"done_{count}.prof")
    folder, listing = done_inputs(out, seed_record, new, count)
    run_job(job + ["--input", listing, "--skip_done_in", folder],
            os.path.join(out, RUNS, f"profile_{count}"), profile=profile)
    for order in ("cumulative", "tottime"):
        pstats.Stats(profile).sort_stats(order).print_stats(25)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.report:
        return _report(args.report)
    out = os.path.abspath(args.out)
    runs = os.path.join(out, RUNS)
    os.makedirs(runs, exist_ok=True)
    assets = build_assets(out, args.new, args.models)
    if args.direct_running_mode != "auto":
        assets["job"].append(f"--direct_running_mode={args.direct_running_mode}")
    rows, steps = args.rows.split(","), args.steps.split(",")
    new = assets["images"][:args.new]
    manifest = write_manifest(os.path.join(out, f"manifest_new_{args.new}.txt"), new)
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{args.models} models, {args.new} new images; DirectRunner "
          f"{args.direct_running_mode}; steps {args.steps}", flush=True)
    every: dict[str, list[dict]] = {}

    def row(name: str, job: list[str], output: str, *, read: int, skipped: int) -> None:
        for _ in range(max(args.repeat, 1)):
            figures = run_job(assets["job"] + job, output)
            check(figures, output, read=read, skipped=skipped)
            every.setdefault(name, []).append(figures)
            print(_line(name, figures), flush=True)

    seed_out = os.path.join(runs, "seed")
    if "seed" in rows:
        row("seed", ["--input", manifest], seed_out, read=args.new, skipped=0)
    with open(os.path.join(seed_out, "run.json")) as handle:
        seed_record = json.load(handle)
    if "rerun" in rows:
        row("rerun", ["--input", manifest, "--skip_done_in", seed_out],
            os.path.join(runs, "rerun"), read=0, skipped=args.new)
    for count in sorted(args.done or [100000]) if "done" in rows else ():
        folder, listing = done_inputs(out, seed_record, new, count)
        for mode in steps:
            row(f"done {count}/{mode}", ["--input", listing, "--skip_done_in", folder,
                                         *STEPS[mode]],
                os.path.join(runs, f"done_{count}"), read=args.new, skipped=count)
    print("\n" + "\n".join(summary_lines(every)))
    if args.profile:
        _profile(out, assets["job"] + STEPS[steps[0]], seed_record, new,
                 max(args.done or [100000]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(every, handle, indent=1, default=str)


def job(argv: list[str]) -> None:
    """Child process: the job's own ``run(argv)``; prints its metrics as one JSON line."""
    profile = None
    if argv[:1] == ["--profile_to"]:
        profile, argv = argv[1], argv[2:]
    argv = argv[1:] if argv[:1] == ["--"] else argv
    from beam_pipeline.quiet import quiet_startup

    with quiet_startup(enabled=True):
        from beam_pipeline.main import run

        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            if profile:
                import cProfile
                import time

                profiler = cProfile.Profile(time.process_time)
                try:
                    values = profiler.runcall(run, argv)
                finally:
                    profiler.dump_stats(profile)
            else:
                values = run(argv)
    print(summary.getvalue(), end="")
    times = [line for line in summary.getvalue().splitlines() if line.startswith("time:")]
    print(json.dumps({"metrics": values, "time": times[0] if times else None}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--job"]:
        job(sys.argv[2:])
    else:
        main()
