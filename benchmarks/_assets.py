"""Builds (and caches under benchmarks/out/) the benchmark's images, manifests and models.

Run as ``python -m benchmarks._assets --out DIR --images N [--tiny]``; prints one JSON line with
the paths. Images are synthetic 640x480 wafer JPEGs from ``training.generate``; the detector is
an OD API style SavedModel whose backbone (MobileNetV2 at 320x320, random weights, nothing
downloaded) really runs, while its boxes are fixed so every image gets the same ~5 regions.
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480
SEED = 6
# Normalized ymin, xmin, ymax, xmax: five regions of 20..150 px, then five that score too low.
BOXES = np.array([
    [0.10, 0.10, 0.30, 0.25], [0.40, 0.50, 0.70, 0.80], [0.05, 0.70, 0.12, 0.78],
    [0.60, 0.05, 0.95, 0.30], [0.35, 0.30, 0.45, 0.40],
    [0.20, 0.20, 0.30, 0.30], [0.50, 0.50, 0.60, 0.60], [0.70, 0.70, 0.80, 0.80],
    [0.10, 0.60, 0.20, 0.70], [0.80, 0.10, 0.90, 0.20],
], np.float32)
KEPT_REGIONS = 5
BUNDLED_CLASSIFIER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "models", "classifier")


def build_images(out: str, count: int) -> list[str]:
    """The first ``count`` images (cached: only missing files are rendered)."""
    from training.generate import render_image

    folder = os.path.join(out, f"images_{WIDTH}x{HEIGHT}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"wafer_{index:06d}.jpg")
        if not os.path.exists(path):
            pixels, _ = render_image(SEED, index, WIDTH, HEIGHT)
            ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                      [int(cv2.IMWRITE_JPEG_QUALITY), 90])
            assert ok, path
            with open(path + ".tmp", "wb") as handle:
                handle.write(buffer.tobytes())
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def write_manifest(out: str, paths: list[str]) -> str:
    path = os.path.join(out, f"manifest_{len(paths)}.txt")
    with open(path, "w") as handle:
        handle.write("\n".join(paths) + "\n")
    return path


def build_detector(path: str, *, tiny: bool) -> str:
    """An OD API signature around a real backbone: ``input_tensor`` uint8 [1, None, None, 3]."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    import keras
    import tensorflow as tf

    size = 64 if tiny else 320
    if tiny:
        backbone = keras.Sequential([keras.Input((size, size, 3)),
                                     keras.layers.Conv2D(8, 3, strides=2, activation="relu")])
    else:
        backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                                  input_shape=(size, size, 3))
    boxes = tf.constant(BOXES)
    base_scores = tf.constant([0.9] * KEPT_REGIONS + [0.1] * (len(BOXES) - KEPT_REGIONS))

    class Detector(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[
            tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def __call__(self, input_tensor):
            x = tf.image.resize(tf.cast(input_tensor, tf.float32), (size, size)) / 127.5 - 1.0
            features = self.net(x, training=False)
            # Scores move by at most 0.05 with the features, so the backbone cannot be pruned
            # but the same five boxes always pass --min_score 0.5.
            shift = 0.05 * tf.tanh(tf.reduce_mean(features))
            count = len(BOXES)
            return {
                "detection_boxes": tf.reshape(boxes, [1, count, 4]),
                "detection_scores": tf.reshape(base_scores + shift, [1, count]),
                "detection_classes": tf.ones([1, count], tf.float32),
                "num_detections": tf.constant([float(count)]),
            }

    module = Detector(backbone)
    tf.saved_model.save(module, path + ".tmp", signatures={"serving_default": module.__call__})
    os.replace(path + ".tmp", path)
    return path


def build_classifier(out: str) -> tuple[str, str]:
    """The bundled classifier when present, else a random one of the same architecture."""
    bundled = os.path.join(BUNDLED_CLASSIFIER, "classifier.keras")
    if os.path.exists(bundled) and os.path.exists(os.path.join(BUNDLED_CLASSIFIER, "labels.txt")):
        return bundled, os.path.join(BUNDLED_CLASSIFIER, "labels.txt")
    path = os.path.join(out, "classifier", "classifier.keras")
    labels = os.path.join(out, "classifier", "labels.txt")
    if not os.path.exists(path):
        from training.train_classifier import LABELS, build_model

        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_model().save(path)  # random weights: timing only
        with open(labels, "w") as handle:
            handle.write("\n".join(LABELS) + "\n")
    return path, labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    paths = build_images(args.out, max(args.sizes))
    manifests = {n: write_manifest(args.out, paths[:n]) for n in sorted(set(args.sizes))}
    detector = build_detector(
        os.path.join(args.out, "detector_tiny" if args.tiny else "detector_mnv2_320"),
        tiny=args.tiny)
    classifier, labels = build_classifier(args.out)
    print(json.dumps({"manifests": manifests, "detector": detector, "classifier": classifier,
                      "labels": labels}))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
