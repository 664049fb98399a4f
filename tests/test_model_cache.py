"""The models the launcher's checks load are reused by the handlers in the same process, only
for the same files and options, and dropped when the run ends."""

from __future__ import annotations

import os

import pytest

from tests.conftest import job_args
from transforms import model_cache
from transforms.classification import KerasClassifierModelHandler
from transforms.detection import ObjectDetectionModelHandler


@pytest.fixture(autouse=True)
def _empty():
    model_cache.forget()
    yield
    model_cache.forget()


def test_reuse_needs_the_same_files_and_options(tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"index")
    held = object()
    model_cache.keep("detector", str(model), held, box_format="normalized")
    assert model_cache.reuse("detector", str(model), box_format="normalized") is held
    assert model_cache.reuse("detector", str(model), box_format="pixels") is None
    assert model_cache.reuse("classifier", str(model), box_format="normalized") is None
    # Saved again at the same path: another model, never the kept one.
    index = model / "variables" / "variables.index"
    index.write_bytes(b"other")
    os.utime(index, ns=(1, 1))
    assert model_cache.reuse("detector", str(model), box_format="normalized") is None
    model_cache.keep("detector", str(model), held, box_format="normalized")
    model_cache.forget()
    assert model_cache.reuse("detector", str(model), box_format="normalized") is None


def test_a_missing_path_is_never_kept(tmp_path):
    model_cache.keep("classifier", str(tmp_path / "gone.keras"), object(), safe_mode=True)
    assert model_cache.reuse("classifier", str(tmp_path / "gone.keras"), safe_mode=True) is None


def test_handlers_reuse_what_the_checks_loaded_in_this_process(models_dir, image_dir, tmp_path):
    from beam_pipeline.main import _configure

    _, config = _configure(job_args(models_dir, image_dir, tmp_path / "out"))
    detect, classify = config.detect, config.classify
    detector = ObjectDetectionModelHandler(detect.detector_model,
                                           box_format=detect.box_format).load_model()
    classifier = KerasClassifierModelHandler(classify.classifier_model,
                                             safe_mode=classify.safe_mode).load_model()
    assert detector is model_cache.reuse("detector", detect.detector_model,
                                         box_format=detect.box_format)
    assert classifier is model_cache.reuse("classifier", classify.classifier_model,
                                           safe_mode=classify.safe_mode)
    # Asked with other options (a convention not proven here), the handler loads its own.
    other = ObjectDetectionModelHandler(detect.detector_model, box_format="pixels").load_model()
    assert other is not detector and other.box_format == "pixels"
    model_cache.forget()
    assert ObjectDetectionModelHandler(detect.detector_model,
                                       box_format=detect.box_format).load_model() is not detector


def test_a_run_forgets_its_models_when_it_ends(models_dir, image_dir, tmp_path, monkeypatch):
    from beam_pipeline import main

    seen = []

    def execute(options, config, **kwargs):
        seen.append(model_cache.reuse("detector", config.detect.detector_model,
                                      box_format=config.detect.box_format))
        raise RuntimeError("stopped here")

    monkeypatch.setattr(main, "_execute", execute)
    argv = job_args(models_dir, image_dir, tmp_path / "out", "--direct_running_mode=in_memory")
    with pytest.raises(RuntimeError, match="stopped here"):
        main.run(argv)
    assert seen[0] is not None  # in process: the checks' model is there for the pipeline
    detect = seen[0]
    assert model_cache.reuse("detector", f"{models_dir}/detector",
                             box_format=detect.box_format) is None
