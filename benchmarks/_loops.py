"""The plain loops the benchmarks time against the job, without Beam.

Run as ``python -m benchmarks._loops {limit,origin,tfdata} MANIFEST DETECTOR CLASSIFIER LABELS
OUTPUT``;
prints one JSON line with the images and regions (the detector logs its own progress, see
``benchmarks._assets``).

- ``limit``: ``training.offline_eval.run_loop``, the job's one plain loop (decode, detect,
  select, crop, batched compiled classification), then one Parquet write. No Beam: the least
  work the same models allow.
- ``origin``: the same loop with the seed article's classifier call, one ``model.predict`` per
  region.
- ``tfdata``: what TensorFlow's ``tf.data`` performance guide recommends for the input:
  ``from_tensor_slices(paths).map(read + decode, num_parallel_calls=AUTOTUNE)
  .prefetch(AUTOTUNE)``, then the same detector, region selection, crops, batched
  classification and rows as ``limit`` (``training.offline_eval.detect_and_classify``).
  JPEGs are decoded by ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``, which gives the
  same pixels as the job's OpenCV decoder (TensorFlow's default method differs by up to 7
  levels, which moves scores), so the rows can be compared; other formats by
  ``tf.io.decode_image``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MIN_SCORE = 0.5


def tf_data_decoded(paths: Sequence[str]):
    """``(path, pixels)`` pairs from a ``tf.data`` pipeline: parallel read + decode, prefetch."""
    import tensorflow as tf

    def load(path):
        data = tf.io.read_file(path)
        pixels = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        return path, pixels

    dataset = (tf.data.Dataset.from_tensor_slices(list(paths))
               .map(load, num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    for path, pixels in dataset.as_numpy_iterator():
        yield path.decode("utf-8"), pixels


class PredictPerRegion:
    """The classifier as the seed article called it: ``model.predict`` on one crop at a time."""

    def __init__(self, path: str):
        import keras

        self._model = keras.models.load_model(path, compile=False)
        self.input_height, self.input_width = self._model.inputs[0].shape[1:3]

    def classify(self, crops: Sequence[np.ndarray], preprocess_mode: str) -> np.ndarray:
        from transforms.classification import preprocess

        return np.concatenate([self._model.predict(preprocess(crop[None], preprocess_mode),
                                                   verbose=0) for crop in crops])


def main() -> None:
    mode, manifest, detector_path, classifier_path, labels_path, output = sys.argv[1:7]
    from training.offline_eval import (
        detect_and_classify,
        load_models,
        run_loop,
        write_detections,
    )
    from transforms.labels import read_labels

    detector, classifier = load_models(detector_path, classifier_path)
    if mode == "origin":
        classifier = PredictPerRegion(classifier_path)
    with open(manifest) as handle:
        paths = [line.strip() for line in handle if line.strip()]
    settings = dict(detector=detector, classifier=classifier, labels=read_labels(labels_path),
                    detector_labels=None, min_score=MIN_SCORE,
                    batch_size=1 if mode == "origin" else 64, detector_model=detector_path,
                    classifier_model=classifier_path)
    rows = (detect_and_classify(tf_data_decoded(paths), **settings) if mode == "tfdata"
            else run_loop(paths, **settings))
    write_detections(rows, output)
    print(json.dumps({"images": len(paths), "regions": len(rows)}))


if __name__ == "__main__":
    main()
