"""Every OD API export variant: tiny SavedModels with the exporters' exact serving signatures.

The exports are the fake exporters of ``tests/fixtures/od_api.py``: the signatures of
research/object_detection/exporter_lib_v2.py (TF2) and exporter.py (TF1), each decoding its
input as the exporter does before the same colour detector, whose boxes depend on the pixels
it receives, so a wrong feed changes the rows.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from beam_pipeline.main import run
from tests.conftest import job_args, paint_image, read_table, write_png
from tests.fixtures import BuiltOnFirstUse
from tests.fixtures.od_api import (
    CLASSES,
    EXPORTS,
    SCORES,
    colour_detections,
    save_od_api_export,
    save_signature,
)
from transforms.decoding import decode_image, encode_png
from transforms.detection import (
    DetectorModel,
    parse_detections,
    recognise_input,
    tf_example_bytes,
)

# The fast tier reads every TF2 input type, the TF1 exporter's signature and the Hub outputs;
# the TF1 exporter's string inputs are built, recognised and read in the e2e tier, by the
# same tests.
FAST = set(EXPORTS) - {"tf1_encoded_image_string_tensor", "tf1_tf_example"}


def _variants(names) -> list:
    return [name if name in FAST else pytest.param(name, marks=pytest.mark.e2e)
            for name in names]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> BuiltOnFirstUse:
    root = tmp_path_factory.mktemp("exports")
    return BuiltOnFirstUse(EXPORTS, lambda name: save_od_api_export(str(root / name),
                                                                    EXPORTS[name]))


@pytest.fixture(scope="module")
def models(exports) -> BuiltOnFirstUse:
    """Each export loaded once; a test that patches a model's method undoes it after."""
    return BuiltOnFirstUse(exports, lambda name: DetectorModel(exports[name]))


def _exif_rotated_jpeg() -> bytes:
    """An upright scene stored turned 90 degrees clockwise, EXIF orientation 8 (turn it back)."""
    stored = np.ascontiguousarray(np.rot90(paint_image(("green", "blue", "red")), -1))
    exif = Image.Exif()
    exif[0x0112] = 8
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    deep = paint_image(("blue", "red", "green")).astype(np.uint16) * 257
    ok, encoded = cv2.imencode(".png", deep[..., ::-1].copy())
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def scene_files() -> dict[str, bytes]:
    return {"exif_rotated.jpg": _exif_rotated_jpeg(), "sixteen_bit.png": _sixteen_bit_png()}


@pytest.fixture(scope="module")
def scene(scene_files) -> list[np.ndarray]:
    """What the job decodes: a painted image, the EXIF JPEG upright, the 16-bit PNG in 8 bits,
    and a painted image as a non-contiguous view into a larger array."""
    larger = np.zeros((120, 230, 3), np.uint8)
    larger[7:107, 11:211] = paint_image(("red", "blue", "green"))
    view = larger[7:107, 11:211]
    assert not view.flags["C_CONTIGUOUS"]
    return [paint_image(("red", "green", "blue")),
            *(decode_image(data) for data in scene_files.values()), view]


def _same(found, expected) -> bool:
    return (found.error is None and expected.error is None
            and found.classes.tolist() == expected.classes.tolist()
            and np.array_equal(found.scores, expected.scores)
            and np.allclose(found.boxes, expected.boxes, atol=1e-6))


@pytest.fixture(scope="module")
def baseline(models, scene) -> list:
    return models["image_tensor"].detect(scene)


def _load_signature(path: str):
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"]


def _parse(outputs: dict, index: int = 0):
    return parse_detections({key: value.numpy() for key, value in outputs.items()}, index)


# -- Recognising and feeding each export --------------------------------------------------------

@pytest.mark.parametrize("name", _variants(EXPORTS))
def test_detector_model_recognises_export(name, models):
    spec = EXPORTS[name]
    model = models[name]
    assert model.input_type == spec.input_type
    assert model.batchable == (spec.batch is None)
    assert model.input_key == ("inputs" if spec.tf1 else "input_tensor")
    line = model.describe()
    assert line.startswith(f"OD API {spec.input_type}: ")
    assert f"'{model.input_key}'" in line and "\n" not in line
    assert ("free batch" if spec.batch is None else "batch of 1") in line


