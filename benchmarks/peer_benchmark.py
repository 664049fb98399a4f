"""The job's default command against the scripts a user would write, as whole processes.

Usage::

    .venv/bin/python -m benchmarks.peer_benchmark [--images 300 1200 3000] [--rounds 2]

Three whole processes per round, on the same images and models (``benchmarks._assets``'s
real set: 640x480 JPEGs, the MobileNetV2 320x320 OD-API-signature detector, the bundled
classifier):

- (a) the plain loop: ``training.offline_eval.run_loop`` (read, decode, detect, select, crop,
  batched classify, one Parquet write);
- (b) a ``tf.data`` pipeline as TensorFlow's performance guide recommends: parallel ``map``
  for read + decode, ``prefetch``, then the same detector and stages (``benchmarks._loops``);
- (c) the job's default command, ``python -m beam_pipeline`` with no tuning flags (it picks
  its local mode itself);
- (d) the same command with ``BDC_THREADS=0``: every process keeps TensorFlow's and OpenCV's
  own thread-pool defaults (every core), as before the job sized them per worker (only with
  ``--variants ...d``: the before/after of that change, interleaved);
- (e) and (f), only when named: the command held in process (``--direct_running_mode=
  in_memory``) and with one ``multi_processing`` worker per usable core, whatever the input's
  size: where the default's threshold between the two comes from.

Rounds are interleaved (a b c, a b c, ...) and each ratio is paired within its round. Wall
time is the whole process's (start-up, model loading and writes included); CPU is the process
tree's (worker processes included). A figure whose CPU exceeds what the machine can give in
that wall time is not printed. Every run's rows are checked against the first run of the same
size: the same images, the same regions, boxes and scores within float tolerance, the same
classes; a disagreement stops the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from collections.abc import Mapping, Sequence

from benchmarks._assets import progress_log
from benchmarks._measure import cpu_cores, load_average, measure, whole_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "a": "(a) plain loop",
    "b": "(b) tf.data pipeline",
    "c": "(c) job default command",
    "d": "(d) job, library threads",
    "e": "(e) job in process",
    "f": "(f) job, worker per core",
}
JOB_VARIANTS = ("c", "d", "e", "f")
# Extra environment per variant.
ENV = {"d": {"BDC_THREADS": "0"}}


def _flags(variant: str) -> list[str]:
    """Beam's own flags that fix the local mode, for the variants that do (the choice the
    default makes from the input's size, re-derived)."""
    if variant == "e":
        return ["--direct_running_mode=in_memory"]
    if variant == "f":
        from transforms.tf_runtime import usable_cores

        return ["--direct_running_mode=multi_processing",
                f"--direct_num_workers={usable_cores()}"]
    return []
MIN_SCORE = "0.5"
BOX_TOLERANCE = 1e-4  # normalized box coordinates
SCORE_TOLERANCE = 1e-4  # detector scores and classifier confidences


class RowsDisagree(RuntimeError):
    """Two runs on the same images wrote different detections."""


def command(variant: str, manifest: str, models: Mapping[str, str], output: str) -> list[str]:
    if variant in ("a", "b"):
        return [sys.executable, "-m", "benchmarks._loops", "limit" if variant == "a" else "tfdata",
                manifest, models["detector"], models["classifier"], models["labels"], output]
    return [sys.executable, "-m", "beam_pipeline", "--input", manifest, "--output", output,
            "--detector_model", models["detector"], "--classifier_model", models["classifier"],
            "--classifier_labels", models["labels"], "--min_score", MIN_SCORE, *_flags(variant)]


def read_rows(output: str) -> dict[str, list[tuple]]:
    """``image_path`` -> its regions ``(roi_index, box, detector score, class, confidence)``."""
    import pyarrow.dataset as ds

    columns = ["image_path", "roi_index", "box_ymin", "box_xmin", "box_ymax", "box_xmax",
               "detector_score", "class_id", "confidence"]
    table = ds.dataset(os.path.join(output, "detections"), format="parquet").to_table(
        columns=columns)
    rows: dict[str, list[tuple]] = {}
    for row in table.to_pylist():
        box = (row["box_ymin"], row["box_xmin"], row["box_ymax"], row["box_xmax"])
        rows.setdefault(row["image_path"], []).append(
            (row["roi_index"], box, row["detector_score"], row["class_id"], row["confidence"]))
    return {path: sorted(regions) for path, regions in rows.items()}


