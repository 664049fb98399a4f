"""Shared fixtures: small real models with known answers, built once per test session."""

from __future__ import annotations

import json
import os

# isort: off
import transforms  # noqa: F401  (OpenCV's pixel limit, set before cv2 is imported)
import cv2
# isort: on
import numpy as np
import pyarrow.dataset as ds
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The files that take longest (minutes each: whole jobs killed and resumed, real engines and a
# cluster, benchmark smoke runs), started first: with two test processes (`./run_local.sh
# test` runs pytest-xdist, one file per process at a time) the short files fill in behind them
# instead of one long file running alone at the end. Only the order changes.
LONGEST_FIRST = ("test_commit_kills.py", "test_engines.py", "test_clusters.py",
                 "test_training.py", "test_skip_benchmark.py", "test_peer_benchmark.py",
                 "test_benchmark_smoke.py", "test_s3.py", "test_commits.py")


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept

# Normalized [ymin, xmin, ymax, xmax]; the fake detector returns these for every image.
FAKE_BOXES = np.array([
    [0.1, 0.1, 0.4, 0.3],    # A, score 0.9
    [0.5, 0.5, 0.9, 0.9],    # B, score 0.7
    [0.0, 0.6, 0.2, 1.2],    # C, score 0.6, runs past the right edge: clipped
    [0.6, 0.1, 0.8, 0.3],    # D, score 0.2: below the default threshold
    [0.2, 0.2, 0.3, 0.3],    # padding past num_detections: must be ignored
], dtype=np.float32)
FAKE_SCORES = np.array([0.9, 0.7, 0.6, 0.2, 0.99], dtype=np.float32)
FAKE_CLASSES = np.array([1, 2, 1, 3, 5], dtype=np.float32)
FAKE_NUM_DETECTIONS = 4
IMAGE_HEIGHT, IMAGE_WIDTH = 100, 200
COLOR_LABELS = ("red", "green", "blue")
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def _save_fake_detector(path: str, *, batchable: bool) -> str:
    import tensorflow as tf

    class FakeDetector(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None if batchable else 1, None, None, 3], tf.uint8)])
        def detect(self, input_tensor):
            batch = tf.shape(input_tensor)[0]

            def tile(values):
                return tf.tile(tf.constant(values)[tf.newaxis], [batch] + [1] * values.ndim)

            return {
                "detection_boxes": tile(FAKE_BOXES),
                "detection_scores": tile(FAKE_SCORES),
                "detection_classes": tile(FAKE_CLASSES),
                "num_detections": tf.fill([batch], float(FAKE_NUM_DETECTIONS)),
                # Extra keys, as real OD API exports have: ignored by the pipeline.
                "raw_detection_scores": tile(np.ones((7, 2), np.float32)),
            }

    module = FakeDetector()
    tf.saved_model.save(module, path, signatures={"serving_default": module.detect})
    return path


def _save_color_classifier(path: str) -> str:
    import keras

    # Mean colour of the crop, x20, softmax: a pure red/green/blue crop gets its colour.
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(3, use_bias=False, name="colors")(pooled)
    outputs = keras.layers.Softmax()(logits)
    model = keras.Model(inputs, outputs)
    model.get_layer("colors").set_weights([np.eye(3, dtype=np.float32) * 20.0])
    model.save(path)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    _save_fake_detector(str(root / "detector"), batchable=False)
    _save_fake_detector(str(root / "detector_batched"), batchable=True)
    _save_color_classifier(str(root / "colors.keras"))
    (root / "labels.txt").write_text("\n".join(COLOR_LABELS) + "\n")
    (root / "label_map.pbtxt").write_text(
        "item {\n  id: 1\n  name: 'defect'\n}\nitem {\n  id: 2\n  name: 'other'\n"
        "  display_name: 'Other thing'\n}\n")
    return root


def paint_image(colors: tuple[str, str, str]) -> np.ndarray:
    """An RGB image with boxes A, B and C of the fake detector painted in ``colors``, and
    box D white; the rest mid grey."""
    image = np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 3), 128, np.uint8)
    scale = np.array([IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_WIDTH], np.float32)
    for box, color in zip(FAKE_BOXES[:3], colors):
        ymin, xmin, ymax, xmax = (box * scale).astype(int)
        image[ymin:ymax, xmin:xmax] = COLORS[color]
    ymin, xmin, ymax, xmax = (FAKE_BOXES[3] * scale).astype(int)
    image[ymin:ymax, xmin:xmax] = 255
    return image