def test_uint8_baseline_finds_the_painted_boxes_upright(baseline):
    # Known answers, so the comparisons below are against something right.
    painted, upright_jpeg, deep, view = baseline
    np.testing.assert_allclose(painted.boxes, [[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.9],
                                               [0.0, 0.6, 0.2, 1.0]], atol=1e-6)
    assert painted.scores.tolist() == pytest.approx(SCORES)
    assert painted.classes.tolist() == list(CLASSES)  # padding past num_detections gone
    # EXIF applied: green is box A of the upright image, blue box B, red box C.
    np.testing.assert_allclose(upright_jpeg.boxes[1], [0.1, 0.1, 0.4, 0.3], atol=0.011)
    np.testing.assert_allclose(upright_jpeg.boxes[2], [0.5, 0.5, 0.9, 0.9], atol=0.011)
    np.testing.assert_allclose(deep.boxes[2], [0.1, 0.1, 0.4, 0.3], atol=1e-6)
    np.testing.assert_allclose(view.boxes[0], [0.1, 0.1, 0.4, 0.3], atol=1e-6)


@pytest.mark.parametrize("name", _variants(name for name in EXPORTS if name != "image_tensor"))
def test_detector_model_gives_the_uint8_answers(name, models, scene, baseline):
    found = models[name].detect(scene)
    assert [_same(f, b) for f, b in zip(found, baseline)] == [True] * len(scene)


@pytest.mark.parametrize("name", ["float_image_tensor_batch", "tf_example_batch",
                                  "encoded_image_string_tensor_batch", "tf1_image_tensor"])
def test_free_batch_export_stacks_same_size_images(name, models, scene, baseline, monkeypatch):
    model = models[name]
    calls = []
    call = model._call
    monkeypatch.setattr(model, "_call", lambda images: calls.append(len(images)) or call(images))
    found = model.detect(scene)
    assert calls == [len(scene)]  # all four are 100x200
    assert all(_same(f, b) for f, b in zip(found, baseline))


def test_detect_fails_only_the_image_a_model_rejects(models, scene, baseline):
    bad = np.zeros((10, 10, 4), np.uint8)  # not what the contract allows: caught, not raised
    found = models["tf_example_batch"].detect([bad, scene[0]])
    assert "RGB uint8" in found[0].error
    assert _same(found[1], baseline[0])


# -- A wrong feed would have been caught --------------------------------------------------------

def test_float_export_finds_nothing_when_fed_0_to_1(exports, scene, baseline):
    fn = _load_signature(exports["float_image_tensor"])
    wrong = _parse(fn(input_tensor=scene[0][np.newaxis].astype(np.float32) / 255.0))
    assert wrong.scores.max() == 0.0 and baseline[0].scores.min() > 0.5


def test_encoded_export_sees_the_stored_jpeg_sideways(exports, scene_files, baseline):
    # The file's own bytes skip OpenCV's EXIF turn: the job sends the decoded pixels instead.
    import tensorflow as tf

    fn = _load_signature(exports["encoded_image_string_tensor"])
    raw = tf.constant([scene_files["exif_rotated.jpg"]])
    assert not _same(_parse(fn(input_tensor=raw)), baseline[1])


def test_encoded_export_tells_bgr_from_rgb(exports, scene, baseline):
    import tensorflow as tf

    ok, bgr = cv2.imencode(".png", scene[0])  # RGB pixels written as if they were BGR
    assert ok
    fn = _load_signature(exports["encoded_image_string_tensor"])
    assert not _same(_parse(fn(input_tensor=tf.constant([bgr.tobytes()]))), baseline[0])
    right = _parse(fn(input_tensor=tf.constant([encode_png(scene[0])])))
    assert _same(right, baseline[0])


