"""Builds (and caches under benchmarks/out/) the benchmark's images, manifests and models.

Run as ``python -m benchmarks._assets --out DIR --sizes N... [--free_sizes N...] [--tiny]``;
prints one JSON line with the paths. Two model sets:

- ``real``: 640x480 synthetic wafer JPEGs from ``training.generate``, an OD API style SavedModel
  whose backbone (MobileNetV2 at 320x320, random weights, nothing downloaded) really runs while
  its boxes are fixed (5 regions per image), and the bundled classifier;
- ``free``: 160x120 JPEGs, a detector that returns 4 fixed boxes without looking at the pixels
  and a one-layer 32x32 classifier: what is left to time is the job's own work.

Every detector appends ``<epoch seconds> <batch size>`` to its progress log (``tf.print`` inside
the graph, so it also runs in worker processes) each time it is called: the benchmark times the
steady state between the 10% and 90% images leaving the detector from that log.
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 6
REAL_SIZE, FREE_SIZE = (640, 480), (160, 120)
# Normalized ymin, xmin, ymax, xmax: five regions of 20..150 px, then five that score too low.
BOXES = np.array([
    [0.10, 0.10, 0.30, 0.25], [0.40, 0.50, 0.70, 0.80], [0.05, 0.70, 0.12, 0.78],
    [0.60, 0.05, 0.95, 0.30], [0.35, 0.30, 0.45, 0.40],
    [0.20, 0.20, 0.30, 0.30], [0.50, 0.50, 0.60, 0.60], [0.70, 0.70, 0.80, 0.80],
    [0.10, 0.60, 0.20, 0.70], [0.80, 0.10, 0.90, 0.20],
], np.float32)
KEPT_REGIONS = 5
FREE_REGIONS = 4
BUNDLED_CLASSIFIER = os.path.join(ROOT, "models", "classifier")
_PROGRESS_SIDECAR = "benchmark_progress_log.txt"


def build_images(out: str, count: int, size: tuple[int, int] = REAL_SIZE) -> list[str]:
    """The first ``count`` images of ``size`` (width, height); only missing files are rendered."""
    from training.generate import render_image

    width, height = size
    folder = os.path.join(out, f"images_{width}x{height}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"wafer_{index:06d}.jpg")
        if not os.path.exists(path):
            pixels, _ = render_image(SEED, index, width, height)
            ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                      [int(cv2.IMWRITE_JPEG_QUALITY), 90])
            assert ok, path
            with open(path + ".tmp", "wb") as handle:
                handle.write(buffer.tobytes())
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def write_manifest(out: str, paths: list[str], name: str) -> str:
    path = os.path.join(out, f"manifest_{name}_{len(paths)}.txt")
    with open(path, "w") as handle:
        handle.write("\n".join(paths) + "\n")
    return path


def progress_log(detector: str) -> str:
    """Where the detector at ``detector`` appends one line per call."""
    return os.path.abspath(detector) + ".progress.log"


def _cached(path: str) -> bool:
    sidecar = os.path.join(path, _PROGRESS_SIDECAR)
    if not os.path.exists(sidecar):
        return False
    with open(sidecar) as handle:
        return handle.read().strip() == progress_log(path)  # moved folders are rebuilt


def build_detector(path: str, *, kind: str, delay_ms: int = 0) -> str:
    """An OD API signature, ``input_tensor`` uint8 [1, None, None, 3], that logs its calls.

    ``kind``: ``mnv2`` (MobileNetV2 at 320x320), ``tiny`` (one conv at 64x64) or ``free``
    (no network: 4 fixed boxes). ``delay_ms``: each call also waits that long without using
    the CPU (a tf.data sleep in the graph), so that a fault test can act mid-run.
    """
    if _cached(path):
        return path
    import tensorflow as tf

    net, size = _backbone(kind)
    boxes = tf.constant(BOXES[:FREE_REGIONS] if net is None else BOXES)
    count = int(boxes.shape[0])
    kept = FREE_REGIONS if net is None else KEPT_REGIONS
    base_scores = tf.constant([0.9] * kept + [0.1] * (count - kept))
    log = "file://" + progress_log(path)
    if delay_ms:
        # Private but stable since TF 2.3: the public tf.data.experimental.sleep was removed.
        from tensorflow.python.data.experimental.ops.testing import sleep

    class Detector(tf.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[
            tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def __call__(self, input_tensor):
            shift = tf.constant(0.0)
            if delay_ms:
                waited = tf.data.Dataset.range(1).apply(sleep(delay_ms * 1000)).reduce(
                    tf.constant(0, tf.int64), lambda total, _: total)
                shift += tf.cast(waited, tf.float32)  # 0: keeps the wait in the graph
            if self.net is not None:
                x = tf.image.resize(tf.cast(input_tensor, tf.float32), (size, size)) / 127.5 - 1
                # Scores move by at most 0.05 with the features, so the backbone cannot be
                # pruned but the same boxes always pass --min_score 0.5.
                shift = 0.05 * tf.tanh(tf.reduce_mean(self.net(x, training=False)))
            tf.print(tf.timestamp(), tf.shape(input_tensor)[0], output_stream=log)
            return {
                "detection_boxes": tf.reshape(boxes, [1, count, 4]),
                "detection_scores": tf.reshape(base_scores + shift, [1, count]),
                "detection_classes": tf.ones([1, count], tf.float32),
                "num_detections": tf.constant([float(count)]),
            }

    return _save_in_place(Detector(), path)


def _backbone(kind: str):
    """The detector's network and its input side: MobileNetV2, one conv, or none."""
    import keras

    size = {"mnv2": 320, "tiny": 64, "free": 0}[kind]
    if kind == "mnv2":
        return keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(size, size, 3)), size
    if kind == "tiny":
        return keras.Sequential([keras.Input((size, size, 3)),
                                 keras.layers.Conv2D(8, 3, strides=2, activation="relu")]), size
    return None, size


