"""Rows (a) and (b) of the pipeline benchmark: plain Python loops with the same models.

Run as ``python -m benchmarks._loops {limit,origin} MANIFEST DETECTOR CLASSIFIER OUTPUT``;
prints one JSON line: images and regions (the detector logs its own progress, see ``_assets``).

- ``limit``: decode, detect, crop, batched classification through one compiled tf.function,
  one Parquet write at the end. No Beam: the least work the same models allow.
- ``origin``: the seed article's approach, one ``model.predict`` per region.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.boxes import (
    clip_boxes,
    crop_box,
    normalized_to_pixels,
    resize_to,
    valid_boxes,
)
from transforms.decoding import decode_image
from transforms.records import DETECTIONS_SCHEMA

BATCH = 64
MIN_SCORE = 0.5


def _regions(pixels: np.ndarray, outputs: dict) -> tuple[np.ndarray, np.ndarray]:
    count = int(outputs["num_detections"][0])
    scores = outputs["detection_scores"][0][:count]
    order = np.flatnonzero(scores >= MIN_SCORE)
    order = order[np.argsort(-scores[order], kind="stable")]
    height, width = pixels.shape[:2]
    boxes = normalized_to_pixels(outputs["detection_boxes"][0][order], height, width)
    boxes = clip_boxes(boxes, height, width)
    valid = valid_boxes(boxes)
    return order[valid], boxes[valid]


def main() -> None:
    mode, manifest, detector_path, classifier_path, output = sys.argv[1:6]
    import keras
    import tensorflow as tf

    detector = tf.saved_model.load(detector_path)
    detect = detector.signatures["serving_default"]
    model = keras.models.load_model(classifier_path, compile=False)
    height, width = model.inputs[0].shape[1:3]
    classify = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
    with open(manifest) as handle:
        paths = [line.strip() for line in handle if line.strip()]
    rows: dict[str, list] = {field.name: [] for field in DETECTIONS_SCHEMA}
    pending: list[tuple] = []
    crops: list[np.ndarray] = []

    def flush() -> None:
        if mode == "limit":
            probabilities = classify(np.stack(crops).astype(np.float32) / np.float32(255)).numpy()
        else:
            probabilities = np.concatenate([
                model.predict(crop[None].astype(np.float32) / 255.0, verbose=0)
                for crop in crops])
        for (path, index, box, score), row in zip(pending, probabilities):
            best = int(np.argmax(row))
            for key, value in zip(
                    ("image_path", "roi_index", "box_ymin", "box_xmin", "box_ymax", "box_xmax",
                     "detector_class_id", "detector_label", "detector_score", "class_id",
                     "label", "confidence", "detector_model", "classifier_model"),
                    (path, index, *box, 1, None, score, best, str(best), float(row[best]),
                     detector_path, classifier_path)):
                rows[key].append(value)
        pending.clear()
        crops.clear()

    for path in paths:
        with open(path, "rb") as handle:
            pixels = decode_image(handle.read())
        outputs = {k: v.numpy() for k, v in detect(input_tensor=tf.constant(pixels[None])).items()}
        keep, boxes = _regions(pixels, outputs)
        for roi_index, (index, box) in enumerate(zip(keep, boxes)):
            crops.append(resize_to(crop_box(pixels, box), height, width))
            pending.append((path, roi_index, [float(v) for v in box],
                            float(outputs["detection_scores"][0][index])))
        if len(crops) >= BATCH or mode == "origin":
            flush()
    if crops:
        flush()
    count = len(rows["image_path"])
    for field in DETECTIONS_SCHEMA:  # columns the loop has no value for (run_id, classified)
        if len(rows[field.name]) != count:
            rows[field.name] = [True if pa.types.is_boolean(field.type) else
                                "" if pa.types.is_string(field.type) else 0] * count
    os.makedirs(output, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=DETECTIONS_SCHEMA),
                   os.path.join(output, "detections.parquet"), compression="zstd")
    print(json.dumps({"images": len(paths), "regions": count}))


if __name__ == "__main__":
    main()