def compare_rows(rows: Mapping[str, list[tuple]], reference: Mapping[str, list[tuple]],
                 label: str) -> None:
    """Raises RowsDisagree unless ``rows`` has the same detections per image as ``reference``."""
    if set(rows) != set(reference):
        missing, extra = set(reference) - set(rows), set(rows) - set(reference)
        raise RowsDisagree(f"{label}: {len(missing)} images missing, {len(extra)} extra "
                           f"(e.g. {sorted(missing or extra)[0]})")
    for path, regions in rows.items():
        want = reference[path]
        if len(regions) != len(want):
            raise RowsDisagree(f"{label}: {path} has {len(regions)} regions, expected "
                               f"{len(want)}")
        for got, expected in zip(regions, want):
            roi, box, score, class_id, confidence = got
            close = (roi == expected[0] and class_id == expected[3]
                     and all(abs(a - b) <= BOX_TOLERANCE for a, b in zip(box, expected[1]))
                     and abs(score - expected[2]) <= SCORE_TOLERANCE
                     and abs(confidence - expected[4]) <= SCORE_TOLERANCE)
            if not close:
                raise RowsDisagree(f"{label}: {path} region {roi}: {got} against {expected}")


def job_choice(output: str) -> str:
    """What the job's run record says it chose for the local run."""
    try:
        with open(os.path.join(output, "run.json")) as handle:
            return json.load(handle).get("running", "")
    except (OSError, ValueError):
        return ""


def run_once(variant: str, images: int, assets: Mapping, out: str, cores: float) -> dict:
    models = assets["real"]
    output = os.path.join(out, "peer_runs", f"{variant}_{images}")
    shutil.rmtree(output, ignore_errors=True)
    cmd = command(variant, models["manifests"][str(images)], models, output)
    env = {k: v for k, v in os.environ.items() if k != "BDC_THREADS"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **ENV.get(variant, {}))
    load_before = load_average()
    run = measure(cmd, cwd=ROOT, env=env, progress=progress_log(models["detector"]))
    figures = whole_process(run, images, cores)
    figures.update(load=(load_before, load_average()), rows=read_rows(output),
                   choice=job_choice(output) if variant in JOB_VARIANTS else "")
    if len(figures["rows"]) != images:
        raise RowsDisagree(f"{VARIANTS[variant]}: rows for {len(figures['rows'])} of {images} "
                           "images (every benchmark image has regions)")
    return figures


def spread(values: Sequence[float], spec: str = ".1f") -> str:
    if not values:
        return "-"
    return (f"{format(statistics.median(values), spec)} "
            f"[{format(min(values), spec)}-{format(max(values), spec)}]")