@pytest.mark.parametrize("change, value", [
    ("image/format", b"jpeg"), ("image/height", 99), ("image/width", 201)])
def test_tf_example_export_refuses_a_wrong_feature(change, value, exports, scene):
    import tensorflow as tf

    example = tf.train.Example.FromString(tf_example_bytes(scene[0]))
    feature = example.features.feature[change]
    if isinstance(value, bytes):
        feature.bytes_list.value[:] = [value]
    else:
        feature.int64_list.value[:] = [value]
    fn = _load_signature(exports["tf_example"])
    assert _parse(fn(input_tensor=tf.constant([tf_example_bytes(scene[0])]))).scores.max() > 0
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(input_tensor=tf.constant([example.SerializeToString()]))


def test_tf_example_bytes_holds_the_decoder_features(scene):
    import tensorflow as tf

    features = tf.train.Example.FromString(tf_example_bytes(scene[3])).features.feature
    assert features["image/format"].bytes_list.value == [b"png"]
    assert (features["image/height"].int64_list.value,
            features["image/width"].int64_list.value) == ([100], [200])
    png = features["image/encoded"].bytes_list.value[0]
    np.testing.assert_array_equal(decode_image(png), scene[3])  # lossless, RGB order kept


# -- Outputs ------------------------------------------------------------------------------------

class _NotAnArray:
    def __array__(self, *args, **kwargs):
        raise AssertionError("an extra output was converted to numpy")


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_parse_detections_takes_float_or_int_classes_and_count(dtype):
    outputs = {
        "detection_boxes": np.zeros((2, 3, 4), np.float32),
        "detection_scores": np.full((2, 3), 0.5, np.float32),
        "detection_classes": np.array([[1, 2, 3], [4, 5, 6]], dtype),
        "num_detections": np.array([3, 2], dtype),
        "detection_masks": _NotAnArray(),
        "raw_detection_boxes": _NotAnArray(),
    }
    assert parse_detections(outputs, 1).classes.tolist() == [4, 5]
    assert parse_detections(outputs, 0).classes.dtype == np.int32


# -- Refusals -----------------------------------------------------------------------------------

def _specs(*specs):
    import tensorflow as tf

    return {name: tf.TensorSpec(shape, getattr(tf, dtype)) for name, dtype, shape in specs}


def _no_ops() -> set[str]:
    return set()


@pytest.mark.parametrize("specs, expected", [
    ([], "takes no inputs; supported: one input: uint8 or float32"),
    ([("input_tensor", "uint8", [1, None, None, 3]), ("side_inp", "float32", [1])],
     ("takes 2 inputs ('input_tensor' is uint8 [1, None, None, 3], 'side_inp' is float32 [1])"
      ": side inputs are not supported; supported: exactly one input, the images")),
    ([(f"in{i}", "uint8", [1]) for i in range(4)],
     "takes 4 inputs ('in0' is uint8 [1], 'in1' is uint8 [1], 'in2' is uint8 [1], ...): side"),
    ([("input_tensor", "uint8", [1, None, None, 1])],
     ("input 'input_tensor' is uint8 [1, None, None, 1]: 1-channel images; supported: "
      "3-channel RGB")),
    ([("input_tensor", "float32", [None, None, None, 4])], "4-channel images"),
    ([("input_tensor", "int32", [1, None, None, 3])],
     ("input 'input_tensor' is int32 [1, None, None, 3]: dtype int32 is not supported; "
      "supported: uint8 or float32 images, or string")),
    ([("input_tensor", "float16", [1, None, None, 3])], "dtype float16 is not supported"),
    ([("input_tensor", "uint8", [8, None, None, 3])],
     "a fixed batch of 8; supported: batch 1 or free"),
    ([("input_tensor", "uint8", [1, 320, 320, 3])], "a fixed image size; supported: any"),
    ([("input_tensor", "uint8", [None, None, 3])], "is uint8 [None, None, 3]; supported: one"),
    ([("input_tensor", "string", [1, 1])], "is string [1, 1]; supported: string [batch]"),
    ([("input_tensor", "string", [None])], "neither decodes images nor parses tf.train.Example"),
])
def test_recognise_input_refuses_what_it_cannot_feed(specs, expected):
    with pytest.raises(ValueError) as caught:
        recognise_input(_specs(*specs), _no_ops)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_recognise_input_needs_the_graph_only_for_strings():
    def no_graph() -> set[str]:
        raise AssertionError("graph read for an image tensor")

    found = recognise_input(_specs(("inputs", "uint8", [None, None, None, None])), no_graph)
    assert (found.input_type, found.batchable) == ("image_tensor", True)


