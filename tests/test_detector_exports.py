"""Every OD API export variant: tiny SavedModels with the exporters' exact serving signatures.

Signatures as written by research/object_detection/exporter_lib_v2.py (TF2; batch 1 in older
copies, free batch for all but image_tensor in newer ones) and exporter.py (TF1: key 'inputs',
free batch). Each fixture decodes its input as the exporter does and runs the same colour
detector, whose boxes depend on the pixels it receives, so a wrong feed changes the rows.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from beam_pipeline.main import run
from tests.conftest import job_args, paint_image, read_table, write_png
from transforms.decoding import decode_image
from transforms.detection import (
    DetectorModel,
    encode_png,
    parse_detections,
    recognise_input,
    tf_example_bytes,
)

# Scores of the red, green and blue boxes; detector classes of each (1-based, as exported).
COLOUR_SCORES = (0.9, 0.8, 0.7)
COLOUR_CLASSES = (1, 2, 1)
# name: (exporter --input_type, batch dimension, TF1 exporter, integer outputs and extras)
EXPORTS = {
    "image_tensor": ("image_tensor", 1, False, False),
    "float_image_tensor": ("float_image_tensor", 1, False, False),
    "float_image_tensor_batch": ("float_image_tensor", None, False, False),
    "encoded_image_string_tensor": ("encoded_image_string_tensor", 1, False, False),
    "encoded_image_string_tensor_batch": ("encoded_image_string_tensor", None, False, False),
    "tf_example": ("tf_example", 1, False, False),
    "tf_example_batch": ("tf_example", None, False, False),
    "tf1_image_tensor": ("image_tensor", None, True, False),
    "tf1_encoded_image_string_tensor": ("encoded_image_string_tensor", None, True, False),
    "tf1_tf_example": ("tf_example", None, True, False),
    "hub_image_tensor_int_outputs": ("image_tensor", 1, False, True),
}


def _colour_detections(images, *, hub: bool = False) -> dict:
    """OD API outputs for float32 ``[b, H, W, 3]`` images in 0..255: the box of each pure red,
    green and blue area (score 0 when absent), then a padding entry past num_detections."""
    import tensorflow as tf

    high, low = images >= 200.0, images <= 55.0
    masks = tf.stack([high[..., c] & low[..., (c + 1) % 3] & low[..., (c + 2) % 3]
                      for c in range(3)], axis=-1)  # [b, H, W, colour]
    shape = tf.shape(images)

    def span(hits, size):  # bool [b, n, colour] -> first and one-past-last index, normalized
        hits = tf.cast(hits, tf.int32)
        first = tf.argmax(hits, axis=1, output_type=tf.int32)
        end = size - tf.argmax(tf.reverse(hits, [1]), axis=1, output_type=tf.int32)
        size = tf.cast(size, tf.float32)
        return tf.cast(first, tf.float32) / size, tf.cast(end, tf.float32) / size

    rows = tf.reduce_any(masks, axis=2)
    ymin, ymax = span(rows, shape[1])
    xmin, xmax = span(tf.reduce_any(masks, axis=1), shape[2])
    found = tf.reduce_any(rows, axis=1)
    batch = shape[0]

    def tiled(values, dtype=tf.float32):
        values = tf.constant(values, dtype)
        return tf.tile(values[tf.newaxis], [batch] + [1] * len(values.shape))

    boxes = tf.where(found[..., tf.newaxis], tf.stack([ymin, xmin, ymax, xmax], -1), 0.0)
    outputs = {
        "detection_boxes": tf.concat([boxes, tiled([[0.2, 0.2, 0.3, 0.3]])], axis=1),
        "detection_scores": tf.concat(
            [tf.where(found, tiled(COLOUR_SCORES), 0.0), tiled([0.99])], axis=1),
        "detection_classes": tiled([*COLOUR_CLASSES, 5]),
        "num_detections": tf.fill([batch], 3.0),
    }
    if hub:  # TF Hub model cards: integer classes and count, and more outputs than we read
        outputs["detection_classes"] = tiled([*COLOUR_CLASSES, 5], tf.int64)
        outputs["num_detections"] = tf.fill([batch], 3)
        outputs["detection_masks"] = tf.zeros([batch, 4, 33, 33])
        outputs["detection_keypoints"] = tf.zeros([batch, 4, 17, 2])
        outputs["detection_anchor_indices"] = tf.zeros([batch, 4])
        outputs["raw_detection_boxes"] = tf.zeros([batch, 10, 4])
        outputs["raw_detection_scores"] = tf.zeros([batch, 10, 3])
    return outputs


def _decode_image(encoded):  # exporter_lib_v2._decode_image
    import tensorflow as tf

    image = tf.image.decode_image(encoded, channels=3)
    image.set_shape((None, None, 3))
    return image


def _decode_tf_example(serialized):
    """TfExampleDecoder's image features and defaults; stricter than it on format and size, so
    a wrong ``image/format``, ``image/height`` or ``image/width`` fails the call."""
    import tensorflow as tf

    features = tf.io.parse_single_example(serialized, {
        "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
        "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=1),
        "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=1),
    })
    image = _decode_image(features["image/encoded"])
    size = tf.cast(tf.shape(image)[:2], tf.int64)
    with tf.control_dependencies([
            tf.debugging.assert_equal(features["image/format"], "png"),
            tf.debugging.assert_equal(size, tf.stack([features["image/height"],
                                                      features["image/width"]]))]):
        return tf.identity(image)


def _images(input_type: str, inputs):
    import tensorflow as tf

    if input_type in ("image_tensor", "float_image_tensor"):
        return tf.cast(inputs, tf.float32)
    decode = _decode_image if input_type == "encoded_image_string_tensor" else _decode_tf_example
    return tf.cast(tf.map_fn(decode, inputs, fn_output_signature=tf.uint8), tf.float32)


def _input_spec(input_type: str, batch, name: str):
    import tensorflow as tf

    if input_type in ("image_tensor", "float_image_tensor"):
        dtype = tf.uint8 if input_type == "image_tensor" else tf.float32
        return tf.TensorSpec([batch, None, None, 3], dtype, name=name)
    return tf.TensorSpec([batch], tf.string, name=name)


def _save_tf2(path: str, input_type: str, batch, hub: bool) -> None:
    import tensorflow as tf

    module = tf.Module()
    module.__call__ = tf.function(
        lambda input_tensor: _colour_detections(_images(input_type, input_tensor), hub=hub),
        input_signature=[_input_spec(input_type, batch, "input_tensor")])
    tf.saved_model.save(module, path, signatures=module.__call__.get_concrete_function())


def _save_tf1(path: str, input_type: str) -> None:
    """exporter.py: a placeholder named after the input type, signature key 'inputs'."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        spec = _input_spec(input_type, None, input_type)
        placeholder = v1.placeholder(spec.dtype, spec.shape, name=input_type)
        outputs = _colour_detections(_images(input_type, placeholder))
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"inputs": info(placeholder)},
            outputs={key: info(tf.identity(value, name=key)) for key, value in outputs.items()},
            method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": signature})
            builder.save()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exports")
    paths = {}
    for name, (input_type, batch, tf1, hub) in EXPORTS.items():
        paths[name] = str(root / name)
        if tf1:
            _save_tf1(paths[name], input_type)
        else:
            _save_tf2(paths[name], input_type, batch, hub)
    return paths


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
def baseline(exports, scene) -> list:
    return DetectorModel(exports["image_tensor"]).detect(scene)


