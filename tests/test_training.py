"""The detector trainer: exact target augmentation and a seconds-long end-to-end smoke run."""

import json
import os

import numpy as np
import pytest

from training import detector
from training.train_detector import augment_batch


class _Coins:
    """Stands in for ``numpy.random.Generator`` so that each symmetry can be chosen."""

    def __init__(self, flips):
        self._flips = list(flips)

    def random(self):
        return 0.0 if self._flips.pop(0) else 1.0


def _transform(box, size, hflip, vflip, transpose):
    x, y, w, h = box
    if hflip:
        x = size - x - w
    if vflip:
        y = size - y - h
    if transpose:
        x, y, w, h = y, x, h, w
    return [x, y, w, h]


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_augment_batch_matches_targets_of_transformed_boxes(hflip, vflip, transpose):
    size = 64
    rng = np.random.default_rng(7)
    # Float boxes: no centre falls exactly on a cell boundary, where the cell is a tie.
    boxes = [[float(v) for v in (rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(3, 20),
                                 rng.uniform(3, 20))] for _ in range(4)]
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    heat, reg, mask = detector.make_targets([{"bbox": b} for b in boxes], size, size)

    x, h, r, m = augment_batch(image[None], heat[None], reg[None], mask[None],
                               _Coins([hflip, vflip, transpose]))

    moved = [{"bbox": _transform(b, size, hflip, vflip, transpose)} for b in boxes]
    want_heat, want_reg, want_mask = detector.make_targets(moved, size, size)
    np.testing.assert_array_equal(m[0], want_mask)
    np.testing.assert_allclose(h[0], want_heat, atol=1e-6)
    np.testing.assert_allclose(r[0], want_reg, atol=1e-5)
    want_image = image[:, ::-1] if hflip else image
    want_image = want_image[::-1] if vflip else want_image
    want_image = want_image.transpose(1, 0, 2) if transpose else want_image
    np.testing.assert_array_equal(x[0], want_image)
    assert all(a.flags["C_CONTIGUOUS"] for a in (x, h, r, m))


@pytest.mark.e2e
def test_train_detector_smoke_exports_od_api_signature(tmp_path):
    import tensorflow as tf

    from training import train_detector

    out = tmp_path / "det"
    train_detector.main(["--output", str(out), "--num_images", "16", "--size", "64",
                         "--epochs", "1", "--batch_size", "8", "--base", "8"])
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_images"] == 16 and summary["parameters"] > 0
    assert "id: 1" in (out / "label_map.pbtxt").read_text()
    fn = tf.saved_model.load(os.fspath(out / "saved_model")).signatures["serving_default"]
    result = fn(input_tensor=tf.zeros([1, 70, 90, 3], tf.uint8))
    assert result["detection_boxes"].shape == (1, detector.MAX_DETECTIONS, 4)
    assert result["detection_classes"].dtype == tf.float32
    assert result["num_detections"].shape == (1,)


def test_choose_threshold_takes_the_highest_within_tolerance():
    from training.calibrate_threshold import choose_threshold

    sweep = [{"min_score": 0.1, "ap50": 0.93}, {"min_score": 0.2, "ap50": 0.926},
             {"min_score": 0.3, "ap50": 0.924}, {"min_score": 0.4, "ap50": 0.93},
             {"min_score": 0.5, "ap50": 0.80}]
    # 0.4 is within 0.005 of 0.93 again after a dip below it at 0.3: the highest one wins.
    assert choose_threshold(sweep, 0.93, tolerance=0.005)["min_score"] == 0.4
    assert choose_threshold(sweep[:3], 0.93, tolerance=0.005)["min_score"] == 0.2
    assert choose_threshold(sweep[:3], 0.93, tolerance=0.01)["min_score"] == 0.3
    with pytest.raises(ValueError, match="no threshold"):
        choose_threshold(sweep[4:], 0.93, tolerance=0.005)


def test_sweep_scores_the_rows_above_each_threshold():
    import pyarrow as pa

    from training.calibrate_threshold import sweep
    from transforms.records import DETECTIONS_SCHEMA, DetectionRow

    # Four images with one defect each; the detections of images 0 and 1 score 0.9, those of
    # images 2 and 3 score 0.3, and image 3's is a background false positive besides.
    coco = {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100}
                       for i in range(4)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                             "bbox": [10.0, 10.0, 20.0, 20.0], "area": 400.0}
                            for i in range(4)],
            "categories": [{"id": 1, "name": "particle"}]}

    def row(image, score, label="particle", box=(10.0, 10.0, 30.0, 30.0)):
        return DetectionRow(f"/in/{image}.png", 0, *box, 1, None, score, 0, label, 0.9,
                            "det", "cls").to_dict()

    rows = [row(0, 0.9), row(1, 0.9), row(2, 0.3), row(3, 0.3),
            row(3, 0.2, label="background", box=(60.0, 60.0, 90.0, 90.0))]
    table = pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)
    low, high = sweep(table, coco, [0.25, 0.5])
    assert (low["min_score"], low["rows"], low["recall"]) == (0.25, 4, 1.0)
    assert low["ap50"] == pytest.approx(1.0)
    assert (high["rows"], high["recall"]) == (2, 0.5)
    assert high["ap50"] == pytest.approx(51 / 101, abs=0.01)  # precision 1 up to recall 0.5
    assert low["classifier_label_accuracy"] == 1.0


@pytest.mark.parametrize("seed", [1, 2, 1000, 2000, 3000, 10002])
def test_calibrate_refuses_training_and_evaluation_seeds(seed):
    from training.calibrate_threshold import calibrate

    with pytest.raises(ValueError, match="training or evaluation seed"):
        calibrate(detector_model="unused", classifier_model="unused",
                  classifier_labels="unused", seed=seed, num_images=1)


@pytest.mark.e2e
def test_train_classifier_smoke_writes_a_safe_mode_model_and_summary(tmp_path):
    import keras

    from training import train_classifier

    out = tmp_path / "cls"
    train_classifier.main(["--output", str(out), "--num_images", "4", "--val_images", "2",
                           "--epochs", "1", "--batch_size", "16"])
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_images"] == 4 and summary["train_crops"] > 0
    assert summary["parameters"] > 0 and summary["train_seconds"] > 0
    assert (out / "labels.txt").read_text().split() == train_classifier.LABELS
    model = keras.models.load_model(os.fspath(out / "classifier.keras"), safe_mode=True)
    assert tuple(model.output_shape) == (None, len(train_classifier.LABELS))
