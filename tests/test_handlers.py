"""Model handlers with small real models built in fixtures."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FAKE_BOXES, FAKE_NUM_DETECTIONS, FAKE_SCORES, paint_image
from transforms.classification import (
    ClassifierModel,
    KerasClassifierModelHandler,
    to_probabilities,
)
from transforms.detection import DetectorModel, ObjectDetectionModelHandler, parse_detections
from transforms.records import DecodedImage, Region


@pytest.fixture(scope="module")
def detector(models_dir):
    return DetectorModel(str(models_dir / "detector"))


def test_parse_detections_ignores_entries_past_num_detections():
    outputs = {
        "detection_boxes": FAKE_BOXES[np.newaxis],
        "detection_scores": FAKE_SCORES[np.newaxis],
        "detection_classes": np.array([[1, 2, 3, 4, 5]], np.float32),
        "num_detections": np.array([2.0], np.float32),
        "detection_multiclass_scores": np.zeros((1, 5, 3), np.float32),
    }
    found = parse_detections(outputs, 0)
    np.testing.assert_allclose(found.boxes, FAKE_BOXES[:2])
    assert found.classes.tolist() == [1, 2]
    del outputs["num_detections"]
    assert len(parse_detections(outputs, 0).scores) == 5


def test_detector_model_reads_signature_and_trims_padding(detector):
    assert detector.input_key == "input_tensor"
    assert not detector.batchable
    images = [paint_image(("red", "green", "blue")), np.zeros((37, 53, 3), np.uint8)]
    results = detector.detect(images)
    assert len(results) == 2
    for found in results:
        assert found.error is None
        np.testing.assert_allclose(found.boxes, FAKE_BOXES[:FAKE_NUM_DETECTIONS])
        np.testing.assert_allclose(found.scores, FAKE_SCORES[:FAKE_NUM_DETECTIONS])
        assert found.classes.tolist() == [1, 2, 1, 3]


def test_batchable_detector_stacks_same_size_images(models_dir):
    model = DetectorModel(str(models_dir / "detector_batched"))
    assert model.batchable
    images = [np.zeros((20, 30, 3), np.uint8)] * 3 + [np.zeros((10, 10, 3), np.uint8)]
    results = model.detect(images)
    assert [len(r.scores) for r in results] == [FAKE_NUM_DETECTIONS] * 4


def test_detector_handler_returns_one_result_per_image(models_dir):
    handler = ObjectDetectionModelHandler(str(models_dir / "detector"))
    model = handler.load_model()
    batch = [DecodedImage(f"img{i}", np.zeros((8, 8, 3), np.uint8)) for i in range(3)]
    results = list(handler.run_inference(batch, model))
    assert [r.example.path for r in results] == ["img0", "img1", "img2"]
    assert handler.get_num_bytes(batch) == 3 * 8 * 8 * 3
    assert handler.get_metrics_namespace() == "DetectObjects"


def test_detector_model_rejects_wrong_signature(tmp_path):
    import tensorflow as tf

    class NotADetector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"y": x * 2}

    module = NotADetector()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.serve})
    with pytest.raises(ValueError, match=r"input 'x' is float32 \[None, 4\]; supported: one"):
        DetectorModel(str(tmp_path / "m"))


def _region(color: tuple[int, int, int], index: int = 0, size: int = 16) -> Region:
    crop = np.zeros((size, size, 3), np.uint8)
    crop[:] = color
    return Region("img", index, (0.0, 0.0, 1.0, 1.0), 1, 0.9, crop)


def test_classifier_handler_known_answers_in_one_batch(models_dir):
    handler = KerasClassifierModelHandler(str(models_dir / "colors.keras"), batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    model = handler.load_model()
    assert (model.input_height, model.input_width, model.channels) == (16, 16, 3)
    assert model.num_classes == 3
    regions = [_region((255, 0, 0), 0), _region((0, 255, 0), 1), _region((0, 0, 255), 2),
               _region((0, 0, 255), 3, size=40)]  # a crop of another size is resized
    results = list(handler.run_inference(regions, model))
    assert [r.inference.class_id for r in results] == [0, 1, 2, 2]
    assert all(r.inference.confidence > 0.99 for r in results)
    assert [r.example.roi_index for r in results] == [0, 1, 2, 3]


def test_classifier_preprocess_mode_changes_the_answer(models_dir):
    # 'raw' feeds 0..255: mean red of 255 saturates the softmax even harder; 'symmetric' maps
    # 0 to -1, so a black crop gets equal logits.
    handler = KerasClassifierModelHandler(str(models_dir / "colors.keras"),
                                          preprocess_mode="symmetric")
    model = handler.load_model()
    black = list(handler.run_inference([_region((0, 0, 0))], model))[0].inference
    assert black.confidence == pytest.approx(1 / 3, abs=1e-5)


def test_classifier_model_loads_h5_and_savedmodel_exports(models_dir, tmp_path):
    import keras

    model = keras.models.load_model(str(models_dir / "colors.keras"))
    model.save(str(tmp_path / "colors.h5"))
    model.export(str(tmp_path / "exported"))
    crops = np.zeros((2, 16, 16, 3), np.float32)
    crops[0, ..., 1] = 1.0
    for path in (tmp_path / "colors.h5", tmp_path / "exported"):
        loaded = ClassifierModel(str(path))
        assert (loaded.input_height, loaded.num_classes) == (16, 3)
        assert np.argmax(loaded(crops), axis=1).tolist() == [1, 0]


def test_classifier_with_one_channel_gets_grey_crops(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([[10.0, -10.0]], np.float32), np.zeros(2)])
    model.save(str(tmp_path / "grey.keras"))
    handler = KerasClassifierModelHandler(str(tmp_path / "grey.keras"))
    loaded = handler.load_model()
    answers = [r.inference.class_id for r in handler.run_inference(
        [_region((255, 255, 255), size=8), _region((0, 0, 0), size=8)], loaded)]
    assert answers == [0, 0]  # white: logits (10, -10); black: (0, 0) -> argmax 0 by tie
    white = list(handler.run_inference([_region((255, 255, 255), size=8)], loaded))[0]
    assert white.inference.confidence > 0.99


def test_to_probabilities_passes_probabilities_and_softmaxes_logits():
    probs = np.array([[0.2, 0.8]], np.float32)
    np.testing.assert_allclose(to_probabilities(probs), probs)
    logits = np.array([[0.0, np.log(3.0)], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(to_probabilities(logits), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-5)