def _load_signature(path: str):
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"]


def _parse(outputs: dict, index: int = 0):
    return parse_detections({key: value.numpy() for key, value in outputs.items()}, index)


# -- Recognising and feeding each export --------------------------------------------------------

@pytest.mark.parametrize("name", EXPORTS)
def test_detector_model_recognises_export(name, exports):
    input_type, batch, tf1, _ = EXPORTS[name]
    model = DetectorModel(exports[name])
    assert model.input_type == input_type
    assert model.batchable == (batch is None)
    assert model.input_key == ("inputs" if tf1 else "input_tensor")
    line = model.describe()
    assert line.startswith(f"OD API {input_type}: ")
    assert f"'{model.input_key}'" in line and "\n" not in line
    assert ("free batch" if batch is None else "batch of 1") in line


def test_uint8_baseline_finds_the_painted_boxes_upright(baseline):
    # Known answers, so the comparisons below are against something right.
    painted, upright_jpeg, deep, view = baseline
    np.testing.assert_allclose(painted.boxes, [[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.9],
                                               [0.0, 0.6, 0.2, 1.0]], atol=1e-6)
    assert painted.scores.tolist() == pytest.approx(COLOUR_SCORES)
    assert painted.classes.tolist() == list(COLOUR_CLASSES)  # padding past num_detections gone
    # EXIF applied: green is box A of the upright image, blue box B, red box C.
    np.testing.assert_allclose(upright_jpeg.boxes[1], [0.1, 0.1, 0.4, 0.3], atol=0.011)
    np.testing.assert_allclose(upright_jpeg.boxes[2], [0.5, 0.5, 0.9, 0.9], atol=0.011)
    np.testing.assert_allclose(deep.boxes[2], [0.1, 0.1, 0.4, 0.3], atol=1e-6)
    np.testing.assert_allclose(view.boxes[0], [0.1, 0.1, 0.4, 0.3], atol=1e-6)


