"""Bad inputs and bad model output: the job never crashes and never loses an image.

A corpus of odd, broken and hostile inputs is generated here (nothing is downloaded) and run
end to end with the fake models of conftest; each file gets an expected status (and stage).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from collections.abc import Callable
from typing import Optional

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from beam_pipeline.main import run
from tests.conftest import COLOR_LABELS, IMAGE_HEIGHT, IMAGE_WIDTH, job_args, paint_image
from transforms.decoding import DecodeError, decode_image
from transforms.detection import parse_detections
from transforms.reading import FAILED_TAG, ReadAndDecodeFn

pytestmark = pytest.mark.e2e  # runs the job, subprocesses or builds: the slow tier

COLORS = ("red", "green", "blue")  # boxes A, B, C of the fake detector, in score order
# Pixel boxes A, B, C in the upright 100x200 image (C clipped at the right edge).
EXPECTED_BOXES = [(10.0, 20.0, 40.0, 60.0), (50.0, 100.0, 90.0, 180.0), (0.0, 120.0, 20.0, 200.0)]
ROOT_CAN_READ_ANYTHING = os.geteuid() == 0


# -- Generators: each writes one file (or non-file) at ``path``. -------------------------------

def _painted() -> np.ndarray:
    return paint_image(COLORS)


def _cv2_bytes(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_bomb() -> bytes:
    """A PNG whose (CRC-correct) header claims 100000x100000 pixels; the data is 1x1."""
    small = _cv2_bytes(".png", np.zeros((1, 1, 3), np.uint8))
    ihdr = struct.pack(">II", 100_000, 100_000) + small[24:29]
    return small[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + small[33:]


def _tiff_bomb() -> bytes:
    """A little-endian TIFF whose first IFD claims 100000x100000 pixels."""
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 8), (277, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", *entry) for entry in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _exif_rotated() -> bytes:
    """The upright image stored rotated 90 degrees counter-clockwise, with EXIF orientation 6
    (rotate 90 clockwise to display): decoded, it must come out upright again."""
    stored = np.ascontiguousarray(np.rot90(_painted(), 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _pil_bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


def _bytes(make: Callable[[], bytes]) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(make())
    return write


def _unreadable(path: str) -> None:
    _bytes(lambda: _cv2_bytes(".png", _painted()))(path)
    os.chmod(path, 0)


def _vanished(path: str) -> None:
    _bytes(lambda: _cv2_bytes(".png", _painted()))(path)
    os.remove(path)  # listed in the manifest, gone before the job reads it


def _fifo(path: str) -> None:
    os.mkfifo(path)  # opening it for reading would block forever


def _folder(path: str) -> None:
    os.mkdir(path)


def _dangling_symlink(path: str) -> None:
    os.symlink(path + ".missing-target", path)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[str], None]
    status: str
    stage: Optional[str] = None
    message: str = ""  # must appear in the error (a person must be able to act on it)
    size: Optional[tuple[int, int]] = (IMAGE_WIDTH, IMAGE_HEIGHT)  # (width, height) when ok
    colors: bool = False  # the three regions must be classified red, green, blue
    # Regions kept: the fake detector's fixed boxes, for an image padded to the detector's
    # minimum side (MIN_DETECTOR_SIDE), lie in the padding and are dropped.
    regions: int = 3


def _ok(name: str, make: Callable[[], bytes], *, size=(IMAGE_WIDTH, IMAGE_HEIGHT),
        colors: bool = True, regions: int = 3) -> Case:
    return Case(name, _bytes(make), "ok", size=size, colors=colors, regions=regions)


def _error(name: str, write: Callable[[str], None], stage: str, message: str) -> Case:
    return Case(name, write, "error", stage, message, size=None)


def _png() -> bytes:
    return _cv2_bytes(".png", _painted())


def _jpeg() -> bytes:
    return _cv2_bytes(".jpg", _painted(), (cv2.IMWRITE_JPEG_QUALITY, 95))


CASES = [
    # Odd but valid: processed, in the upright orientation, 8-bit RGB.
    _ok("plain.png", _png),
    _ok("really a png.jpg", _png),  # wrong extension: decoded by content
    _ok("gray.png", lambda: _cv2_bytes(".png", cv2.cvtColor(_painted(), cv2.COLOR_RGB2GRAY)),
        colors=False),
    _ok("sixteen_bit.png", lambda: _cv2_bytes(".png", _painted().astype(np.uint16) * 257)),
    _ok("rgba.png", lambda: _cv2_bytes(".png", np.dstack(
        [_painted(), np.full((IMAGE_HEIGHT, IMAGE_WIDTH), 90, np.uint8)]))),
    _ok("palette.png", lambda: _pil_bytes(Image.fromarray(_painted()).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG")),
    _ok("cmyk.jpg", lambda: _pil_bytes(Image.fromarray(_painted()).convert("CMYK"), "JPEG",
                                       quality=95)),
    _ok("progressive.jpg", lambda: _pil_bytes(Image.fromarray(_painted()), "JPEG", quality=95,
                                              progressive=True)),
    _ok("exif_rotated.jpg", _exif_rotated),
    _ok("lzw.tiff", lambda: _pil_bytes(Image.fromarray(_painted()), "TIFF",
                                       compression="tiff_lzw")),
    _ok("palette.gif", lambda: _pil_bytes(Image.fromarray(_painted()).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=8), "GIF")),
    # Tiny: padded for the detector, detected, ok (tests/test_hostile.py: the bundled models).
    _ok("one_pixel.png", lambda: _cv2_bytes(".png", np.zeros((1, 1, 3), np.uint8)),
        size=(1, 1), colors=False, regions=0),
    _ok("one_by_5000.png", lambda: _cv2_bytes(".png", np.zeros((5000, 1, 3), np.uint8)),
        size=(1, 5000), colors=False, regions=0),
    _ok("5000_by_one.png", lambda: _cv2_bytes(".png", np.zeros((1, 5000, 3), np.uint8)),
        size=(5000, 1), colors=False, regions=1),
    _ok("nine_by_17.png", lambda: _cv2_bytes(".png", np.zeros((9, 17, 3), np.uint8)),
        size=(17, 9), colors=False, regions=1),
    _ok("spaces and ünïcödé 日本.png", _png),
    # Broken or hostile: one error row each, with the stage and a reason.
    _error("empty.png", _bytes(lambda: b""), "decode", "file is empty"),
    _error("truncated.jpg", _bytes(lambda: _jpeg()[:len(_jpeg()) // 2]), "decode",
           "truncated or corrupt JPEG"),
    _error("truncated.png", _bytes(lambda: _png()[:len(_png()) // 2]), "decode",
           "truncated or corrupt PNG"),
    _error("notes.jpg", _bytes(lambda: b"shot list for lot 7\nwafer 3: re-image\n"), "decode",
           "not a supported image format (it looks like text)"),
    _error("report.png", _bytes(lambda: b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
                                b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"), "decode",
           "it looks like a PDF document"),
    _error("bomb.png", _bytes(_png_bomb), "decode",
           "100000x100000 = 10000000000 pixels, over the limit of 100000000"),
    _error("bomb.tiff", _bytes(_tiff_bomb), "decode", "TIFF header says 100000x100000"),
    _error("vanished.png", _vanished, "read", "file not found"),
    _error("pipe.png", _fifo, "read", "not a regular file"),
    _error("folder.jpg", _folder, "read", "it is a folder"),
    _error("dangling.png", _dangling_symlink, "read", "symbolic link"),
    # Mode 000. Root reads a file whatever its mode bits say, so run as root (as here) the
    # file is processed, which is the honest outcome; as any other user it is a read error.
    (Case("no_permission.png", _unreadable, "ok", colors=True) if ROOT_CAN_READ_ANYTHING else
     _error("no_permission.png", _unreadable, "read", "permission denied")),
]
CASES_BY_NAME = {case.name: case for case in CASES}


def _read(output, table: str) -> list[dict]:
    return ds.dataset(str(output / table), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus folder and a manifest naming every case, plus duplicate lines."""
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    for case in CASES:
        case.write(str(images / case.name))
    lines = [str(images / case.name) for case in CASES]
    # Duplicates: the same file again, also by paths relative to the manifest's folder.
    lines += [str(images / "plain.png"), "images/plain.png", "./images/../images/plain.png",
              "# a comment", ""]
    (root / "manifest.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def manifest_run(models_dir, corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("corpus_out") / "out"
    metrics = run(job_args(models_dir, corpus / "manifest.txt", output, classifier_batch_size=8))
    return output, metrics


def test_corpus_every_path_exactly_once(corpus, manifest_run):
    output, metrics = manifest_run
    paths = [row["image_path"] for row in _read(output, "images")]
    assert sorted(paths) == sorted(str(corpus / "images" / case.name) for case in CASES)
    assert metrics["images_read"] == len(CASES)
    errors = [case for case in CASES if case.status == "error"]
    failed = sum(metrics.get(f"images_failed_{stage}", 0) for stage in ("read", "decode"))
    assert failed == len(errors)


@pytest.mark.parametrize("name", list(CASES_BY_NAME))
def test_corpus_file_outcome(name, corpus, manifest_run, models_dir):
    case = CASES_BY_NAME[name]
    output, _ = manifest_run
    path = str(corpus / "images" / name)
    (row,) = [row for row in _read(output, "images") if row["image_path"] == path]
    assert (row["status"], row["error_stage"]) == (case.status, case.stage), row["error"]
    detections = sorted((d for d in _read(output, "detections") if d["image_path"] == path),
                        key=lambda d: d["roi_index"])
    if case.status == "error":
        assert case.message in row["error"]
        assert (row["width"], row["height"], row["num_detections"]) == (None, None, 0)
        assert detections == []
        return
    assert row["error"] is None
    assert (row["width"], row["height"]) == case.size
    assert row["num_detections"] == len(detections) == case.regions
    if case.colors:
        assert [d["label"] for d in detections] == list(COLORS)
        for detection, box in zip(detections, EXPECTED_BOXES):
            got = (detection["box_ymin"], detection["box_xmin"], detection["box_ymax"],
                   detection["box_xmax"])
            assert got == pytest.approx(box, abs=1e-4)
    for d in detections:  # boxes always inside the decoded image
        width, height = case.size
        assert 0 <= d["box_ymin"] < d["box_ymax"] <= height
        assert 0 <= d["box_xmin"] < d["box_xmax"] <= width


def test_corpus_folder_input_with_a_fifo_does_not_hang(models_dir, corpus, tmp_path):
    # A folder (glob) lists the FIFO like a file; reading it would block the job forever.
    output = tmp_path / "out"
    run(job_args(models_dir, corpus / "images", output, classifier_batch_size=8))
    rows = {os.path.basename(row["image_path"]): row for row in _read(output, "images")}
    listed = {case.name for case in CASES if case.name not in (
        "vanished.png", "folder.jpg", "dangling.png")}  # not files: the glob does not list them
    assert set(rows) == listed
    assert (rows["pipe.png"]["status"], rows["pipe.png"]["error_stage"]) == ("error", "read")
    assert all(rows[name]["status"] == CASES_BY_NAME[name].status for name in rows)


def test_bomb_over_a_raised_limit_is_still_refused_by_opencvs_own_limit():
    with pytest.raises(DecodeError, match="larger than the decoder's limit of 100000000 pixels"):
        decode_image(_png_bomb(), max_pixels=10**11)


def test_read_refuses_file_larger_than_any_allowed_image(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png() + b"\0" * 20_000_000)  # 16 MiB of metadata slack + 8 B/pixel
    (out,) = list(ReadAndDecodeFn(max_pixels=100).process(str(path)))
    assert out.tag == FAILED_TAG
    assert out.value.error_stage == "read"
    assert "more than any image within --max_image_pixels=100 needs" in out.value.error


# -- Bad model output ------------------------------------------------------------------------

NAN = float("nan")
INF = float("inf")
# (box, score, class): what a broken detector returns, and what must become of it.
BAD_DETECTIONS = [
    ([0.1, 0.1, 0.4, 0.3], 0.9, 1),          # A: kept as is
    ([NAN, 0.1, 0.4, 0.3], 0.85, 1),         # NaN coordinate: dropped
    ([-0.5, 0.5, 0.5, 1.5], 0.8, NAN),       # partly outside: clipped, kept; NaN class -> 0
    ([0.9, 0.9, 0.5, 0.5], 0.75, 1),         # inverted: dropped
    ([0.5, 0.5, 0.5, 0.7], 0.7, 1),          # zero height: dropped
    ([1.5, 1.5, 2.0, 2.0], 0.65, 1),         # entirely outside: dropped
    ([0.0, 0.0, INF, 0.5], 0.62, 1),         # infinite coordinate: dropped
    ([0.6, 0.1, 0.8, 0.3], NAN, 1),          # NaN score: dropped
    ([0.6, 0.1, 0.8, 0.3], INF, 1),          # infinite score: dropped
    ([0.2, 0.2, 0.3, 0.3], 0.2, 1),          # below --min_score: not kept, not degenerate
]
BAD_KEPT_BOXES = [(10.0, 20.0, 40.0, 60.0), (0.0, 100.0, 50.0, 200.0)]
BAD_DROPPED = 7


def _save_bad_detector(path: str) -> None:
    import tensorflow as tf

    boxes = np.array([b for b, _, _ in BAD_DETECTIONS], np.float32)
    scores = np.array([s for _, s, _ in BAD_DETECTIONS], np.float32)
    classes = np.array([c for _, _, c in BAD_DETECTIONS], np.float32)

    class BadDetector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def detect(self, input_tensor):
            # Fails the image (a detect error) when it is wider than 300 pixels.
            tf.debugging.assert_less(tf.shape(input_tensor)[2], 301,
                                     message="image too wide for this detector")
            return {"detection_boxes": tf.constant(boxes)[tf.newaxis],
                    "detection_scores": tf.constant(scores)[tf.newaxis],
                    "detection_classes": tf.constant(classes)[tf.newaxis],
                    "num_detections": tf.constant([NAN])}  # NaN count: every entry counts

    module = BadDetector()
    tf.saved_model.save(module, path, signatures={"serving_default": module.detect})


def _save_nan_on_red_classifier(path: str) -> None:
    """A SavedModel classifier: the conftest colour classifier, but NaN for red crops."""
    import tensorflow as tf

    class NanOnRed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def classify(self, images):
            mean = tf.reduce_mean(images, axis=[1, 2])
            probabilities = tf.nn.softmax(mean * 20.0)
            red = mean[:, 0] > 0.5
            return {"probabilities": tf.where(red[:, None], NAN, probabilities)}

    module = NanOnRed()
    tf.saved_model.save(module, path, signatures={"serving_default": module.classify})


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_models")
    _save_bad_detector(str(root / "bad_detector"))
    _save_nan_on_red_classifier(str(root / "nan_classifier"))
    (root / "labels.txt").write_text("\n".join(COLOR_LABELS) + "\n")
    return root


def _write_png(path, rgb: np.ndarray) -> None:
    path.write_bytes(_cv2_bytes(".png", rgb))


def test_bad_detector_output_is_clipped_dropped_and_counted(bad_models, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _write_png(images / "ok.png", _painted())
    _write_png(images / "wide.png", np.zeros((50, 400, 3), np.uint8))
    output = tmp_path / "out"
    metrics = run(job_args(bad_models, images, output,
                           detector_model=bad_models / "bad_detector",
                           classifier_model=bad_models / "nan_classifier",
                           detector_label_map=None, classifier_batch_size=None))
    rows = {os.path.basename(row["image_path"]): row for row in _read(output, "images")}
    assert set(rows) == {"ok.png", "wide.png"}
    # The detector raised for the wide image: a detect error, with the model's message.
    assert (rows["wide.png"]["status"], rows["wide.png"]["error_stage"]) == ("error", "detect")
    assert "image too wide for this detector" in rows["wide.png"]["error"]
    assert (rows["wide.png"]["width"], rows["wide.png"]["height"]) == (400, 50)
    # Two regions survive; the red one (box A) gets NaN probabilities: a classify error for
    # the image, while its other region is still written.
    detections = _read(output, "detections")
    assert [(d["box_ymin"], d["box_xmin"], d["box_ymax"], d["box_xmax"])
            for d in sorted(detections, key=lambda d: d["roi_index"])] == [BAD_KEPT_BOXES[1]]
    assert detections[0]["detector_class_id"] == 0  # NaN class id
    ok = rows["ok.png"]
    assert (ok["status"], ok["error_stage"]) == ("error", "classify")
    assert "1 of 2 regions failed: classifier returned NaN or inf" in ok["error"]
    assert ok["num_detections"] == 1
    assert metrics["regions_dropped_degenerate"] == BAD_DROPPED
    assert metrics["regions_kept"] == len(BAD_KEPT_BOXES)
    assert metrics["regions_failed_classify"] == 1
    assert metrics["images_failed_detect"] == 1


def test_parse_detections_rejects_boxes_that_are_not_n_by_4():
    outputs = {"detection_boxes": np.zeros((1, 3, 5), np.float32),
               "detection_scores": np.zeros((1, 3), np.float32),
               "detection_classes": np.zeros((1, 3), np.float32)}
    with pytest.raises(ValueError, match=r"detection_boxes has shape \[3, 5\]"):
        parse_detections(outputs, 0)


def test_parse_detections_turns_non_finite_classes_into_zero():
    outputs = {"detection_boxes": np.zeros((1, 3, 4), np.float32),
               "detection_scores": np.zeros((1, 3), np.float32),
               "detection_classes": np.array([[NAN, INF, 2.0]], np.float32)}
    assert parse_detections(outputs, 0).classes.tolist() == [0, 0, 2]


def test_a_classifier_batch_that_raises_fails_its_images_not_the_job(models_dir, image_dir,
                                                                      tmp_path, monkeypatch):
    import json

    from tests.conftest import read_table
    from transforms.classification import ClassifierModel

    real_classify = ClassifierModel.classify

    def classify(self, crops, preprocess_mode):
        # Batches of 4 crops and 3 regions an image: each batch holds one image, and an
        # image's regions always share a batch. a.png's first region is red.
        if crops[0][..., 0].mean() > 200 and crops[0][..., 1].mean() < 50:
            raise RuntimeError("injected classifier fault")
        return real_classify(self, crops, preprocess_mode)

    monkeypatch.setattr(ClassifierModel, "classify", classify)
    output = tmp_path / "out"
    metrics = run(job_args(models_dir, image_dir, output))
    images = {os.path.basename(row["image_path"]): row for row in read_table(output, "images")}
    failed = images["a.png"]
    assert (failed["status"], failed["error_stage"], failed["num_detections"]) == (
        "error", "classify", 0)
    assert failed["error"].startswith("3 of 3 regions failed: ")
    assert "injected classifier fault" in failed["error"]
    assert [images[name]["status"] for name in ("b.png", "c d é.png")] == ["ok", "ok"]
    assert images["broken.png"]["error_stage"] == "decode"
    detections = read_table(output, "detections")
    assert sorted({os.path.basename(row["image_path"]) for row in detections}) == [
        "b.png", "c d é.png"]
    assert len(detections) == 6
    assert metrics["regions_failed_classify"] == 3
    counts = json.loads((output / "run.json").read_text())["counts"]
    assert (counts["regions_failed_classify"], counts["regions_kept"],
            counts["regions_written"]) == (3, 9, 6)
    assert counts["errors_by_stage"]["classify"] == 1