def test_detector_model_refuses_side_inputs_one_channel_and_file_names(tmp_path):
    import tensorflow as tf

    def outputs(batch=1):
        return colour_detections(tf.zeros([batch, 4, 4, 3]))

    side = save_signature(str(tmp_path / "side"), [
        tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor"),
        tf.TensorSpec([1], tf.float32, name="side_inp")], lambda image, side_inp: outputs())
    grey = save_signature(str(tmp_path / "grey"), [
        tf.TensorSpec([1, None, None, 1], tf.uint8)], lambda input_tensor: outputs())
    paths = save_signature(str(tmp_path / "paths"), [tf.TensorSpec([None], tf.string)],
                            lambda input_tensor: outputs() | {
                                "num_detections": tf.cast(tf.strings.length(input_tensor),
                                                          tf.float32)})
    for path, expected in ((side, "side inputs are not supported"),
                           (grey, "1-channel images; supported: 3-channel RGB"),
                           (paths, "neither decodes images nor parses tf.train.Example")):
        with pytest.raises(ValueError) as caught:
            DetectorModel(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: 'serving_default' ") and expected in message
        assert len(message) <= 300  # the launcher prints the first 300 characters


# -- The real job: every export writes the rows of the uint8 export ------------------------------

@pytest.fixture(scope="module")
def job_images(tmp_path_factory, scene_files):
    root = tmp_path_factory.mktemp("export_images")
    write_png(root / "painted.png", paint_image(("red", "green", "blue")))
    for name, data in scene_files.items():
        (root / name).write_bytes(data)
    return root


# What a row says of its image (not which run or model wrote it).
ROW_CONTENT = ("image_path", "roi_index", "box_ymin", "box_xmin", "box_ymax", "box_xmax",
               "detector_class_id", "detector_label", "detector_score", "class_id", "label",
               "confidence")


def _job_rows(models_dir, job_images, output, detector: str) -> list[dict]:
    run(job_args(models_dir, job_images, output, f"--detector_model={detector}"))
    images = read_table(output, "images")
    assert [(row["status"], row["num_detections"]) for row in images] == [("ok", 3)] * 3
    rows = read_table(output, "detections")
    assert {row["detector_model"] for row in rows} == {detector}
    return [{key: row[key] for key in ROW_CONTENT} for row in rows]


@pytest.fixture(scope="module")
def uint8_rows(models_dir, job_images, exports, tmp_path_factory) -> list[dict]:
    rows = _job_rows(models_dir, job_images, tmp_path_factory.mktemp("uint8") / "out",
                     exports["image_tensor"])
    assert len(rows) == 9
    # Red, green, blue by score; the classifier names each colour the detector found.
    assert [row["label"] for row in rows] == ["red", "green", "blue"] * 3
    red = next(row for row in rows if row["image_path"].endswith(".jpg"))
    box = (red["box_ymin"], red["box_xmin"], red["box_ymax"], red["box_xmax"])
    assert box == pytest.approx((0, 120, 20, 200), abs=2)  # box C of the upright image
    return rows


@pytest.mark.e2e
@pytest.mark.parametrize("name", [name for name in EXPORTS if name != "image_tensor"])
def test_job_writes_the_uint8_rows_for_export(name, models_dir, job_images, exports, uint8_rows,
                                              tmp_path):
    rows = _job_rows(models_dir, job_images, tmp_path / "out", exports[name])
    assert rows == uint8_rows
