"""Validation's loaded detector is handed to an in-process handler once, never stale."""

from __future__ import annotations

import os

from transforms.detection import DetectorModel, ObjectDetectionModelHandler
from transforms.model_files import keep_loaded, take_loaded


def test_take_loaded_hands_over_once(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"v1")
    model = object()
    keep_loaded("kind", str(path), model)
    assert take_loaded("kind", str(path)) is model
    assert take_loaded("kind", str(path)) is None


def test_take_loaded_refuses_changed_files(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"v1")
    keep_loaded("kind", str(path), object())
    path.write_bytes(b"version 2")
    os.utime(path, ns=(1, 1))
    assert take_loaded("kind", str(path)) is None


def test_detector_handler_reuses_the_validated_model(models_dir):
    path = str(models_dir / "detector")
    validated = DetectorModel(path)
    handler = ObjectDetectionModelHandler(path)
    assert handler.load_model() is validated
    assert handler.load_model() is not validated  # handed over once; later loads are fresh
