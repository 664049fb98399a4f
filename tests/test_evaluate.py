"""Tests of the evaluator on Parquet files written here, with answers worked out by hand."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training import evaluate
from transforms.records import DETECTIONS_SCHEMA, DetectionRow

NAMES = ["particle", "scratch", "stain", "bridge", "void"]
NUM_IMAGES = 10  # two GT boxes per image, 20 in all, every class four times


@pytest.fixture
def coco() -> dict:
    images, anns = [], []
    for i in range(NUM_IMAGES):
        images.append({"id": i + 1, "file_name": f"img_{i}.png", "width": 400, "height": 300})
        for j in range(2):
            x, y, w, h = 20.0 + 150 * j + 3 * i, 30.0 + 10 * i, 60.0 + 2 * i, 40.0 + j * 20
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0, "category_id": (2 * i + j) % 5 + 1})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}


def _rows(coco: dict, *, shift: float = 0.0, keep=lambda k: True, label=None, score=0.9,
          detector_label="defect") -> list[dict]:
    """One detection per GT box, shifted right by ``shift`` times its width."""
    rows = []
    for k, a in enumerate(coco["annotations"]):
        if not keep(k):
            continue
        x, y, w, h = a["bbox"]
        x += shift * w
        truth = NAMES[a["category_id"] - 1]
        rows.append(DetectionRow(
            image_path=f"/data/in/img_{a['image_id'] - 1}.png", roi_index=k,
            box_ymin=y, box_xmin=x, box_ymax=y + h, box_xmax=x + w, detector_class_id=1,
            detector_label=detector_label, detector_score=score, class_id=a["category_id"],
            label=label(k, truth) if label else truth, confidence=0.8, detector_model="det",
            classifier_model="cls").to_dict())
    return rows


def _write(rows: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA), path)
    return path


def _run(tmp_path, coco: dict, rows: list[dict], **kwargs) -> dict:
    _write(rows, str(tmp_path / "out" / "detections" / "detections-00000-of-00001.parquet"))
    return evaluate.evaluate(str(tmp_path / "out"), coco, **kwargs)


def test_evaluate_perfect_predictions(tmp_path, coco):
    m = _run(tmp_path, coco, _rows(coco))
    assert m["ap"] == pytest.approx(1.0) and m["ap50"] == pytest.approx(1.0)
    assert m["classifier_label_accuracy"] == 1.0
    # The coarse label map says 'defect', never the GT type.
    assert m["detector_label_accuracy"] == 0.0
    assert m["matched"] == 20 and m["num_gt"] == 20 and m["num_images"] == NUM_IMAGES
    assert all(v["ap"] == pytest.approx(1.0) for v in m["per_class"].values())


def test_evaluate_detector_label_from_label_map_when_null(tmp_path, coco):
    rows = _rows(coco, detector_label=None)
    for r in rows:
        r["detector_class_id"] = r["class_id"]
    label_map = {k + 1: n for k, n in enumerate(NAMES)}
    assert _run(tmp_path, coco, rows, label_map=label_map)["detector_label_accuracy"] == 1.0


def test_evaluate_half_missing_caps_recall(tmp_path, coco):
    # 10 of 20 boxes found, all with precision 1: the PR curve is 1 up to recall 0.5 and then
    # absent, so COCO's 101-point AP is 51/101 (thresholds 0.00..0.50) = 0.505, within 0.01.
    m = _run(tmp_path, coco, _rows(coco, keep=lambda k: k % 2 == 0))
    assert m["ap50"] == pytest.approx(51 / 101, abs=0.01)
    assert m["ap"] == pytest.approx(51 / 101, abs=0.01)
    assert m["classifier_label_accuracy"] == 1.0 and m["matched"] == 10


def test_evaluate_shifted_boxes(tmp_path, coco):
    # Shifting a box by s*w along x gives IoU (1-s)/(1+s); s = 0.38/1.62 gives IoU 0.62, which
    # passes the thresholds 0.50, 0.55, 0.60 and fails 0.65..0.95: AP50 = 1, AP = 3/10, AP75 = 0.
    m = _run(tmp_path, coco, _rows(coco, shift=0.38 / 1.62))
    assert m["ap50"] == pytest.approx(1.0)
    assert m["ap75"] == pytest.approx(0.0)
    assert m["ap"] == pytest.approx(0.3, abs=1e-6)
    assert m["classifier_label_accuracy"] == 1.0  # IoU 0.62 >= 0.5: still matched


def test_evaluate_far_shift_matches_nothing(tmp_path, coco):
    # s = 0.5 gives IoU 1/3 < 0.5: no true positive at any threshold.
    m = _run(tmp_path, coco, _rows(coco, shift=0.5))
    assert m["ap50"] == pytest.approx(0.0) and m["ap"] == pytest.approx(0.0)
    assert m["matched"] == 0 and math.isnan(m["classifier_label_accuracy"])


def test_evaluate_low_scored_false_positives_do_not_lower_ap(tmp_path, coco):
    rows = _rows(coco)
    fps = _rows(coco, shift=2.0, score=0.1)  # far from any GT box, ranked after every TP
    m = _run(tmp_path, coco, rows + fps)
    assert m["ap50"] == pytest.approx(1.0) and m["ap"] == pytest.approx(1.0)


def test_evaluate_background_rows_are_rejections(tmp_path, coco):
    # Half the boxes labelled background: left out of AP by default (AP50 = 51/101 as in the
    # half-missing case), scored with --include_background (AP50 = 1), and counted as wrong
    # labels in the classifier accuracy either way (10 of 20 right).
    rows = _rows(coco, label=lambda k, truth: evaluate.BACKGROUND if k % 2 else truth)
    m = _run(tmp_path, coco, rows)
    assert m["ap50"] == pytest.approx(51 / 101, abs=0.01)
    assert m["num_background"] == 10
    assert m["classifier_label_accuracy"] == pytest.approx(0.5)
    m_all = evaluate.evaluate(str(tmp_path / "out"), coco, include_background=True)
    assert m_all["ap50"] == pytest.approx(1.0)


def test_evaluate_wrong_classifier_labels(tmp_path, coco):
    # One box in four gets the next class name: accuracy 15/20; class-agnostic AP is unchanged.
    def label(k, truth):
        return NAMES[(NAMES.index(truth) + 1) % 5] if k % 4 == 0 else truth

    m = _run(tmp_path, coco, _rows(coco, label=label))
    assert m["classifier_label_accuracy"] == pytest.approx(0.75)
    assert m["ap50"] == pytest.approx(1.0)
    assert m["mean_class_ap"] < 1.0


def test_load_detections_accepts_folder_file_and_output(tmp_path, coco):
    rows = _rows(coco)
    _write(rows[:7], str(tmp_path / "out" / "detections" / "part-0.parquet"))
    _write(rows[7:], str(tmp_path / "out" / "detections" / "part-1.parquet"))
    assert evaluate.load_detections(str(tmp_path / "out")).num_rows == len(rows)
    assert evaluate.load_detections(str(tmp_path / "out" / "detections")).num_rows == len(rows)
    single = _write(rows, str(tmp_path / "one.parquet"))
    assert evaluate.load_detections(single).num_rows == len(rows)
    with pytest.raises(FileNotFoundError):
        evaluate.load_detections(str(tmp_path / "missing"))


def test_greedy_match_prefers_higher_score():
    gt = np.array([[0, 0, 10, 10]], float)
    dets = np.array([[0, 0, 10, 10], [1, 0, 10, 10]], float)
    assert evaluate.greedy_match(dets, np.array([0.2, 0.9]), gt) == [(1, 0)]


def test_main_names_null_detector_labels_as_the_job_does(tmp_path, coco, capsys):
    # The job prefers display_name over name (transforms.labels); the evaluator reads the map
    # the same way, so a class named 'c2' with display_name 'particle' counts as 'particle'.
    rows = _rows(coco, detector_label=None)
    for r in rows:
        r["detector_class_id"] = 2
    _write(rows, str(tmp_path / "out" / "detections" / "d.parquet"))
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    label_map = tmp_path / "label_map.pbtxt"
    label_map.write_text("item { id: 2 name: 'c2' display_name: 'particle' }\n")
    evaluate.main(["--detections", str(tmp_path / "out"), "--annotations", str(ann),
                   "--label_map", str(label_map)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    particles = sum(a["category_id"] == 1 for a in coco["annotations"])
    assert result["detector_label_accuracy"] == pytest.approx(particles / 20)


def test_evaluate_recall_counts_scored_rows_only(tmp_path, coco):
    # 15 of 20 boxes found; 5 of the found ones labelled background: recall 10/20 by default,
    # 15/20 with background rows scored; label accuracy still sees all 15 matches.
    rows = _rows(coco, keep=lambda k: k % 4 != 3,
                 label=lambda k, truth: evaluate.BACKGROUND if k % 4 == 0 else truth)
    m = _run(tmp_path, coco, rows)
    assert m["recall50"] == pytest.approx(10 / 20)
    assert m["matched"] == 15
    assert evaluate.evaluate(str(tmp_path / "out"), coco,
                             include_background=True)["recall50"] == pytest.approx(15 / 20)


def test_evaluate_unclassified_rows_count_for_the_detector_label_only(tmp_path, coco):
    # Every second region left unclassified by the job (class_id -1, label ""): the classifier
    # accuracy is over the 10 classified matches, the detector's over all 20.
    rows = _rows(coco, detector_label=None)
    for k, r in enumerate(rows):
        r["detector_class_id"] = r["class_id"]
        if k % 2:
            r.update(classified=False, class_id=-1, label="", confidence=float("nan"))
    label_map = {k + 1: n for k, n in enumerate(NAMES)}
    m = _run(tmp_path, coco, rows, label_map=label_map)
    assert m["classifier_label_accuracy"] == 1.0
    assert m["detector_label_accuracy"] == 1.0 and m["matched"] == 20
    assert m["ap50"] == pytest.approx(1.0)  # unclassified regions are detections, not rejections


def test_greedy_match_takes_corner_boxes():
    # [ymin, xmin, ymax, xmax]: a tall thin GT box and a detection on its right half (IoU 0.5),
    # and one across its top (IoU 0.1).
    gt = np.array([[0, 0, 100, 10]], float)
    assert evaluate.greedy_match(np.array([[0, 5, 100, 10]], float), np.ones(1), gt) == [(0, 0)]
    assert evaluate.greedy_match(np.array([[0, 0, 10, 10]], float), np.ones(1), gt) == []


def test_main_prints_json_last(tmp_path, coco, capsys):
    _write(_rows(coco), str(tmp_path / "out" / "detections" / "d.parquet"))
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    evaluate.main(["--detections", str(tmp_path / "out"), "--annotations", str(ann)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["ap50"] == pytest.approx(1.0) and "detector_label_accuracy" in result
