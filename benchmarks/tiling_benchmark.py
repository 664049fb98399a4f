"""Tiled detection on large images: accuracy, speed against a plain loop, peak memory.

Usage::

    .venv/bin/python -m benchmarks.tiling_benchmark [--parts accuracy,speed,memory]
        [--seeds 1000 2000 3000] [--images 20] [--rounds 5]

Builds its inputs under ``benchmarks/out/tiling/`` (cached): 2048x2048 images from
``training.generate`` per seed, and a "resizing detector": the bundled detector wrapped in a
SavedModel that resizes every input to 512x512 inside its graph, as an SSD export does.

- accuracy: class-agnostic AP@0.5 (``training.evaluate``) of the detector stage as the job runs
  it (``detect_tiled``, then ``select_regions`` at score 0.05 and 100 detections) for the
  resizing detector on whole images, the same with 512-pixel tiles (overlap 0.2), and the bundled
  detector at native scale (the ceiling); per seed, then min / median / max over seeds.
  Duplicates: detections (score >= 0.3) beyond the first on one ground-truth object (IoU >= 0.5,
  or at least half the detection inside the object), as a share of those detections; "at seams"
  when no single tile gave all the detections on that object (the rest the detector gives
  within one tile or one whole image, as it does untiled).
- speed: ``detect_tiled`` with 512-pixel tiles against a plain loop that calls the same
  signature on the same tiles (no merge), alternating, per round; images/s and tiles/s.
- memory: in a fresh process holding one 10000x10000 image and the bundled detector, RSS
  before ``detect_tiled`` with 1024-pixel tiles and its peak during it (``/proc/self/status``,
  the peak reset through ``/proc/self/clear_refs`` first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "out", "tiling")
BUNDLED = os.path.join(ROOT, "models", "detector", "saved_model")
SIZE = 2048
RESIZE_TO = 512
TILE = 512
OVERLAP = 0.2
AP_MIN_SCORE = 0.05  # the bundled detector's own floor: AP sees the whole curve
KEEP_MIN_SCORE = 0.3  # the README's run of the bundled models


def build_images(seed: int, count: int) -> str:
    """``OUT/images_<seed>`` with ``count`` 2048x2048 PNGs and annotations.json (cached)."""
    from training.generate import generate_dataset

    folder = os.path.join(OUT, f"images_{SIZE}_{seed}_{count}")
    annotations = os.path.join(folder, "annotations.json")
    if not os.path.exists(annotations):
        generate_dataset(folder, count, seed, width=SIZE, height=SIZE)
    return annotations


def build_resizing_detector() -> str:
    """The bundled detector behind a 512x512 resize inside the graph, with the OD API
    signature (uint8 ``input_tensor [1, None, None, 3]``)."""
    path = os.path.join(OUT, f"resizing_detector_{RESIZE_TO}")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    import tensorflow as tf

    class ResizingDetector(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = tf.saved_model.load(BUNDLED)

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def detect(self, input_tensor):
            resized = tf.image.resize(tf.cast(input_tensor, tf.float32), [RESIZE_TO, RESIZE_TO],
                                      method="area")
            resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
            return self.inner.signatures["serving_default"](input_tensor=resized)

    module = ResizingDetector()
    tf.saved_model.save(module, path, signatures={"serving_default": module.detect})
    return path


def _read(path: str) -> np.ndarray:
    from transforms.decoding import decode_image

    with open(path, "rb") as handle:
        return decode_image(handle.read())


def _image_paths(annotations: str) -> list[str]:
    with open(annotations) as handle:
        names = [image["file_name"] for image in json.load(handle)["images"]]
    return [os.path.join(os.path.dirname(annotations), "images", name) for name in names]


class _Recorder:
    """Passes calls to a DetectorModel and keeps each input's answer, in call order (for
    ``detect_tiled``: the tiles in grid order)."""

    def __init__(self, model):
        self.model, self.batchable, self.found = model, model.batchable, []

    def detect(self, images):
        found = self.model.detect(images)
        self.found.extend(found)
        return found


def _sources(boxes: np.ndarray, grid: np.ndarray, found: list) -> list[set]:
    """The tiles whose own box equals each final box (empty: a union of cut parts)."""
    from transforms.boxes import normalized_to_pixels

    sources: list[set] = [set() for _ in boxes]
    for tile, (top, left, bottom, right) in enumerate(grid):
        raw = normalized_to_pixels(found[tile].boxes, bottom - top, right - left)
        raw = raw + np.array([top, left, top, left], np.float32)
        for i, box in enumerate(boxes):
            if len(raw) and np.abs(raw - box).max(axis=1).min() < 0.05:
                sources[i].add(tile)
    return sources


def _duplicates(boxes: np.ndarray, truth: np.ndarray, sources: list[set] | None) -> tuple:
    """Detections beyond the first on one ground-truth box; and those of them in groups whose
    members no single tile gave (seam duplicates; ``sources`` None: untiled, none)."""
    from transforms.boxes import intersection_areas, iou_matrix

    if not len(boxes) or not len(truth):
        return 0, 0
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = intersection_areas(boxes, truth) / np.maximum(areas, 1e-9)[:, None]
    on = (iou_matrix(boxes, truth) >= 0.5) | (inside >= 0.5)
    extra = seams = 0
    for members in (np.flatnonzero(column) for column in on.T):
        if len(members) > 1:
            extra += len(members) - 1
            if sources is not None and not set.intersection(*(sources[i] for i in members)):
                seams += len(members) - 1
    return extra, seams


def score_config(model, annotations: str, tile_size: int) -> dict:
    """AP@0.5 and duplicates of one detector and tiling over one seed's images."""
    import pyarrow as pa

    from training.evaluate import evaluate
    from transforms.regions import select_regions
    from transforms.tiles import TilingConfig, detect_tiled, tile_grid

    with open(annotations) as handle:
        coco = json.load(handle)
    truth: dict[str, list] = {}
    by_id = {image["id"]: image["file_name"] for image in coco["images"]}
    for note in coco["annotations"]:
        x, y, w, h = note["bbox"]
        truth.setdefault(by_id[note["image_id"]], []).append([y, x, y + h, x + w])
    rows: dict[str, list] = {key: [] for key in (
        "image_path", "box_ymin", "box_xmin", "box_ymax", "box_xmax", "detector_score",
        "detector_class_id", "detector_label", "label", "confidence")}
    figures = {"kept": 0, "duplicates": 0, "seam_duplicates": 0}
    config = TilingConfig(tile_size=tile_size, overlap=OVERLAP)
    grid = tile_grid(SIZE, SIZE, tile_size, OVERLAP) if tile_size else None
    for path in _image_paths(annotations):
        recorder = _Recorder(model)
        found = detect_tiled(recorder, _read(path), config)
        index, boxes, _ = select_regions(found, SIZE, SIZE, min_score=AP_MIN_SCORE,
                                         max_detections=100, padding=0.0)
        scores = found.scores[index]
        for box, score in zip(boxes, scores):
            for key, value in zip(rows, (path, *box.tolist(), float(score), 1, "defect",
                                         "defect", 1.0)):
                rows[key].append(value)
        confident = boxes[scores >= KEEP_MIN_SCORE]
        sources = None if grid is None else _sources(confident, grid, recorder.found)
        extra, seams = _duplicates(confident, np.array(
            truth.get(os.path.basename(path), []), np.float64).reshape(-1, 4), sources)
        figures["kept"] += len(confident)
        figures["duplicates"] += extra
        figures["seam_duplicates"] += seams
    figures["ap50"] = evaluate(pa.table(rows), annotations)["ap50"]
    return figures