def _ratio(values: Sequence[float]) -> str:
    """The median of paired ratios, ``-`` when the variant it is paired with did not run."""
    return f"{statistics.median(values):.2f}x" if values else "-"


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def format_table(results: Mapping[int, Mapping[str, list[dict]]], cores: float) -> str:
    head = (f"{'variant':<26} {'images':>6} {'wall s [min-max]':>20} {'images/s':>8} "
            f"{'CPU ms/img [min-max]':>22} {'cores':>5} {'1st img s':>9} {'CPU s to 1st':>12} "
            f"{'RSS MB':>6} "
            f"{'(b)/row wall':>12} {'row/(a) CPU':>11} {'load':>9}")
    lines = [head, "-" * len(head)]
    notes = []
    for images, by_variant in results.items():
        for variant, runs in by_variant.items():
            label = VARIANTS[variant]
            load = (f"{min(r['load'][0] for r in runs):.1f}-"
                    f"{max(r['load'][1] for r in runs):.1f}")
            refused = [r["reason"] for r in runs if r["reason"]]
            walls = [r["total_s"] for r in runs]
            rss = max(r["rss"] for r in runs) / 2**20
            if refused:
                lines.append(f"{label:<26} {images:>6} {spread(walls):>20} "
                             f"{'not measurable: ' + refused[0]}")
                continue
            peer = [b["total_s"] / r["total_s"] for r, b in zip(runs, by_variant.get("b", []))]
            loop_cpu = [r["cpu_ms"] / a["cpu_ms"] for r, a in zip(runs, by_variant.get("a", []))]
            first = [r["startup_s"] for r in runs if r["startup_s"] is not None]
            first_cpu = [r["startup_cpu_s"] for r in runs if r.get("startup_cpu_s") is not None]
            lines.append(
                f"{label:<26} {images:>6} {spread(walls):>20} "
                f"{images / statistics.median(walls):>8.1f} "
                f"{spread([r['cpu_ms'] for r in runs]):>22} "
                f"{statistics.median(r['cores_busy'] for r in runs):>5.2f} "
                f"{_median(first):>9} {_median(first_cpu):>12} "
                f"{rss:>6.0f} "
                f"{_ratio(peer):>12} {_ratio(loop_cpu):>11} "
                f"{load:>9}")
            if variant != "a" and len(runs) > 1 and peer and loop_cpu:
                notes.append(f"  {images} images, {label}: (b)/row wall per round "
                             + " ".join(f"{v:.2f}" for v in peer) + "; row/(a) CPU per round "
                             + " ".join(f"{v:.2f}" for v in loop_cpu))
            choices = {r["choice"] for r in runs if r["choice"]}
            if choices:
                notes.append(f"  {images} images, {label}: {'; '.join(sorted(choices))}")
    lines.append(f"wall s: whole process, median [min-max] over rounds; images/s: images / "
                 f"median wall; CPU: process tree incl. workers, of {cores:g} usable cores; "
                 "1st img s, CPU s to 1st: wall and CPU seconds from process start to the first "
                 "image "
                 "out of the detector (start-up, model loading, worker processes); ratios: "
                 "median over rounds of the pair in the same round ((b)/row wall > 1: the row "
                 "is faster than tf.data); load: 1-min load average before-after")
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[300],
                        help="image counts, e.g. 300 1200 3000 (default 300: a few minutes)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per size")
    parser.add_argument("--variants", default="abc",
                        help="which variants to run, e.g. 'bc', 'abcd' or 'abef'")
    parser.add_argument("--tiny", action="store_true", help="tiny detector (smoke tests)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--from_json", help="only print the table of figures a --json wrote")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as handle:
            saved = json.load(handle)
        results = {int(n): {v: runs for v, runs in by.items() if runs}
                   for n, by in saved["results"].items()}
        print(format_table(results, saved["cores"]))
        return
    variants = [v for v in VARIANTS if v in args.variants]
    built = measure([sys.executable, "-m", "benchmarks._assets", "--out", args.out, "--sizes",
                     *map(str, args.images)] + (["--tiny"] if args.tiny else []), cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=ROOT), progress=None).info
    cores = cpu_cores()
    print(f"{os.cpu_count()} CPUs, {cores:g} usable; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; 640x480 JPEG, 5 regions each, "
          f"detector {'tiny' if args.tiny else 'MobileNetV2 320'}, batch 1", flush=True)
    results: dict[int, dict[str, list[dict]]] = {}
    for images in args.images:
        results[images] = {v: [] for v in variants}
        reference = None
        for round_index in range(max(args.rounds, 1)):
            for variant in variants:
                r = run_once(variant, images, built, args.out, cores)
                label = f"{VARIANTS[variant]} round {round_index + 1}"
                if reference is None:
                    reference = r["rows"]
                else:
                    compare_rows(r["rows"], reference, f"{label}, {images} images")
                r["rows"] = len(r["rows"])
                results[images][variant].append(r)
                print(f"  {label}: {images} images in {r['total_s']:.1f} s, "
                      f"{r['cpu_ms']:.1f} CPU ms/img, {r['cores_busy']:.2f} cores busy, "
                      f"load {r['load'][0]:.2f} -> {r['load'][1]:.2f}"
                      + (f" ({r['reason']})" if r["reason"] else "")
                      + (f"; {r['choice']}" if r["choice"] else ""), flush=True)
                if args.json:  # after every run: a benchmark stopped early keeps its figures
                    with open(args.json, "w") as handle:
                        json.dump({"cores": cores, "results": results}, handle, indent=1)
    print()
    print("rows agree: every run has the same detections per image as the first "
          f"(boxes within {BOX_TOLERANCE:g}, scores and confidences within {SCORE_TOLERANCE:g}, "
          "same classes)")
    print(format_table(results, cores))


if __name__ == "__main__":
    main()