def write_png(path, rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    with open(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return str(path)


# The end-to-end scene shared by the pipeline, runner and object-storage tests: three painted
# images and one broken file, with the rows the fake models must give for them.
IMAGES = {
    "a.png": ("red", "green", "blue"),
    "b.png": ("blue", "red", "green"),
    "c d é.png": ("green", "blue", "red"),
}
# Pixel boxes of A, B and C (clipped at the right edge), in score order.
EXPECTED_BOXES = [
    (10.0, 20.0, 40.0, 60.0),
    (50.0, 100.0, 90.0, 180.0),
    (0.0, 120.0, 20.0, 200.0),
]
EXPECTED_SCORES = [0.9, 0.7, 0.6]
EXPECTED_DETECTOR_CLASSES = [1, 2, 1]


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name, colors in IMAGES.items():
        write_png(root / name, paint_image(colors))
    (root / "broken.png").write_bytes(b"this is not an image")
    return root


def job_args(models_dir, input_, output, *extra, **overrides) -> list[str]:
    """The job's argv on the models of ``models_dir`` (a folder, or an ``s3://`` prefix laid
    out like the ``models_dir`` fixture): ``--input``, ``--output``, the detector, its label
    map, the classifier, its labels and ``--classifier_batch_size=4``, then ``extra`` as given.

    ``overrides`` set a flag by name, replacing its default (``detector_model="/nope"``) or
    adding it; ``None`` leaves a flag out and ``True`` passes it bare (``overwrite=True`` is
    ``--overwrite``).
    """
    flags = {
        "input": input_, "output": output,
        "detector_model": f"{models_dir}/detector",
        "detector_label_map": f"{models_dir}/label_map.pbtxt",
        "classifier_model": f"{models_dir}/colors.keras",
        "classifier_labels": f"{models_dir}/labels.txt",
        "classifier_batch_size": 4,
    }
    flags.update(overrides)
    argv = [f"--{name}={value}" for name, value in flags.items()
            if value is not None and value is not True]
    argv += [f"--{name}" for name, value in flags.items() if value is True]
    return argv + list(extra)


def read_table(output, table):
    rows = ds.dataset(str(output / table), format="parquet").to_table().to_pylist()
    return sorted(rows, key=lambda row: (row["image_path"], row.get("roi_index", 0)))


def expected_detections(image_dir, models_dir):
    rows = []
    for name, colors in sorted(IMAGES.items(), key=lambda item: str(image_dir / item[0])):
        for roi, (box, score, det_class, color) in enumerate(
                zip(EXPECTED_BOXES, EXPECTED_SCORES, EXPECTED_DETECTOR_CLASSES, colors)):
            rows.append({
                "image_path": str(image_dir / name), "roi_index": roi,
                "box": box, "detector_class_id": det_class,
                "detector_label": {1: "defect", 2: "Other thing"}[det_class],
                "detector_score": score, "class_id": ("red", "green", "blue").index(color),
                "label": color,
            })
    return rows


def check_run(output, image_dir, models_dir):
    detections = read_table(output, "detections")
    expected = expected_detections(image_dir, models_dir)
    assert len(detections) == len(expected)
    for row, want in zip(detections, expected):
        assert row["image_path"] == want["image_path"]
        assert row["roi_index"] == want["roi_index"]
        box = (row["box_ymin"], row["box_xmin"], row["box_ymax"], row["box_xmax"])
        assert box == pytest.approx(want["box"], abs=1e-4)
        assert row["detector_class_id"] == want["detector_class_id"]
        assert row["detector_label"] == want["detector_label"]
        assert row["detector_score"] == pytest.approx(want["detector_score"], abs=1e-6)
        assert (row["class_id"], row["label"]) == (want["class_id"], want["label"])
        assert row["confidence"] > 0.99
        assert row["detector_model"] == str(models_dir / "detector")
        assert row["classifier_model"] == str(models_dir / "colors.keras")

    images = read_table(output, "images")
    assert [row["image_path"] for row in images] == sorted(
        str(image_dir / name) for name in [*IMAGES, "broken.png"])
    for row in images:
        if row["image_path"].endswith("broken.png"):
            assert (row["status"], row["error_stage"]) == ("error", "decode")
            assert "not a supported image format" in row["error"]
            assert (row["width"], row["height"], row["num_detections"]) == (None, None, 0)
        else:
            assert row == {"image_path": row["image_path"], "width": IMAGE_WIDTH,
                           "height": IMAGE_HEIGHT, "status": "ok", "error_stage": None,
                           "error": None, "num_detections": 3, "run_id": row["run_id"],
                           "fingerprint": row["fingerprint"]}
    # Every row of both tables carries the run's id and fingerprint, as its run.json says.
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "complete"
    for row in detections + images:
        assert (row["run_id"], row["fingerprint"]) == (record["run_id"], record["fingerprint"])
    assert all(row["classified"] for row in detections)
    assert record["counts"]["images_read"] == len(images)
    assert record["counts"]["regions_written"] == len(detections)
    # Rows compared across runs and runners: without the per-run columns.
    per_run = ("run_id",)
    return ([{k: v for k, v in row.items() if k not in per_run} for row in detections],
            [{k: v for k, v in row.items() if k not in per_run} for row in images])