def accuracy(seeds: list[int], count: int) -> None:
    from transforms.detection import DetectorModel

    resizing = DetectorModel(build_resizing_detector())
    bundled = DetectorModel(BUNDLED)
    configs = [("resizing detector, whole image", resizing, 0),
               (f"resizing detector, --tile_size {TILE}", resizing, TILE),
               ("bundled detector, native scale (ceiling)", bundled, 0)]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for seed in seeds:
        annotations = build_images(seed, count)
        for name, model, tile in configs:
            figures = score_config(model, annotations, tile)
            results[name].append(figures)
            print(f"seed {seed} {name}: AP50 {figures['ap50']:.3f}, duplicates "
                  f"{figures['duplicates']} ({figures['seam_duplicates']} at seams) of "
                  f"{figures['kept']} kept", flush=True)
    print(f"\naccuracy, {len(seeds)} seeds x {count} images of {SIZE}x{SIZE}: AP50 min / median /"
          " max; duplicates (all, at seams) among detections at score >= 0.3")
    for name, per_seed in results.items():
        ap = [figures["ap50"] for figures in per_seed]
        dup, seams, kept = (sum(figures[k] for figures in per_seed)
                            for k in ("duplicates", "seam_duplicates", "kept"))
        print(f"  {name:42s} {min(ap):.3f} / {statistics.median(ap):.3f} / {max(ap):.3f}   "
              f"{dup} ({100.0 * dup / max(kept, 1):.2f}%), {seams} "
              f"({100.0 * seams / max(kept, 1):.2f}%) of {kept}")


