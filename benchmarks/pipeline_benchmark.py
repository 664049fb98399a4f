"""End-to-end throughput of the job against the plain-loop limit and the seed article's approach.

Usage::

    .venv/bin/python -m benchmarks.pipeline_benchmark [--images 300] [--rows abcd] [--tiny]

Builds its own inputs under ``benchmarks/out/`` (cached): 640x480 synthetic JPEGs with five
regions each, an OD API style detector (MobileNetV2 backbone at 320x320, random weights, fixed
boxes) and the bundled-size classifier. Every row runs in its own subprocess, twice (N/3 and N
images); steady-state rates come from the difference, so start-up cancels out:

- (a) limit: plain loop, same models, batched compiled classification, one Parquet write
- (b) origin: plain loop with one ``model.predict`` per region (on N/10 images, extrapolated)
- (c) the pipeline on the DirectRunner, in process
- (d) the pipeline on the DirectRunner, ``multi_processing`` with 2 workers

Timing uses only ``time.perf_counter``; peak RSS is the whole process tree's resident memory,
sampled from ``/proc`` every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.sysconf("SC_PAGE_SIZE")
ROWS = {
    "a": "(a) limit: plain loop, batched tf.function",
    "b": "(b) origin: model.predict per region",
    "c": "(c) pipeline, DirectRunner in process",
    "d": "(d) pipeline, DirectRunner 2 processes",
}


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def measure(cmd: list[str]) -> dict:
    """Runs ``cmd`` from the repository root; wall seconds, peak tree RSS, last JSON line."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
    info = {}
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            info = json.loads(line)
            break
    return {"wall": wall, "cpu": cpu, "rss": peak[0], **info}


def _count_rows(folder: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(os.path.join(folder, name)).metadata.num_rows
               for name in os.listdir(folder) if name.endswith(".parquet"))


def run_row(row: str, n: int, assets: dict, out: str) -> dict:
    output = os.path.join(out, "runs", f"{row}_{n}")
    shutil.rmtree(output, ignore_errors=True)
    manifest = assets["manifests"][str(n)]
    if row in "ab":
        mode = "limit" if row == "a" else "origin"
        return measure([sys.executable, "-m", "benchmarks._loops", mode, manifest,
                        assets["detector"], assets["classifier"], output])
    argv = [sys.executable, "-m", "benchmarks._run_pipeline", "--input", manifest,
            "--output", output, "--detector_model", assets["detector"],
            "--classifier_model", assets["classifier"],
            "--classifier_labels", assets["labels"]]
    if row == "d":
        argv += ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    result = measure(argv)
    result["images"] = n
    result["regions"] = _count_rows(os.path.join(output, "detections"))
    return result


def best_of(repeat: int, row: str, n: int, assets: dict, out: str) -> dict:
    """The fastest of ``repeat`` runs (wall and CPU each at their minimum, RSS at its maximum):
    other work on the machine only ever adds time."""
    runs = [run_row(row, n, assets, out) for _ in range(max(repeat, 1))]
    best = dict(min(runs, key=lambda run: run["wall"]))
    best["cpu"] = min(run["cpu"] for run in runs)
    best["rss"] = max(run["rss"] for run in runs)
    return best


def sizes_for(row: str, images: int) -> tuple[int, int]:
    big = max(2, images // 10) if row == "b" else images
    return max(1, big // 3), big


def summarize(small: dict, big: dict, images: int) -> dict:
    seconds = big["wall"] - small["wall"]
    if seconds <= 0 or big["images"] <= small["images"]:  # too few images to see a rate
        seconds = float("nan")
    rate = (big["images"] - small["images"]) / seconds
    startup = big["wall"] - big["images"] / rate
    return {
        "images_s": rate,
        "regions_s": (big["regions"] - small["regions"]) / seconds,
        "cpu_ms": 1000 * (big["cpu"] - small["cpu"]) / max(big["images"] - small["images"], 1),
        "startup": startup,
        "first_image": big.get("first_image_s"),
        "rss": max(small["rss"], big["rss"]),
        "end_to_end": startup + images / rate,  # extrapolated to --images for (b)
        "measured_on": big["images"],
    }


def format_table(results: dict[str, dict], images: int) -> str:
    head = (f"{'row':<42} {'images/s':>8} {'regions/s':>9} {'start-up s':>10} "
            f"{'1st image s':>11} {'CPU ms/img':>10} {'peak RSS MB':>11} "
            f"{f'total s @{images}':>12} "
            f"{'vs (a)':>7} {'vs (b)':>7}")
    lines = [head, "-" * len(head)]
    for row, r in results.items():
        ratios = []
        for ref in "ab":
            if ref in results and ref != row:
                ratios.append(f"{r['images_s'] / results[ref]['images_s']:.2f}x")
            else:
                ratios.append("-")
        first = f"{r['first_image']:.1f}" if r["first_image"] is not None else "-"
        lines.append(
            f"{ROWS[row]:<42} {r['images_s']:>8.1f} {r['regions_s']:>9.1f} {r['startup']:>10.1f} "
            f"{first:>11} {r['cpu_ms']:>10.1f} {r['rss'] / 2**20:>11.0f} {r['end_to_end']:>12.1f} "
            f"{ratios[0]:>7} {ratios[1]:>7}")
    if "b" in results and "c" in results:
        lines.append(f"end to end at {images} images, (c) vs (b): "
                     f"{results['b']['end_to_end'] / results['c']['end_to_end']:.1f}x faster")
    if "b" in results:
        lines.append(f"(b) measured on {results['b']['measured_on']} images, "
                     f"its total extrapolated to {images}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rows", default="abcd", help="which rows to run, e.g. 'ac'")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per row and size; the fastest counts (for a busy machine)")
    parser.add_argument("--tiny", action="store_true", help="tiny detector (smoke tests)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    args = parser.parse_args(argv)
    rows = [row for row in "abcd" if row in args.rows]
    sizes = sorted({n for row in rows for n in sizes_for(row, args.images)})
    built = measure([sys.executable, "-m", "benchmarks._assets", "--out", args.out,
                     "--sizes", *map(str, sizes)] + (["--tiny"] if args.tiny else []))
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"inputs: {args.images} images 640x480 JPEG, 5 regions each; detector "
          f"{os.path.relpath(built['detector'], ROOT)}; classifier "
          f"{os.path.relpath(built['classifier'], ROOT)}; {os.cpu_count()} CPUs; "
          f"load average before {' '.join(load)}", flush=True)
    results = {}
    for row in rows:
        small, big = (best_of(args.repeat, row, n, built, args.out)
                      for n in sizes_for(row, args.images))
        results[row] = summarize(small, big, args.images)
        print(f"  {ROWS[row]}: {small['images']} images in {small['wall']:.1f} s, "
              f"{big['images']} in {big['wall']:.1f} s", flush=True)
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"load average after {' '.join(load)}\n")
    print(format_table(results, args.images))


if __name__ == "__main__":
    main()