def _save_in_place(module, path: str) -> str:
    """``module`` saved beside ``path``, with its progress sidecar, then moved onto it."""
    import shutil

    import tensorflow as tf

    tf.saved_model.save(module, path + ".tmp", signatures={"serving_default": module.__call__})
    with open(os.path.join(path + ".tmp", _PROGRESS_SIDECAR), "w") as handle:
        handle.write(progress_log(path) + "\n")
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(path + ".tmp", path)
    return path


def _write_labels(path: str) -> str:
    from training.train_classifier import LABELS

    with open(path, "w") as handle:
        handle.write("\n".join(LABELS) + "\n")
    return path


def build_classifier(out: str) -> tuple[str, str]:
    """The bundled classifier when present, else a random one of the same architecture."""
    bundled = os.path.join(BUNDLED_CLASSIFIER, "classifier.keras")
    if os.path.exists(bundled) and os.path.exists(os.path.join(BUNDLED_CLASSIFIER, "labels.txt")):
        return bundled, os.path.join(BUNDLED_CLASSIFIER, "labels.txt")
    path = os.path.join(out, "classifier", "classifier.keras")
    labels = os.path.join(out, "classifier", "labels.txt")
    if not os.path.exists(path):
        from training.train_classifier import build_model

        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_model().save(path)  # random weights: timing only
        _write_labels(labels)
    return path, labels


def build_free_classifier(out: str) -> tuple[str, str]:
    """A 32x32 classifier that costs next to nothing: one 4-channel conv, pooling, softmax."""
    path = os.path.join(out, "classifier_free", "classifier.keras")
    labels = os.path.join(out, "classifier_free", "labels.txt")
    if not os.path.exists(path):
        import keras

        from training.train_classifier import LABELS

        os.makedirs(os.path.dirname(path), exist_ok=True)
        keras.Sequential([
            keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=2),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS), activation="softmax"),
        ]).save(path)
        _write_labels(labels)
    return path, labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--free_sizes", type=int, nargs="*", default=[])
    parser.add_argument("--tiny", action="store_true", help="tiny detector (smoke tests)")
    parser.add_argument("--delay_ms", type=int, default=0,
                        help="free detector: wait this long per call (fault tests)")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    result: dict = {}
    if args.sizes:
        paths = build_images(out, max(args.sizes), REAL_SIZE)
        detector = os.path.join(out, "detector_tiny" if args.tiny else "detector_mnv2_320")
        classifier, labels = build_classifier(out)
        result["real"] = {
            "manifests": {n: write_manifest(out, paths[:n], "real") for n in set(args.sizes)},
            "detector": build_detector(detector, kind="tiny" if args.tiny else "mnv2"),
            "classifier": classifier, "labels": labels}
    if args.free_sizes:
        paths = build_images(out, max(args.free_sizes), FREE_SIZE)
        classifier, labels = build_free_classifier(out)
        result["free"] = {
            "manifests": {n: write_manifest(out, paths[:n], "free") for n in set(args.free_sizes)},
            "detector": build_detector(
                os.path.join(out, f"detector_free_{args.delay_ms}ms" if args.delay_ms
                             else "detector_free"), kind="free", delay_ms=args.delay_ms),
            "classifier": classifier, "labels": labels}
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