@pytest.mark.parametrize("name", [name for name in EXPORTS if name != "image_tensor"])
def test_detector_model_gives_the_uint8_answers(name, exports, scene, baseline):
    found = DetectorModel(exports[name]).detect(scene)
    assert [_same(f, b) for f, b in zip(found, baseline)] == [True] * len(scene)


@pytest.mark.parametrize("name", ["float_image_tensor_batch", "tf_example_batch",
                                  "encoded_image_string_tensor_batch", "tf1_image_tensor"])
def test_free_batch_export_stacks_same_size_images(name, exports, scene, baseline, monkeypatch):
    model = DetectorModel(exports[name])
    calls = []
    call = model._call
    monkeypatch.setattr(model, "_call", lambda images: calls.append(len(images)) or call(images))
    found = model.detect(scene)
    assert calls == [len(scene)]  # all four are 100x200
    assert all(_same(f, b) for f, b in zip(found, baseline))


def test_detect_fails_only_the_image_a_model_rejects(exports, scene, baseline):
    bad = np.zeros((10, 10, 4), np.uint8)  # not what the contract allows: caught, not raised
    found = DetectorModel(exports["tf_example_batch"]).detect([bad, scene[0]])
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


def _save_signature(path: str, specs, body) -> str:
    import tensorflow as tf

    module = tf.Module()
    module.__call__ = tf.function(body, input_signature=specs)
    tf.saved_model.save(module, path, signatures=module.__call__.get_concrete_function())
    return path


def test_detector_model_refuses_side_inputs_one_channel_and_file_names(tmp_path):
    import tensorflow as tf

    def outputs(batch=1):
        return _colour_detections(tf.zeros([batch, 4, 4, 3]))

    side = _save_signature(str(tmp_path / "side"), [
        tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor"),
        tf.TensorSpec([1], tf.float32, name="side_inp")], lambda image, side_inp: outputs())
    grey = _save_signature(str(tmp_path / "grey"), [
        tf.TensorSpec([1, None, None, 1], tf.uint8)], lambda input_tensor: outputs())
    paths = _save_signature(str(tmp_path / "paths"), [tf.TensorSpec([None], tf.string)],
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
