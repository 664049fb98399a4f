"""Run detector + crops + classifier in a plain loop and write Parquet like the pipeline does.

Usage::

    python -m training.offline_eval --images DIR/images --output OUT [--min_score 0.05]
    python -m training.evaluate --detections OUT --annotations DIR/annotations.json

A stand-in for the Beam job when measuring the bundled models: same crop rule
(``training.crops.crop_box``), same ``/ 255`` preprocessing, same ``DETECTIONS_SCHEMA``, written to
``OUT/detections/detections-00000-of-00001.parquet``. ``--min_score`` defaults low (0.05) so that
AP sees the whole precision-recall curve; the pipeline's own default is 0.5.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.crops import crop_box
from training.evaluate import read_label_map
from transforms.records import DETECTIONS_SCHEMA

__all__ = ["run"]


def run(images_dir: str, output: str, *, detector_dir: str, classifier_dir: str,
        min_score: float) -> dict:
    """Detect, crop, classify every image of ``images_dir``; returns timing figures."""
    import keras
    import tensorflow as tf

    detect = tf.saved_model.load(os.path.join(detector_dir, "saved_model")).signatures[
        "serving_default"]
    label_map = read_label_map(os.path.join(detector_dir, "label_map.pbtxt"))
    model = keras.models.load_model(os.path.join(classifier_dir, "classifier.keras"))
    size = int(model.input_shape[1])
    with open(os.path.join(classifier_dir, "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    classify = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    rows, t_det, t_cls = [], 0.0, 0.0
    names = sorted(os.listdir(images_dir))
    for name in names:
        path = os.path.join(images_dir, name)
        image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        t = time.perf_counter()
        out = detect(input_tensor=tf.constant(image[None]))
        n = int(out["num_detections"][0])
        boxes = out["detection_boxes"][0, :n].numpy() * np.array([h, w, h, w], np.float32)
        scores = out["detection_scores"][0, :n].numpy()
        classes = out["detection_classes"][0, :n].numpy().astype(int)
        t_det += time.perf_counter() - t
        keep = np.nonzero(scores >= min_score)[0]
        if len(keep) == 0:
            continue
        crops = np.stack([crop_box(image, tuple(boxes[i]), size) for i in keep])
        t = time.perf_counter()
        probs = classify(tf.constant(crops.astype(np.float32) / 255.0)).numpy()
        t_cls += time.perf_counter() - t
        for roi, (i, p) in enumerate(zip(keep, probs)):
            k = int(np.argmax(p))
            rows.append({"image_path": os.path.abspath(path), "roi_index": roi,
                         "box_ymin": boxes[i, 0], "box_xmin": boxes[i, 1],
                         "box_ymax": boxes[i, 2], "box_xmax": boxes[i, 3],
                         "detector_class_id": int(classes[i]),
                         "detector_label": label_map.get(int(classes[i])),
                         "detector_score": float(scores[i]), "class_id": k, "label": labels[k],
                         "confidence": float(p[k]), "detector_model": detector_dir,
                         "classifier_model": classifier_dir})
    folder = os.path.join(output, "detections")
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA),
                   os.path.join(folder, "detections-00000-of-00001.parquet"))
    return {"images": len(names), "rows": len(rows),
            "detector_ms_per_image": 1000 * t_det / max(len(names), 1),
            "classifier_ms_per_image": 1000 * t_cls / max(len(names), 1)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="Folder of images.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--detector", default="models/detector")
    parser.add_argument("--classifier", default="models/classifier")
    parser.add_argument("--min_score", type=float, default=0.05)
    args = parser.parse_args(argv)
    print(run(args.images, args.output, detector_dir=args.detector,
              classifier_dir=args.classifier, min_score=args.min_score))


if __name__ == "__main__":
    main()
