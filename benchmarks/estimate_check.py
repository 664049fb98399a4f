"""``--estimate`` against the run it estimates, as whole processes: the error of its prediction.

Usage::

    .venv/bin/python -m benchmarks.estimate_check --images 3000 [--rounds 1] [--out DIR]
        [--estimate_images 96 300]

Images: ``training.generate``'s wafer images (640x480 PNG, seed 7) in ``OUT/data/images``,
generated when absent; the bundled models. Each round runs ``python -m beam_pipeline --input
IMAGES --output OUT/run --estimate`` and reads the prediction it prints (``whole input here:
about N s wall ... (M CPU s: ...)``), then the same command without ``--estimate``: its wall
time, and the CPU seconds and peak RSS of its process tree (``benchmarks._measure``). The error
is (predicted - measured) / measured, for the wall time and for the CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from benchmarks._measure import load_average, measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICTED = re.compile(r"about (\d+) s wall .*\((\d+) CPU s: ")


def _images(out: str, count: int) -> str:
    folder = os.path.join(out, "data")
    images = os.path.join(folder, "images")
    if not os.path.isdir(images) or len(os.listdir(images)) != count:
        shutil.rmtree(folder, ignore_errors=True)
        measure([sys.executable, "-m", "training.generate", "--output", folder,
                 "--num_images", str(count), "--seed", "7"], cwd=ROOT, env=_env(), progress=None)
    return images


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def _estimate(argv: list[str], deadline: float, sample: int | None) -> tuple:
    """One ``--estimate`` of ``argv`` (``sample`` images, the job's default when None): its
    printed lines, the predicted wall and CPU seconds, and its own measured run."""
    flags = [f"--estimate_images={sample}"] if sample else []
    estimate = measure([sys.executable, "-m", "beam_pipeline", *argv, "--estimate",
                        f"--deadline_hours={deadline}", *flags], cwd=ROOT, env=_env(),
                       progress=None)
    printed = estimate.stdout.strip().splitlines()
    found = PREDICTED.search("\n".join(printed))
    if found is None or os.path.exists(argv[argv.index("--output") + 1]):
        raise RuntimeError("the estimate printed no prediction or wrote to --output:\n"
                           + "\n".join(printed))
    return printed, float(found.group(1)), float(found.group(2)), estimate


def round_lines(images: str, output: str, deadline: float,
                samples: list[int | None]) -> list[str]:
    """One round: an estimate per sample size, then the run; their lines and the errors."""
    load = load_average()
    shutil.rmtree(output, ignore_errors=True)
    argv = ["--input", images, "--output", output]
    estimates = [(sample, *_estimate(argv, deadline, sample)) for sample in samples]
    run = measure([sys.executable, "-m", "beam_pipeline", *argv], cwd=ROOT, env=_env(),
                  progress=None)
    run_wall = run.end - run.start
    lines = []
    for sample, printed, wall, cpu, estimate in estimates:
        name = f"--estimate_images={sample}" if sample else "default --estimate_images"
        lines += [f" {name}:", *("  " + line for line in printed),
                  f"  estimate itself: {estimate.end - estimate.start:.1f} s wall, "
                  f"{estimate.cpu:.1f} CPU s"]
    lines.append(f"run: {run_wall:.1f} s wall, {run.cpu:.1f} CPU s, peak RSS "
                 f"{run.peak_rss / 2**20:.0f} MB; load {load:.1f} -> {load_average():.1f}")
    for sample, _, wall, cpu, _ in estimates:
        lines.append(f"error ({sample or 'default'} sample images): wall "
                     f"{100 * (wall - run_wall) / run_wall:+.1f}% ({wall:.0f} s predicted), "
                     f"CPU {100 * (cpu - run.cpu) / run.cpu:+.1f}% ({cpu:.0f} CPU s predicted)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--deadline_hours", type=float, default=1.0)
    parser.add_argument("--estimate_images", type=int, nargs="+",
                        help="sample sizes to estimate with, each before the same run "
                             "(default: the job's own --estimate_images)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "estimate"))
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    images = _images(out, args.images)
    print(f"{os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.images} images", flush=True)
    for index in range(args.rounds):
        print(f"round {index + 1}:", flush=True)
        print("\n".join(round_lines(images, os.path.join(out, "run"), args.deadline_hours,
                                     args.estimate_images or [None])), flush=True)


if __name__ == "__main__":
    main()
