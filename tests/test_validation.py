"""Fail fast: each configuration mistake stops the job before any work with one line saying
what to fix (exit code 2); reruns into the same --output; safe Keras loading."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import transforms.output_folder
from beam_pipeline.main import run
from beam_pipeline.options import DetectClassifyOptions
from beam_pipeline.planning import plan
from beam_pipeline.validation import ConfigError, validate
from tests.conftest import COLOR_LABELS, job_args, paint_image, write_png
from transforms.output_folder import SUCCESS_MARKER

pytestmark = pytest.mark.e2e  # runs the job, subprocesses or builds: the slow tier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A mistake must be reported in seconds: Python + Beam + TensorFlow imports and loading the two
# small models take a few seconds on 2 cores; no pipeline may start.
FAIL_FAST_SECONDS = 30


# -- Models with something wrong in them ----------------------------------------------------

def _save_module(path: str, fn=None) -> str:
    import tensorflow as tf

    module = tf.Module()
    if fn is None:
        tf.saved_model.save(module, path)  # no signatures at all
    else:
        module.fn = fn
        tf.saved_model.save(module, path, signatures={"serving_default": fn})
    return path


def _od_outputs(batch):
    import tensorflow as tf

    return {"detection_boxes": tf.zeros([batch, 1, 4]), "detection_scores": tf.zeros([batch, 1]),
            "detection_classes": tf.ones([batch, 1])}


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("bad_models")

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def float_input(input_tensor):
        return _od_outputs(1)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8),
                                  tf.TensorSpec([1], tf.float32)])
    def two_inputs(input_tensor, threshold):
        return _od_outputs(1)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def wrong_keys(input_tensor):
        return {"boxes": tf.zeros([1, 1, 4]), "scores": tf.zeros([1, 1])}

    _save_module(str(root / "no_signature"))
    _save_module(str(root / "float_input"), float_input)
    _save_module(str(root / "two_inputs"), two_inputs)
    _save_module(str(root / "wrong_keys"), wrong_keys)
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "readme.txt").write_text("weights go here\n")

    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)).save(
        str(root / "vector.keras"))
    inputs = keras.Input((16, 16, 3))
    doubled = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(doubled))
    keras.Model(inputs, outputs).save(str(root / "lambda.keras"))
    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs)).save(str(root / "per_pixel.keras"))
    (root / "labels4.txt").write_text("a\nb\nc\nd\n")
    (root / "latin1.txt").write_bytes("rouge\nvert\nbleu \xe9\n".encode("latin-1"))
    (root / "bad_map.pbtxt").write_text("this is not a label map\n")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid_images")
    for name in ("a.png", "b.png"):
        write_png(root / name, paint_image(("red", "green", "blue")))
    return root


def _validate(argv: list[str]):
    """The launcher's checks and plan, as main.run makes them (refusals from either)."""
    opts = PipelineOptions(argv).view_as(DetectClassifyOptions)
    return plan(opts, validate(opts))


def _refused(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        _validate(argv)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    return message


# -- Through the command line: exit code 2, one line, in seconds ------------------------------

def _cli(argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "beam_pipeline", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    return done, time.monotonic() - start


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The one line the job wrote about the mistake. TensorFlow and Beam may log their own
    start-up lines to stderr before it (they do not honour the log-level settings that early);
    the job's own report is exactly one ``error:`` line, and the last one."""
    lines = done.stderr.strip().splitlines()
    ours = [line for line in lines if line.startswith("error: ")]
    assert len(ours) == 1, done.stderr
    assert lines[-1] == ours[0]
    return ours[0]


@pytest.mark.parametrize("override, expected", [
    ({"detector_model": "/no/such/detector"},
     "--detector_model /no/such/detector does not exist; pass the path of your model"),
    ({"input": "/no/such/folder/*.jpg"},
     "--input /no/such/folder/*.jpg matches no files; check the path and pattern"),
    ({"input": "/no/such/list.txt"},
     "--input manifest /no/such/list.txt does not exist; check the path"),
])
def test_cli_refuses_before_any_work(override, expected, models_dir, images, tmp_path):
    output = tmp_path / "out"
    done, seconds = _cli(job_args(models_dir, images, output, **override))
    assert done.returncode == 2
    assert _error_line(done) == "error: " + expected
    assert seconds < FAIL_FAST_SECONDS
    assert not output.exists() or not any(output.iterdir())  # nothing written


def test_cli_refuses_labels_that_do_not_match_the_classifier(models_dir, bad_models, images,
                                                            tmp_path):
    done, seconds = _cli(job_args(models_dir, images, tmp_path / "out",
                                  classifier_labels=bad_models / "labels4.txt"))
    assert done.returncode == 2
    line = _error_line(done)
    assert "has 4 labels but the classifier has 3 outputs; give one label per output" in line
    assert seconds < FAIL_FAST_SECONDS


def test_cli_refuses_a_rerun_into_the_same_output(models_dir, images, tmp_path):
    output = tmp_path / "out"
    run(job_args(models_dir, images, output))
    assert (output / SUCCESS_MARKER).exists()
    done, seconds = _cli(job_args(models_dir, images, output))
    assert done.returncode == 2
    line = _error_line(done)
    assert "already holds a run's tables (finished: " in line and "pass --overwrite" in line
    assert seconds < FAIL_FAST_SECONDS


# -- validate() directly ----------------------------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("no_signature", ("has no 'serving_default' signature (found []); export it with the TF "
                      "Object Detection API exporter")),
    ("two_inputs", "side inputs are not supported; supported: exactly one input"),
    ("wrong_keys", ("lacks outputs ['detection_boxes', 'detection_scores', "
                    "'detection_classes']")),
    ("not_a_model", "is not a usable OD API SavedModel"),
])
def test_validate_refuses_a_detector_that_is_not_an_od_api_export(
        model, expected, models_dir, bad_models, images, tmp_path):
    message = _refused(job_args(models_dir, images, tmp_path / "out",
                                detector_model=bad_models / model))
    assert message.startswith(f"--detector_model {bad_models / model} is not a usable OD API")
    assert expected in message


