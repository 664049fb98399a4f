"""Time the report over a large synthetic run: ``--rows`` detection rows (default 1,000,000)
over ``--images`` image paths, written as the job writes them (run record, both tables), with
the paths pointing at a few real PNG files so the gallery cuts real crops.

Usage::

    python -m benchmarks.report_benchmark [--rows 1000000 --images 100000 --out benchmarks/out]

Prints the seconds of ``python -m beam_pipeline.report --runs OUT --html FILE`` as a whole
process (interpreter start and imports included), once per ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["particle", "scratch", "stain", "bridge", "void", "background"]
RUN_ID = "20260101T000000.000000Z-00000001"


def write_run(out: str, rows: int, images: int, sources: int, seed: int = 0) -> str:
    """A finished run folder under ``out``: ``images`` paths (symbolic links to ``sources``
    real 512x512 PNGs), ``rows`` detections spread over them, 2% of the images failed."""
    import cv2

    rng = np.random.default_rng(seed)
    source_dir, image_dir = os.path.join(out, "sources"), os.path.join(out, "images")
    os.makedirs(source_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    for i in range(sources):
        path = os.path.join(source_dir, f"s{i}.png")
        if not os.path.exists(path):
            cv2.imwrite(path, rng.integers(0, 255, (512, 512, 3), np.uint8))
    paths = np.array([os.path.join(image_dir, f"img{i:07d}.png") for i in range(images)])
    for i, path in enumerate(paths):
        if not os.path.lexists(path):
            os.symlink(os.path.join(source_dir, f"s{i % sources}.png"), path)
    failed = rng.random(images) < 0.02
    owner = rng.choice(np.flatnonzero(~failed), rows)
    owner.sort()
    roi = np.arange(rows) - np.searchsorted(owner, owner)
    y0, x0 = rng.uniform(0, 480, rows), rng.uniform(0, 480, rows)
    size = rng.uniform(4, 32, (2, rows))
    label_ids = rng.integers(0, len(LABELS), rows)
    run = os.path.join(out, "run")
    for table in ("detections", "images"):
        os.makedirs(os.path.join(run, table), exist_ok=True)
    detections = pa.table({
        "image_path": paths[owner], "roi_index": roi.astype(np.int32),
        "box_ymin": y0.astype(np.float32), "box_xmin": x0.astype(np.float32),
        "box_ymax": (y0 + size[0]).astype(np.float32), "box_xmax": (x0 + size[1]).astype(
            np.float32),
        "detector_class_id": np.ones(rows, np.int32), "detector_label": ["defect"] * rows,
        "detector_score": rng.uniform(0.3, 1, rows).astype(np.float32),
        "class_id": label_ids.astype(np.int32), "label": np.array(LABELS)[label_ids],
        "confidence": rng.beta(5, 1, rows).astype(np.float32),
        "detector_model": ["models/detector"] * rows,
        "classifier_model": ["models/classifier"] * rows,
        "run_id": [RUN_ID] * rows, "fingerprint": ["f"] * rows, "classified": [True] * rows})
    counts = np.bincount(owner, minlength=images).astype(np.int32)
    images_table = pa.table({
        "image_path": paths, "width": np.where(failed, None, 512),
        "height": np.where(failed, None, 512),
        "status": np.where(failed, "error", "ok"),
        "error_stage": np.where(failed, "decode", None),
        "error": np.where(failed, "not a supported image format", None),
        "num_detections": counts, "run_id": [RUN_ID] * images, "fingerprint": ["f"] * images})
    for shard in range(4):  # as a runner writes them: several files per table
        pq.write_table(detections.slice(shard * rows // 4, rows // 4 + 1),
                       os.path.join(run, "detections", f"part-{shard:05d}-of-00004.parquet"),
                       compression="zstd")
    pq.write_table(images_table, os.path.join(run, "images", "part-00000-of-00001.parquet"),
                   compression="zstd")
    with open(os.path.join(run, "_SUCCESS"), "w"):
        pass
    with open(os.path.join(run, "run.json"), "w") as handle:
        json.dump({"version": 1, "run_id": RUN_ID, "status": "complete"}, handle)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "report"))
    args = parser.parse_args()
    start = time.perf_counter()
    run = write_run(args.out, args.rows, args.images, args.sources)
    print(f"synthetic run: {args.rows} detections over {args.images} images in "
          f"{time.perf_counter() - start:.1f} s -> {run}", flush=True)
    html = os.path.join(args.out, "report.html")
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "beam_pipeline.report", "--runs", run, "--html",
                        html], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"report: {time.perf_counter() - start:.1f} s (whole process), "
              f"{os.path.getsize(html) / 1e6:.1f} MB page", flush=True)


if __name__ == "__main__":
    main()
