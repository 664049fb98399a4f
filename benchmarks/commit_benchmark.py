"""What committed progress costs: the same local run with commits off and at chosen settings.

Run as ``python -m benchmarks.commit_benchmark [--images 3000] [--models free|real]
[--settings off,default,1000] [--repeat 2] [--mode auto|in_memory|multi_processing]``.

Each run starts the job (``python -m beam_pipeline``) in a fresh process over the same
manifest, settings interleaved round by round so that the shared machine's load falls on all of
them alike. The steady-state rate is the one ``pipeline_benchmark`` times: images between the
10% and 90% ones leaving the detector (its own log), so the pauses between commit steps inside
that window count against it. Every run is checked: ``run.json`` complete, one images row per
input. Prints one table: median [min-max] per setting and the rate's change against ``off``
(paired by round). Standard library only; the models and images come from
``benchmarks._assets`` (cached under ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

from benchmarks._assets import progress_log
from benchmarks._measure import cpu_cores, load_average, measure, steady_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assets(out: str, images: int, models: str) -> dict:
    flag = "--free_sizes" if models == "free" else "--sizes"
    done = subprocess.run([sys.executable, "-m", "benchmarks._assets", "--out", out, flag,
                           str(images)], cwd=ROOT, capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    return json.loads(done.stdout.strip().splitlines()[-1])[models]


def _run(setting: str, images: int, assets: dict, out: str, mode: str, cores: float) -> dict:
    output = os.path.join(out, "runs", f"commits_{setting}")
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "beam_pipeline", "--input", assets["manifests"][str(images)],
           "--output", output, "--detector_model", assets["detector"],
           "--classifier_model", assets["classifier"], "--classifier_labels", assets["labels"],
           "--min_score", "0.5", "--progress=false"]
    if setting != "default":
        cmd.append(f"--commit_every={0 if setting == 'off' else int(setting)}")
    if mode == "multi_processing":
        cmd += ["--direct_running_mode=multi_processing", f"--direct_num_workers={int(cores)}"]
    elif mode == "in_memory":
        cmd.append("--direct_running_mode=in_memory")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    load = load_average()
    run = measure(cmd, cwd=ROOT, env=env, progress=progress_log(assets["detector"]))
    figures = steady_state(run, images, cores)
    with open(os.path.join(output, "run.json")) as handle:
        record = json.load(handle)
    if record["status"] != "complete" or record["counts"]["images_read"] != images:
        raise RuntimeError(f"{output}: run.json says {record['status']}, "
                           f"{record['counts']['images_read']} of {images} images")
    figures.update(load=(load, load_average()),
                   commits=record.get("commits", {}).get("count", 0),
                   running=run.info.get("running", ""))
    return figures


def _spread(values: list[float], spec: str = ".1f") -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--models", choices=("free", "real"), default="free")
    parser.add_argument("--settings", default="off,default,1000",
                        help="comma-separated: off, default, or a --commit_every value")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mode", choices=("auto", "in_memory", "multi_processing"),
                        default="auto", help="auto: the job's own choice of local mode")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "commits"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    assets = _assets(os.path.abspath(args.out), args.images, args.models)
    cores = cpu_cores()
    settings = args.settings.split(",")
    runs: dict[str, list[dict]] = {setting: [] for setting in settings}
    for round_ in range(args.repeat):
        for setting in settings:
            figures = _run(setting, args.images, assets, args.out, args.mode, cores)
            runs[setting].append(figures)
            print(f"round {round_ + 1} {setting}: {figures.get('images_s', 0):.1f} images/s "
                  f"steady, {figures['total_s']:.1f} s in all, {figures['commits']} commits, "
                  f"load {figures['load'][0]:.1f}-{figures['load'][1]:.1f}"
                  + (f" ({figures['reason']})" if figures.get("reason") else ""), flush=True)
    print(f"\n{args.images} images, {args.models} models, mode {args.mode}, {cores:g} cores, "
          f"{args.repeat} rounds; median [min-max]")
    print("| setting | commits | steady images/s | wall s | CPU s, whole process | "
          "rate vs off (paired) | CPU vs off (paired) |")
    print("|---|---:|---|---|---|---|---|")
    for setting in settings:
        rates = [r.get("images_s") for r in runs[setting]]
        ratios = [r / o["images_s"] - 1 for r, o in zip(rates, runs.get("off", []))
                  if r and o.get("images_s")]
        cpu = [r["total_cpu_s"] for r in runs[setting]]
        # CPU seconds move far less with the machine's load than rates and wall times do.
        cpu_ratios = [c / o["total_cpu_s"] - 1 for c, o in zip(cpu, runs.get("off", []))]
        paired = setting != "off"
        print(f"| {setting} | {runs[setting][0]['commits']} | "
              f"{_spread([r for r in rates if r])} | "
              f"{_spread([r['total_s'] for r in runs[setting]])} | {_spread(cpu)} | "
              f"{_spread([100 * x for x in ratios], '+.1f') + ' %' if paired else '-'} | "
              f"{_spread([100 * x for x in cpu_ratios], '+.1f') + ' %' if paired else '-'} |")


if __name__ == "__main__":
    main()
