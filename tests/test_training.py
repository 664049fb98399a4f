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