@pytest.mark.parametrize("model, expected", [
    ("vector.keras", "classifier input is (None, 10); expected an image batch"),
    ("per_pixel.keras", "expected one row of class scores per image, [batch, classes]"),
    ("no_signature", "has no 'serving_default' signature"),
])
def test_validate_refuses_a_classifier_that_does_not_take_images(
        model, expected, models_dir, bad_models, images, tmp_path):
    message = _refused(job_args(models_dir, images, tmp_path / "out",
                                classifier_model=bad_models / model))
    assert "cannot be loaded as an image classifier" in message and expected in message


def test_validate_refuses_missing_classifier_and_labels(models_dir, images, tmp_path):
    assert "--classifier_model /nope.keras does not exist" in _refused(
        job_args(models_dir, images, tmp_path / "out", classifier_model="/nope.keras"))
    assert "--classifier_labels /nope.txt does not exist" in _refused(
        job_args(models_dir, images, tmp_path / "out", classifier_labels="/nope.txt"))
    assert "cannot be read as UTF-8 text" in _refused(
        job_args(models_dir, images, tmp_path / "out",
                 classifier_labels=images / "a.png"))  # a PNG is not a labels file


def test_validate_refuses_bad_label_map(models_dir, bad_models, images, tmp_path):
    message = _refused(job_args(models_dir, images, tmp_path / "out",
                                detector_label_map=bad_models / "bad_map.pbtxt"))
    assert "label map has no 'item { id: ... name: ... }' entries" in message


