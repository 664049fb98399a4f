"""Model handlers with small real models built in fixtures."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import FAKE_BOXES, FAKE_NUM_DETECTIONS, FAKE_SCORES, paint_image
from transforms.classification import (
    ClassifierModel,
    KerasClassifierModelHandler,
    to_probabilities,
)
from transforms.detection import DetectorModel, ObjectDetectionModelHandler, parse_detections
from transforms.records import DecodedImage, ImageRegions, Region


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


def _region(color: tuple[int, int, int] | None, index: int = 0, size: int = 16) -> Region:
    crop = None
    if color is not None:
        crop = np.zeros((size, size, 3), np.uint8)
        crop[:] = color
    return Region("img", index, (0.0, 0.0, 1.0, 1.0), 1, 0.9, crop)


def _image(*regions: Region, path: str = "img") -> ImageRegions:
    return ImageRegions(path, 100, 100, tuple(regions))


def _answers(handler, model, *regions: Region) -> list:
    (result,) = handler.run_inference([_image(*regions)], model)
    return list(result.inference)


def test_classifier_handler_known_answers_in_one_batch(models_dir):
    handler = KerasClassifierModelHandler(str(models_dir / "colors.keras"), batch_size=8)
    kwargs = handler.batch_elements_kwargs()
    assert (kwargs["min_batch_size"], kwargs["max_batch_size"]) == (8, 8)
    model = handler.load_model()
    assert (model.input_height, model.input_width, model.channels) == (16, 16, 3)
    assert model.num_classes == 3
    first = _image(_region((255, 0, 0), 0), _region((0, 255, 0), 1), path="a")
    # A crop of another size is resized; a region without a crop is not classified.
    second = _image(_region((0, 0, 255), 0), _region(None, 1),
                    _region((0, 0, 255), 2, size=40), path="b")
    results = list(handler.run_inference([first, second], model))
    assert [r.example.image_path for r in results] == ["a", "b"]
    first_answers, second_answers = (r.inference for r in results)
    assert [a.class_id for a in first_answers] == [0, 1]
    assert second_answers[1] is None
    assert [second_answers[0].class_id, second_answers[2].class_id] == [2, 2]
    assert all(a.confidence > 0.99 for a in first_answers)


def test_classifier_batches_weigh_images_by_their_crops(models_dir):
    # Beam batches whole images; a batch of 8 holds about 8 crops, not 8 images.
    handler = KerasClassifierModelHandler(str(models_dir / "colors.keras"), batch_size=8)
    size = handler.batch_elements_kwargs()["element_size_fn"]
    assert size(_image(*[_region((1, 2, 3), i) for i in range(5)])) == 5
    assert size(_image(_region(None, 0), _region((1, 2, 3), 1))) == 1
    assert size(_image(_region(None, 0))) == 1  # nothing to classify still takes a place
    with beam.Pipeline(runner="FnApiRunner",
                       options=PipelineOptions(["--input=x", "--output=x"])) as pipeline:
        images = [_image(*[_region((255, 0, 0), i) for i in range(3)], path=f"p{n}")
                  for n in range(6)]
        batches = (pipeline | beam.Create(images)
                   | beam.BatchElements(**handler.batch_elements_kwargs())
                   | beam.Map(lambda batch: sum(len(image.regions) for image in batch)))
        assert_that(batches, equal_to([6, 6, 6]))  # 18 crops: 2 images (6 crops) per batch


def test_classifier_splits_an_image_with_more_crops_than_a_batch(models_dir):
    handler = KerasClassifierModelHandler(str(models_dir / "colors.keras"), batch_size=2)
    model = handler.load_model()
    answers = _answers(handler, model, *[_region((0, 255, 0), i) for i in range(5)])
    assert [a.class_id for a in answers] == [1] * 5


def test_classifier_preprocess_mode_changes_the_answer(models_dir):
    # 'raw' feeds 0..255: mean red of 255 saturates the softmax even harder; 'symmetric' maps
    # 0 to -1, so a black crop gets equal logits.
    handler = KerasClassifierModelHandler(str(models_dir / "colors.keras"),
                                          preprocess_mode="symmetric")
    model = handler.load_model()
    (black,) = _answers(handler, model, _region((0, 0, 0)))
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
    answers = _answers(handler, loaded, _region((255, 255, 255), size=8),
                       _region((0, 0, 0), size=8))
    assert [a.class_id for a in answers] == [0, 0]  # white: (10, -10); black: (0, 0), a tie
    assert answers[0].confidence > 0.99


def test_to_probabilities_passes_probabilities_and_softmaxes_logits():
    probs = np.array([[0.2, 0.8]], np.float32)
    np.testing.assert_allclose(to_probabilities(probs), probs)
    logits = np.array([[0.0, np.log(3.0)], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(to_probabilities(logits), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-5)
