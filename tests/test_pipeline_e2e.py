"""End to end on the DirectRunner: real Parquet written to tmp_path and read back."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from beam_pipeline.main import run
from tests.conftest import IMAGE_HEIGHT, IMAGE_WIDTH, paint_image, write_png

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


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name, colors in IMAGES.items():
        write_png(root / name, paint_image(colors))
    (root / "broken.png").write_bytes(b"this is not an image")
    return root


def _args(models_dir, image_dir, output, *extra):
    return [
        f"--input={image_dir}", f"--output={output}",
        f"--detector_model={models_dir / 'detector'}",
        f"--detector_label_map={models_dir / 'label_map.pbtxt'}",
        f"--classifier_model={models_dir / 'colors.keras'}",
        f"--classifier_labels={models_dir / 'labels.txt'}",
        "--classifier_batch_size=4", *extra,
    ]


def _read(output, table):
    rows = ds.dataset(str(output / table), format="parquet").to_table().to_pylist()
    return sorted(rows, key=lambda row: (row["image_path"], row.get("roi_index", 0)))


def _expected_detections(image_dir, models_dir):
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


def _check_run(output, image_dir, models_dir):
    detections = _read(output, "detections")
    expected = _expected_detections(image_dir, models_dir)
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

    images = _read(output, "images")
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
                           "error": None, "num_detections": 3}
    return detections, images


def test_pipeline_writes_expected_rows(models_dir, image_dir, tmp_path, capsys):
    metrics = run(_args(models_dir, image_dir, tmp_path / "out"))
    _check_run(tmp_path / "out", image_dir, models_dir)
    assert metrics["images_read"] == 4
    assert metrics["images_failed_decode"] == 1
    assert metrics["regions_detected"] == 3 * 4  # padding past num_detections not counted
    assert metrics["regions_kept"] == 9
    assert metrics["regions_classified"] == 9
    assert metrics["DetectObjects.load_model_latency_milli_secs.count"] == 1
    assert metrics["ClassifyRegions.load_model_latency_milli_secs.count"] == 1
    summary = capsys.readouterr().out
    assert "4 read" in summary and "9 classified" in summary


def test_pipeline_multi_processing_gives_identical_rows(models_dir, image_dir, tmp_path):
    run(_args(models_dir, image_dir, tmp_path / "single"))
    metrics = run(_args(models_dir, image_dir, tmp_path / "multi",
                        "--direct_running_mode=multi_processing", "--direct_num_workers=2"))
    single = _check_run(tmp_path / "single", image_dir, models_dir)
    multi = _check_run(tmp_path / "multi", image_dir, models_dir)
    assert multi == single
    # At most one load per worker process per model.
    assert 1 <= metrics["DetectObjects.load_model_latency_milli_secs.count"] <= 2
    assert 1 <= metrics["ClassifyRegions.load_model_latency_milli_secs.count"] <= 2


def test_pipeline_with_one_model_copy_shared_across_processes(models_dir, image_dir, tmp_path):
    # --model_copies makes Beam serve the models from one process through a proxy.
    metrics = run(_args(models_dir, image_dir, tmp_path / "shared", "--model_copies=1"))
    _check_run(tmp_path / "shared", image_dir, models_dir)
    assert metrics["regions_classified"] == 9
