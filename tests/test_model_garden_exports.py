"""TF Model Garden detection exports, and no export's boxes ever read in the wrong units.

The exports are the fake exporters of ``tests/fixtures/model_garden.py``: the exact signatures
of tf-models-official 2.20.0's ``export_inference_graph`` (input ``inputs``, ``image_info``
output, int32 classes and count by default), boxes in the pixels of the frame the export
resizes to keeping the aspect ratio, exactly as its ``resize_and_crop_image`` computes it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from beam_pipeline.main import run
from beam_pipeline.validation import ConfigError
from tests.conftest import job_args, read_table, write_png
from tests.fixtures import BuiltOnFirstUse
from tests.fixtures.model_garden import (
    CLASSES,
    EXPORTS,
    SCORES,
    paint,
    save_model_garden_export,
    save_pixel_box_detector,
)
from transforms import box_formats
from transforms.box_formats import (
    IMAGE_INFO,
    NORMALIZED,
    PIXELS,
    box_range_problem,
    decide_box_format,
    to_normalized,
)
from transforms.detection import MODEL_GARDEN, DetectorModel
from transforms.tiles import TilingConfig, detect_tiled

# Normalized boxes of the painted colours, in score order (red, green, blue).
PAINTED = {"red": (0.1, 0.1, 0.4, 0.35), "green": (0.5, 0.5, 0.9, 0.9),
           "blue": (0.05, 0.6, 0.3, 0.95)}
SHAPES = {"square": (120, 120), "landscape": (100, 200), "portrait": (200, 100)}
TWIN = "mg_retinanet_image_tensor_normalized"
# The RetinaNet exports that share the twin's frame, so their rows must be the twin's.
SAME_FRAME = [name for name, spec in EXPORTS.items()
              if spec.model == "retinanet" and name != TWIN]
MG_INPUT_TYPES = {"image_tensor": "image_tensor", "image_bytes": "encoded_image_string_tensor",
                  "tf_example": "tf_example"}
# The fast tier reads one export of each model kind and input tensor, and the ones named by
# its tests; the other variants (image_bytes, float outputs, Mask R-CNN on tf_example, Faster
# R-CNN) are built, recognised and read in the e2e tier, by the same tests.
FAST = {"mg_retinanet_image_tensor", TWIN, "mg_retinanet_image_tensor_batch",
        "mg_retinanet_tf_example_batch", "mg_maskrcnn_image_tensor"}


def _variants(names) -> list:
    return [name if name in FAST else pytest.param(name, marks=pytest.mark.e2e)
            for name in names]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> BuiltOnFirstUse:
    root = tmp_path_factory.mktemp("model_garden")

    def build(name: str) -> str:
        if name == "pixels_no_image_info":
            return save_pixel_box_detector(str(root / "pixels"))
        if name == "pixels_mid_run":
            return save_pixel_box_detector(str(root / "mid_run"), normalized_up_to_width=150)
        return save_model_garden_export(str(root / name), EXPORTS[name])

    return BuiltOnFirstUse([*EXPORTS, "pixels_no_image_info", "pixels_mid_run"], build)


@pytest.fixture(scope="module")
def models(exports) -> BuiltOnFirstUse:
    def load(name: str) -> DetectorModel:
        model = DetectorModel(exports[name])
        if name.startswith("mg_"):
            model.prove_box_format()
        return model

    return BuiltOnFirstUse(exports, load)


@pytest.fixture(scope="module")
def scenes() -> dict[str, np.ndarray]:
    return {name: paint(height, width, PAINTED) for name, (height, width) in SHAPES.items()}


def _tolerance(spec, height: int, width: int) -> float:
    """One frame pixel in the image's pixels, and one more for the resize's blended edges."""
    scale = min(spec.input_size[0] / height, spec.input_size[1] / width)
    return 1.0 / scale + 1.0


# -- Recognised and read --------------------------------------------------------------------

@pytest.mark.parametrize("name", _variants(EXPORTS))
def test_detector_model_recognises_model_garden_export(name, models):
    spec, model = EXPORTS[name], models[name]
    assert (model.family, model.input_key) == (MODEL_GARDEN, "inputs")
    assert model.input_type == MG_INPUT_TYPES[spec.input_type]
    assert model.batchable == (spec.batch is None)
    assert model.box_format == (NORMALIZED if spec.normalized else IMAGE_INFO)
    line = model.describe()
    assert line.startswith(f"Model Garden {spec.input_type}: ") and "'inputs'" in line
    assert line.endswith("mapped with image_info (proved by the probe)" if not spec.normalized
                         else "boxes normalized to the image (proved by the probe)")


def test_describe_names_the_example_of_the_issue(models):
    assert models["mg_retinanet_image_tensor"].describe() == (
        "Model Garden image_tensor: uint8 [1, None, None, 3] 'inputs', batch of 1; fed the "
        "decoded RGB pixels; boxes in resized-frame pixels, mapped with image_info (proved by "
        "the probe)")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", _variants(EXPORTS))
def test_model_garden_export_finds_the_painted_boxes(name, shape, models, scenes):
    found = models[name].detect([scenes[shape]])[0]
    height, width = SHAPES[shape]
    assert found.error is None
    assert found.classes.tolist() == list(CLASSES)  # int32 or float, padding entry gone
    assert found.scores.tolist() == pytest.approx(SCORES)
    scale = np.array([height, width, height, width])
    np.testing.assert_allclose(found.boxes * scale, np.array(list(PAINTED.values())) * scale,
                               atol=_tolerance(EXPORTS[name], height, width))


@pytest.mark.parametrize("name", _variants(SAME_FRAME))
def test_pixel_export_reads_as_its_normalized_twin(name, models, scenes):
    shapes = list(scenes.values())
    twin = models[TWIN].detect(shapes)
    for found, expected in zip(models[name].detect(shapes), twin):
        np.testing.assert_allclose(found.boxes, expected.boxes, rtol=0, atol=1e-6)
        assert found.scores.tolist() == expected.scores.tolist()


def test_image_info_scale_is_not_the_naive_ratio(exports, models, scenes):
    # 100x200 into an 80x80 frame: the aspect ratio is kept, scale 0.4 on both axes, so the
    # naive 80/100 for y would put every box twice too low.
    import tensorflow as tf

    fn = tf.saved_model.load(exports["mg_retinanet_image_tensor"]).signatures["serving_default"]
    outputs = fn(inputs=tf.constant(scenes["landscape"][np.newaxis]))
    info = outputs["image_info"].numpy()[0]
    np.testing.assert_allclose(info, [[100, 200], [80, 80], [0.4, 0.4], [0, 0]])
    pixels = outputs["detection_boxes"].numpy()[0, :3]
    naive = pixels / np.array([80, 80, 80, 80]) * np.array([100, 200, 100, 200])
    right = models["mg_retinanet_image_tensor"].detect([scenes["landscape"]])[0].boxes
    assert not np.allclose(naive / np.array([100, 200, 100, 200]), right, atol=0.05)


def test_free_batch_export_reads_each_image_with_its_own_image_info(models, scenes,
                                                                   monkeypatch):
    model = models["mg_retinanet_image_tensor_batch"]
    calls = []
    call = model._call
    monkeypatch.setattr(model, "_call", lambda images, **kw: calls.append(len(images))
                        or call(images, **kw))
    landscape = scenes["landscape"]
    other = paint(100, 200, {"red": (0.6, 0.6, 0.9, 0.9)})
    found = model.detect([landscape, other, landscape])
    assert calls == [3]
    np.testing.assert_allclose(found[0].boxes, found[2].boxes)
    np.testing.assert_allclose(found[1].boxes[0], [0.6, 0.6, 0.9, 0.9], atol=0.03)


def test_tiled_detection_reads_each_tile_with_its_image_info(models):
    image = paint(200, 300, PAINTED)
    tiling = TilingConfig(tile_size=96, overlap=0.25, batch_size=4)
    for name in ("mg_retinanet_image_tensor", "mg_retinanet_image_tensor_batch"):
        tiled = detect_tiled(models[name], image, tiling)
        twin = detect_tiled(models[TWIN], image, tiling)
        assert tiled.error is None
        np.testing.assert_allclose(tiled.boxes, twin.boxes, rtol=0, atol=1e-6)
        assert tiled.scores.tolist() == twin.scores.tolist()
    assert len(twin.scores) >= 3


# -- The probe and the run-time check ----------------------------------------------------------

def test_probe_refuses_pixel_boxes_without_image_info(exports):
    model = DetectorModel(exports["pixels_no_image_info"])
    with pytest.raises(ValueError) as caught:
        model.prove_box_format()
    message = str(caught.value)
    assert message.startswith("probe inference on a 96x128 generated image: detection_boxes has ")
    assert "outside normalized coordinates [0, 1]" in message
    assert "pass --detector_box_format=pixels" in message and "\n" not in message


def test_stated_pixels_read_pixel_boxes(exports, scenes):
    model = DetectorModel(exports["pixels_no_image_info"], box_format=PIXELS)
    assert model.prove_box_format() == PIXELS
    assert model.describe().endswith("boxes in pixels of the image (stated, checked by the probe)")
    found = model.detect([scenes["portrait"]])[0]
    np.testing.assert_allclose(found.boxes, list(PAINTED.values()), atol=1e-6)


def test_stated_convention_that_the_probe_contradicts_is_refused(exports):
    model = DetectorModel(exports["mg_retinanet_image_tensor"], box_format=NORMALIZED)
    with pytest.raises(ValueError, match="outside normalized coordinates .*leave "
                                         "--detector_box_format=auto"):
        model.prove_box_format()
    twin = DetectorModel(exports[TWIN], box_format=IMAGE_INFO)
    with pytest.raises(ValueError, match="they look normalized"):
        twin.prove_box_format()
    with pytest.raises(ValueError, match="has no image_info output"):
        DetectorModel(exports["pixels_no_image_info"], box_format=IMAGE_INFO)


def test_probe_without_boxes_keeps_the_default_and_run_time_refuses_misread(
        exports, scenes, monkeypatch):
    # A trained detector may find nothing on the probe: the probe cannot refuse, the
    # exporter's default (resized-frame pixels) stays, and a normalized export is then caught
    # image by image instead of written as tiny boxes in the corner.
    monkeypatch.setattr("transforms.detector_model.probe_image",
                        lambda: np.full((96, 128, 3), 128, np.uint8))
    model = DetectorModel(exports[TWIN])
    assert model.prove_box_format() == IMAGE_INFO
    assert model.describe().endswith(
        "(the exporter's default; the probe image gave no boxes, checked at run time)")
    found = model.detect([scenes["square"]])[0]
    assert found.error.startswith("every detection_boxes value lies within [-1, 2]")
    assert "they look normalized; pass --detector_box_format=normalized" in found.error
    assert model.detect([np.full((50, 60, 3), 128, np.uint8)])[0].error is None  # no boxes


def test_detector_that_turns_to_pixels_fails_those_images(exports, scenes):
    model = DetectorModel(exports["pixels_mid_run"])
    assert model.prove_box_format() == NORMALIZED  # the 128-wide probe gets normalized boxes
    narrow, wide = model.detect([scenes["portrait"], scenes["landscape"]])
    assert narrow.error is None
    assert wide.error.startswith("detection_boxes has 190, more than one frame size outside "
                                 "normalized coordinates [0, 1] (boxes read as normalized")


# -- The conventions, on numbers -------------------------------------------------------------

def test_to_normalized_divides_by_the_scale_then_the_original_size():
    info = np.array([[300, 400], [512, 512], [1.28, 1.28], [0, 0]], np.float32)
    boxes = np.array([[128, 256, 384, 512], [0, 0, 400, 600]], np.float32)
    np.testing.assert_allclose(to_normalized(boxes, IMAGE_INFO, 300, 400, info),
                               [[1 / 3, 0.5, 1.0, 1.0], [0, 0, 1, 1]], atol=1e-6)
    np.testing.assert_allclose(to_normalized(boxes[:1], PIXELS, 384, 512),
                               [[1 / 3, 0.5, 1.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("boxes, box_format, problem", [
    ([[0.1, 0.1, 0.5, 2.0]], NORMALIZED, None),              # overshoot: clipped later
    ([[0.1, 0.1, 0.5, 2.5]], NORMALIZED, "has 2.5, more than one frame size outside"),
    ([[np.nan, 0, np.inf, 1]], NORMALIZED, None),            # left to select_regions
    ([[10, 20, 50, 60]], PIXELS, None),
    ([[0, 0, 0, 0]], PIXELS, None),                          # no area: nothing to judge
    ([[0.1, 0.2, 0.5, 0.6]], PIXELS, "they look normalized"),
    ([[10, 20, 50, 300]], PIXELS, "has 300, more than one frame size outside pixels of this "
                                  "100x100 image"),
])
def test_box_range_problem(boxes, box_format, problem):
    found = box_range_problem(np.array(boxes, np.float32), box_format, 100, 100)
    assert found is None if problem is None else problem in found


def test_image_info_convention_needs_a_well_formed_image_info():
    with pytest.raises(ValueError, match=r"image_info is \[2, 2\] per image"):
        box_range_problem(np.zeros((1, 4)), IMAGE_INFO, 10, 10, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not positive"):
        to_normalized(np.zeros((1, 4)), IMAGE_INFO, 10, 10, np.zeros((4, 2)))


@pytest.mark.parametrize("has_image_info, boxes, expected", [
    (False, None, (NORMALIZED, "as OD API exports give; the probe call failed, checked at run "
                               "time")),
    (True, np.zeros((0, 4)), (IMAGE_INFO, "the exporter's default; the probe image gave no "
                                          "boxes, checked at run time")),
    (True, np.array([[5.0, 5.0, 60.0, 70.0]]), (IMAGE_INFO, "proved by the probe")),
    (True, np.array([[0.05, 0.05, 0.6, 0.7]]), (NORMALIZED, "proved by the probe")),
])
def test_decide_box_format(has_image_info, boxes, expected):
    info = np.array([[96, 128], [80, 80], [0.625, 0.625], [0, 0]])
    assert decide_box_format("auto", has_image_info=has_image_info, boxes=boxes, height=96,
                             width=128, image_info=info) == expected


def test_probe_image_has_colour_to_find():
    image = box_formats.probe_image()
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert {tuple(pixel) for pixel in image.reshape(-1, 3)} >= {(255, 0, 0), (0, 255, 0),
                                                                 (0, 0, 255)}


# -- The real job ------------------------------------------------------------------------------

ROW_CONTENT = ("image_path", "roi_index", "box_ymin", "box_xmin", "box_ymax", "box_xmax",
               "detector_class_id", "detector_label", "detector_score", "class_id", "label",
               "confidence")


@pytest.fixture(scope="module")
def job_images(tmp_path_factory, scenes):
    root = tmp_path_factory.mktemp("mg_images")
    for name, image in scenes.items():
        write_png(root / f"{name}.png", image)
    return root


def _job_rows(models_dir, images, output, detector: str, *extra) -> list[dict]:
    run(job_args(models_dir, images, output, f"--detector_model={detector}", *extra))
    assert [(row["status"], row["num_detections"]) for row in read_table(output, "images")] == [
        ("ok", 3)] * len(SHAPES)
    return [{key: row[key] for key in ROW_CONTENT} for row in read_table(output, "detections")]


@pytest.fixture(scope="module")
def twin_rows(models_dir, job_images, exports, tmp_path_factory) -> list[dict]:
    rows = _job_rows(models_dir, job_images, tmp_path_factory.mktemp("twin") / "out",
                     exports[TWIN])
    assert [row["label"] for row in rows] == ["red", "green", "blue"] * len(SHAPES)
    for row in rows:
        height, width = SHAPES[row["image_path"].rsplit("/", 1)[1][:-4]]
        want = np.array(PAINTED[row["label"]]) * [height, width, height, width]
        box = [row["box_ymin"], row["box_xmin"], row["box_ymax"], row["box_xmax"]]
        np.testing.assert_allclose(box, want, atol=_tolerance(EXPORTS[TWIN], height, width))
    return rows


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["mg_retinanet_image_tensor", "mg_retinanet_tf_example_batch",
                                  "mg_retinanet_float_outputs"])
def test_job_writes_the_normalized_twins_rows(name, models_dir, job_images, exports,
                                              twin_rows, tmp_path, capsys):
    capsys.readouterr()
    rows = _job_rows(models_dir, job_images, tmp_path / "out", exports[name])
    assert rows == twin_rows
    summary = capsys.readouterr().out
    assert f"detector: Model Garden {EXPORTS[name].input_type}: " in summary
    assert "boxes in resized-frame pixels, mapped with image_info (proved by the probe)" in summary
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "mapped with image_info" in record["models"]["detector"]["signature"]


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["mg_maskrcnn_image_tensor", "mg_fasterrcnn_image_bytes_batch"])
def test_job_reads_mask_and_faster_rcnn_boxes(name, models_dir, job_images, exports, twin_rows,
                                              tmp_path):
    rows = _job_rows(models_dir, job_images, tmp_path / "out", exports[name])
    assert [row["label"] for row in rows] == [row["label"] for row in twin_rows]
    for row, twin in zip(rows, twin_rows):
        height, width = SHAPES[row["image_path"].rsplit("/", 1)[1][:-4]]
        box = [row[k] for k in ("box_ymin", "box_xmin", "box_ymax", "box_xmax")]
        want = np.array(PAINTED[row["label"]]) * [height, width, height, width]
        np.testing.assert_allclose(box, want, atol=_tolerance(EXPORTS[name], height, width))


@pytest.mark.e2e
def test_job_with_tiles_writes_the_normalized_twins_rows(models_dir, job_images, exports,
                                                         tmp_path):
    tiles = ("--tile_size=64", "--tile_overlap=0.25")
    rows = _job_rows(models_dir, job_images, tmp_path / "pixels",
                     exports["mg_retinanet_image_tensor"], *tiles)
    assert rows == _job_rows(models_dir, job_images, tmp_path / "twin", exports[TWIN], *tiles)


@pytest.mark.e2e
def test_job_refuses_pixel_boxes_without_image_info(models_dir, job_images, exports, tmp_path):
    detector = exports["pixels_no_image_info"]
    with pytest.raises(ConfigError) as caught:
        run(job_args(models_dir, job_images, tmp_path / "out", f"--detector_model={detector}"))
    message = str(caught.value)
    assert message.startswith(f"--detector_model {detector}: probe inference on a 96x128 "
                              "generated image: detection_boxes has ")
    assert "pass --detector_box_format=pixels" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    run(job_args(models_dir, job_images, tmp_path / "stated", f"--detector_model={detector}",
                 "--detector_box_format=pixels"))
    assert len(read_table(tmp_path / "stated", "detections")) == 3 * len(SHAPES)


@pytest.mark.e2e
def test_job_turns_boxes_past_the_convention_into_error_rows(models_dir, job_images, exports,
                                                             tmp_path):
    output = tmp_path / "out"
    run(job_args(models_dir, job_images, output,
                 f"--detector_model={exports['pixels_mid_run']}"))
    images = {row["image_path"].rsplit("/", 1)[1]: row for row in read_table(output, "images")}
    # The 100- and 120-wide images get normalized boxes, the 200-wide one pixel boxes...
    assert [images[name]["status"] for name in ("portrait.png", "square.png")] == ["ok", "ok"]
    row = images["landscape.png"]
    assert (row["status"], row["error_stage"], row["num_detections"]) == ("error", "detect", 0)
    assert row["error"].startswith("detection_boxes has 190, more than one frame size outside "
                                   "normalized coordinates [0, 1] (boxes read as normalized")
    # ...which are never written as rows.
    assert {row["image_path"].rsplit("/", 1)[1] for row in read_table(output, "detections")} == {
        "portrait.png", "square.png"}
    record = json.loads((output / "run.json").read_text())
    assert record["counts"]["errors_by_stage"]["detect"] == 1
