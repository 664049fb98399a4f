"""Rows (a), (b) and (e) of the pipeline benchmark: the job's plain loop, without Beam.

Run as ``python -m benchmarks._loops {limit,origin} MANIFEST DETECTOR CLASSIFIER LABELS OUTPUT``;
prints one JSON line with the images and regions (the detector logs its own progress, see
``benchmarks._assets``).

- ``limit``: ``training.offline_eval.run_loop``, the job's one plain loop (decode, detect,
  select, crop, batched compiled classification), then one Parquet write. No Beam: the least
  work the same models allow.
- ``origin``: the same loop with the seed article's classifier call, one ``model.predict`` per
  region.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MIN_SCORE = 0.5


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
    from training.offline_eval import load_models, run_loop, write_detections
    from transforms.labels import read_labels

    detector, classifier = load_models(detector_path, classifier_path)
    if mode == "origin":
        classifier = PredictPerRegion(classifier_path)
    with open(manifest) as handle:
        paths = [line.strip() for line in handle if line.strip()]
    rows = run_loop(paths, detector=detector, classifier=classifier,
                    labels=read_labels(labels_path), detector_labels=None, min_score=MIN_SCORE,
                    batch_size=1 if mode == "origin" else 64, detector_model=detector_path,
                    classifier_model=classifier_path)
    write_detections(rows, output)
    print(json.dumps({"images": len(paths), "regions": len(rows)}))


if __name__ == "__main__":
    main()
