"""The bundled default models: documented signature, labels, input shape, size, and a smoke check
that the real job with them finds and names most defects of a few freshly generated images."""

from __future__ import annotations

import os

import pytest

from training.train_classifier import INPUT_SIZE, LABELS
from transforms.labels import read_label_map, read_labels
from transforms.model_files import (
    DEFAULT_CLASSIFIER,
    DEFAULT_CLASSIFIER_LABELS,
    DEFAULT_DETECTOR,
    DEFAULT_DETECTOR_LABEL_MAP,
    resolve_model_path,
)

pytestmark = pytest.mark.e2e  # runs the job, subprocesses or builds: the slow tier

MAX_MODEL_BYTES = 5 * 1024 * 1024


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


@pytest.fixture(scope="module")
def detector():
    import tensorflow as tf

    return tf.saved_model.load(resolve_model_path(DEFAULT_DETECTOR))


def test_bundled_detector_has_the_od_api_signature(detector):
    import tensorflow as tf

    fn = detector.signatures["serving_default"]
    _, inputs = fn.structured_input_signature
    assert set(inputs) == {"input_tensor"}
    assert inputs["input_tensor"].dtype == tf.uint8
    assert inputs["input_tensor"].shape.as_list() == [1, None, None, 3]
    out = fn(input_tensor=tf.zeros([1, 200, 330, 3], tf.uint8))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in out.items()} == {
        "detection_boxes": (tf.float32, (1, 100, 4)),
        "detection_scores": (tf.float32, (1, 100)),
        "detection_classes": (tf.float32, (1, 100)),
        "num_detections": (tf.float32, (1,)),
    }


def test_bundled_label_maps_and_labels():
    assert read_label_map(resolve_model_path(DEFAULT_DETECTOR_LABEL_MAP)) == {1: "defect"}
    labels = read_labels(resolve_model_path(DEFAULT_CLASSIFIER_LABELS))
    assert labels == list(LABELS)
    assert labels == ["particle", "scratch", "stain", "bridge", "void", "background"]


def test_bundled_classifier_loads_in_safe_mode_with_the_documented_shape():
    import keras

    model = keras.models.load_model(resolve_model_path(DEFAULT_CLASSIFIER), safe_mode=True)
    assert tuple(model.input_shape) == (None, INPUT_SIZE, INPUT_SIZE, 3)
    assert tuple(model.output_shape) == (None, len(LABELS))


@pytest.mark.parametrize("path", [DEFAULT_DETECTOR, DEFAULT_CLASSIFIER])
def test_bundled_models_are_at_most_5_mb(path):
    assert 0 < _size(resolve_model_path(path)) <= MAX_MODEL_BYTES


def test_bundled_detector_declares_a_validated_score_threshold():
    import json

    from training.calibrate_threshold import EVALUATION_SEEDS, TRAINING_SEEDS

    path = os.path.join(resolve_model_path(DEFAULT_DETECTOR), "assets.extra",
                        "score_threshold.json")
    with open(path, encoding="utf-8") as handle:
        declared = json.load(handle)
    assert set(declared) == {"min_score", "rule", "validation", "written_by"}
    assert 0.05 <= declared["min_score"] < 0.5  # the floor of the export, the old default
    validation = declared["validation"]
    assert validation["seed"] not in (*TRAINING_SEEDS, *EVALUATION_SEEDS, 4242)
    assert validation["num_images"] >= 200
    assert validation["ap50"] >= 0.9 and validation["classifier_label_accuracy"] >= 0.95
    assert declared["written_by"].startswith("python -m training.calibrate_threshold")


def test_job_with_bundled_models_finds_and_names_most_defects(tmp_path):
    from beam_pipeline.main import run
    from training.evaluate import evaluate
    from training.generate import generate_dataset

    # A seed used nowhere else: neither training (1, 2, 10002) nor the model card (1000-3000).
    annotations = generate_dataset(str(tmp_path / "data"), 6, seed=4242)
    # No --min_score: the job takes the threshold the detector declares.
    metrics = run([f"--input={tmp_path / 'data' / 'images'}", f"--output={tmp_path / 'out'}"])
    assert metrics["images_read"] == 6
    result = evaluate(str(tmp_path / "out"), annotations)
    assert result["num_gt"] >= 10
    # On 200 images at the declared threshold the model card measures 93-95% of defects found
    # and a classifier accuracy of 0.97-0.99; six images leave room for chance.
    assert result["matched"] >= 0.75 * result["num_gt"], result
    assert result["classifier_label_accuracy"] >= 0.8, result
    assert result["detector_label_accuracy"] == 0.0  # 'defect' is never a ground-truth type