def speed(seed: int, count: int, used: int, rounds: int) -> None:
    import tensorflow as tf

    from transforms.detection import DetectorModel
    from transforms.tiles import TilingConfig, detect_tiled, tile_grid

    images = [_read(path) for path in _image_paths(build_images(seed, count))[:used]]
    model = DetectorModel(BUNDLED)
    fn = tf.saved_model.load(BUNDLED).signatures["serving_default"]
    config = TilingConfig(tile_size=TILE, overlap=OVERLAP)
    grid = tile_grid(SIZE, SIZE, TILE, OVERLAP)

    def plain_loop() -> None:
        for image in images:
            for top, left, bottom, right in grid:
                outputs = fn(input_tensor=tf.constant(image[np.newaxis, top:bottom, left:right]))
                {key: value.numpy() for key, value in outputs.items()}

    def tiled() -> None:
        for image in images:
            detect_tiled(model, image, config)

    plain_loop()  # warm-up: tracing and allocator
    tiled()
    seconds: dict[str, list[float]] = {"loop": [], "tiled": []}
    for _ in range(rounds):
        for name, work in (("loop", plain_loop), ("tiled", tiled)):
            start = time.perf_counter()
            work()
            seconds[name].append(time.perf_counter() - start)
    tiles = len(images) * len(grid)
    print(f"\nspeed, {len(images)} images of {SIZE}x{SIZE}, {len(grid)} tiles of {TILE} each, "
          f"bundled detector (batch 1), {rounds} rounds: min / median / max")
    for name in ("loop", "tiled"):
        rates = sorted(len(images) / s for s in seconds[name])
        print(f"  {name:6s} images/s {rates[0]:.2f} / {statistics.median(rates):.2f} / "
              f"{rates[-1]:.2f}   tiles/s {rates[0] * tiles / len(images):.1f} / "
              f"{statistics.median(rates) * tiles / len(images):.1f} / "
              f"{rates[-1] * tiles / len(images):.1f}")
    ratios = sorted(loop / tile for loop, tile in zip(seconds["loop"], seconds["tiled"]))
    print(f"  tiled / loop, per round: {ratios[0]:.3f} / {statistics.median(ratios):.3f} / "
          f"{ratios[-1]:.3f}")


def memory(side: int, tile_size: int) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-m", "benchmarks._tiling_memory", f"--side={side}",
                           f"--tile_size={tile_size}", f"--overlap={OVERLAP}",
                           f"--base_size={SIZE}", f"--detector={BUNDLED}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nmemory, one {side}x{side} image ({figures['image_mb']:.0f} MB decoded), "
          f"{figures['tiles']} tiles of {tile_size}: RSS {figures['rss_before_mb']:.0f} MB with "
          f"the image and the model loaded, peak {figures['peak_during_mb']:.0f} MB during "
          f"detect_tiled (+{figures['peak_during_mb'] - figures['rss_before_mb']:.0f} MB); "
          f"{figures['seconds']:.1f} s, {figures['detections']} detections")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="accuracy,speed,memory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 2000, 3000])
    parser.add_argument("--images", type=int, default=20, help="images per seed")
    parser.add_argument("--speed_images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--side", type=int, default=10000, help="memory: image side")
    parser.add_argument("--tile_size", type=int, default=1024, help="memory: tile size")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.makedirs(OUT, exist_ok=True)
    parts = args.parts.split(",")
    if "accuracy" in parts:
        accuracy(args.seeds, args.images)
    if "speed" in parts:
        speed(args.seeds[0], args.images, args.speed_images, args.rounds)
    if "memory" in parts:
        memory(args.side, args.tile_size)


if __name__ == "__main__":
    main()