def test_validate_refuses_inputs_that_name_no_images(models_dir, images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("no images here\n")
    (tmp_path / "comments.txt").write_text("# only a comment\n\n")
    (tmp_path / "no_path_column.csv").write_text("file,label\na.png,x\n")
    out = tmp_path / "out"
    assert "has no image files" in _refused(job_args(models_dir, empty, out))
    assert "has no image files in it or its subfolders" in _refused(
        job_args(models_dir, tmp_path / "docs", out))
    assert "names no paths (only blank or # lines)" in _refused(
        job_args(models_dir, tmp_path / "comments.txt", out))
    assert "has no 'path' column" in _refused(
        job_args(models_dir, tmp_path / "no_path_column.csv", out))
    assert "--input is empty" in _refused(job_args(models_dir, " ", out))


def test_validate_refuses_an_output_that_cannot_be_written(models_dir, images, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    # Tests run as root, so mode bits cannot stop a write; a folder under a file can't exist.
    message = _refused(job_args(models_dir, images, blocker / "out"))
    assert "is not writable" in message and "choose another folder" in message


@pytest.mark.parametrize("flag, value", [
    ("min_score", 1.5), ("max_detections", 0), ("crop_padding", -0.1),
    ("classifier_batch_size", 0), ("max_image_pixels", 0), ("num_shards", -1),
])
def test_validate_refuses_out_of_range_numbers(flag, value, models_dir, images, tmp_path):
    assert f"--{flag}" in _refused(job_args(models_dir, images, tmp_path / "out",
                                            **{flag: value}))


# -- Safety: Keras safe mode ------------------------------------------------------------------

def test_lambda_layer_is_refused_unless_unsafe_deserialization(models_dir, bad_models, images,
                                                              tmp_path):
    argv = job_args(models_dir, images, tmp_path / "out",
                    classifier_model=bad_models / "lambda.keras")
    message = _refused(argv)
    assert "pass --unsafe_keras_deserialization if you trust it" in message
    config = _validate(argv + ["--unsafe_keras_deserialization"])
    assert config.classify.safe_mode is False and config.detect.crop_size == (16, 16)


# -- Reruns -----------------------------------------------------------------------------------

def _parquet_files(output) -> list[str]:
    return sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())


def test_rerun_needs_overwrite_and_a_mistake_keeps_the_earlier_tables(models_dir, images,
                                                                      tmp_path):
    output = tmp_path / "out"
    run(job_args(models_dir, images, output))
    first = _parquet_files(output)
    assert SUCCESS_MARKER in first and any(f.startswith("images/part-") for f in first)
    assert "pass --overwrite to replace them" in _refused(job_args(models_dir, images, output))
    assert "pass --overwrite to replace them" in _refused(
        job_args(models_dir, images, output, "--overwrite=false"))  # a template's explicit "no"
    # --overwrite with another mistake: refused, and the earlier run's tables are still there.
    _refused(job_args(models_dir, images, output, overwrite=True, detector_model="/nope"))
    assert _parquet_files(output) == first
    run(job_args(models_dir, images, output, overwrite=True))
    rows = ds.dataset(str(output / "images"), format="parquet").to_table()
    assert rows.num_rows == 2  # replaced, not appended


@pytest.mark.parametrize("commits", ["off", "default"])
def test_failed_run_leaves_no_tables_that_look_final(models_dir, images, tmp_path, monkeypatch,
                                                     commits):
    # A fault in the last step, after both tables are renamed into place (the fault checks
    # that they are) and before the success marker and the run record are written. Without
    # commits the tables are deleted; with them (the local default) what was committed is kept
    # and the rerun only writes the marker and the record.
    output = tmp_path / "out"
    extra = {"commit_every": 0} if commits == "off" else {}
    seen = []

    def fail_after_tables_are_written(_output):
        seen.extend(os.listdir(output / "detections") + os.listdir(output / "images"))
        raise RuntimeError("injected fault in MarkComplete")

    monkeypatch.setattr(transforms.output_folder, "write_success_marker",
                        fail_after_tables_are_written)
    with pytest.raises(Exception, match="injected fault in MarkComplete"):
        run(job_args(models_dir, images, output, **extra))
    assert len([name for name in seen if name.startswith("part-")]) == 2, seen
    leftovers = _parquet_files(output) if output.exists() else []
    if commits == "off":
        assert leftovers == []  # no part files, no temporary files, no success marker
    else:  # the commit and its files; nothing that says finished
        assert sorted(name.split("/")[0] for name in leftovers) == [
            "_commits", "detections", "images"], leftovers
    monkeypatch.undo()
    metrics = run(job_args(models_dir, images, output, **extra))  # a rerun needs no --overwrite
    if commits == "default":
        assert metrics["images_resumed"] == 2 and "images_read" not in metrics
    assert (output / SUCCESS_MARKER).exists()
    assert np.unique(ds.dataset(str(output / "images"), format="parquet").to_table()
                     .column("status").to_numpy(zero_copy_only=False)).tolist() == ["ok"]


def test_labels_are_the_classifiers_order(models_dir, images, tmp_path):
    config = _validate(job_args(models_dir, images, tmp_path / "out"))
    assert config.classify.labels == COLOR_LABELS


def test_check_output_names_an_unfinished_run(tmp_path):
    from beam_pipeline.output_checks import check_output

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "part-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match=r"already holds a run's tables \(unfinished, no "
                                          r"run.json: .*pass --overwrite"):
        check_output(str(tmp_path), overwrite=False)
    check_output(str(tmp_path), overwrite=True)  # allowed; nothing deleted before validation ends
    assert (tmp_path / "images" / "part-00000-of-00001.parquet").exists()


@pytest.mark.parametrize("flag", ["--min_scor=0.3", "--classifier_batchsize=8", "--runer=x"])
def test_misspelt_flag_is_refused_before_any_work(flag, tmp_path):
    from beam_pipeline.main import run

    with pytest.raises(ConfigError, match="unknown option"):
        run(["--input=nothing/*.png", f"--output={tmp_path / 'out'}", flag])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    ([], False), (["--overwrite"], True), (["--overwrite=true"], True),
    (["--overwrite=False"], False), (["--overwrite", "--min_score=0.2"], True)])
def test_on_off_flags_also_take_a_value(argv, expected):
    # A Flex Template launcher passes every parameter as --name=value.
    from beam_pipeline.options import DetectClassifyOptions

    options = DetectClassifyOptions(["--input=x", "--output=y", *argv])
    assert options.overwrite is expected
    assert DetectClassifyOptions(["--input=x", "--output=y", "--unsafe_keras_deserialization=true"]
                                 ).unsafe_keras_deserialization is True


def test_on_off_flag_with_a_value_that_is_not_true_or_false_is_an_error(capsys):
    from beam_pipeline.options import DetectClassifyOptions

    with pytest.raises(SystemExit):
        DetectClassifyOptions(["--input=x", "--output=y", "--overwrite=maybe"]).overwrite
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_output_that_is_a_file_is_refused_as_a_file(models_dir, images, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    message = _refused(job_args(models_dir, images, target))
    assert "is a file; --output names a folder" in message and "permission" not in message


def test_a_model_mistake_leaves_no_output_folder_behind(models_dir, images, tmp_path):
    output = tmp_path / "new" / "out"
    _refused(job_args(models_dir, images, output, detector_model=models_dir / "colors.keras"))
    assert not output.exists()
