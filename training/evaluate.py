"""Score the pipeline's Parquet detections against COCO ground truth.

Usage::

    python -m training.evaluate --detections OUTPUT --annotations DIR/annotations.json

``--detections`` is the pipeline's output folder (``OUTPUT/detections/`` is read), the detections
folder itself, or one Parquet file. Rows are matched to COCO images by the basename of
``image_path`` and ``file_name``; every image of the annotations counts (an image with no rows has
only misses).

Metrics:

* ``ap``, ``ap50``, ``ap75``: class-agnostic COCO box AP (faster-coco-eval) with
  ``detector_score`` as the score. Rows the classifier labelled ``background`` are rejections and
  are left out, unless ``--include_background``.
* ``per_class``: COCO AP per defect type using the classifier's ``label`` as the class and
  ``detector_score * confidence`` as the score (same row filter).
* ``detector_label_accuracy`` / ``classifier_label_accuracy``: over detections matched to a
  ground-truth box (IoU >= 0.5, greedy by ``detector_score``, one detection per box), the fraction
  whose label equals the ground-truth category name. All rows take part here, ``background`` ones
  included: calling a real defect background is a classifier error; rows the job did not
  classify (``classified`` false) count only for the detector's label. The detector's label is
  ``detector_label``, or when null the ``--label_map`` label of ``detector_class_id``, read as the
  job reads it (``transforms.labels``: ``display_name``, else ``name``).
* ``recall50``: the fraction of ground-truth boxes matched (the same greedy rule) by a scored
  row (same row filter as AP): the share of defects the output finds.

The last line printed is one JSON object with all figures. No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, NamedTuple, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from transforms.boxes import iou_matrix
from transforms.labels import BACKGROUND, read_label_map

__all__ = ["BACKGROUND", "evaluate", "greedy_match", "load_detections"]

MATCH_IOU = 0.5


def load_detections(path: str) -> pa.Table:
    """Read detections from an output folder, a detections folder or one Parquet file."""
    if os.path.isdir(os.path.join(path, "detections")):
        path = os.path.join(path, "detections")
    if os.path.isfile(path):
        return pq.read_table(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no detections at {path}")
    # Beam's sinks may name shards without a suffix; its temp folders start with '.' or '_'
    # and pyarrow.dataset skips those by default.
    return ds.dataset(path, format="parquet").to_table()


def greedy_match(det_boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray,
                 iou_threshold: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Match detections (highest score first) to the free GT box of highest IoU >= threshold.

    Boxes are ``[ymin, xmin, ymax, xmax]``; returns ``(detection index, GT index)`` pairs.
    """
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return []
    ious = iou_matrix(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    pairs = []
    for d in np.argsort(-np.asarray(scores), kind="stable"):
        row = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(row))
        if row[g] >= iou_threshold:
            taken[g] = True
            pairs.append((int(d), g))
    return pairs


def _coco_eval(gt: dict, results: list[dict]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt)
    coco_dt = coco_gt.loadRes(results) if results else coco_gt.loadRes([])
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _ap_from_precision(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


class _Rows(NamedTuple):
    """The detections table as the metrics read it."""

    rows: dict[str, list]
    image_ids: list[Optional[int]]  # the COCO image of each row, None when unknown
    corners: np.ndarray  # [N, 4] ymin, xmin, ymax, xmax
    known: list[int]  # rows of a COCO image
    kept: list[int]  # known rows that are scored (background left out unless asked)


def _read_rows(table: pa.Table, annotations: dict, include_background: bool) -> _Rows:
    image_id = {os.path.basename(im["file_name"]): im["id"] for im in annotations["images"]}
    rows = table.to_pydict()
    n = table.num_rows
    image_ids = [image_id.get(os.path.basename(p)) for p in rows["image_path"]]
    corners = np.stack([rows[k] for k in ("box_ymin", "box_xmin", "box_ymax", "box_xmax")],
                       1).astype(float) if n else np.zeros((0, 4))
    known = [i for i in range(n) if image_ids[i] is not None]
    kept = [i for i in known if include_background or rows["label"][i] != BACKGROUND]
    return _Rows(rows, image_ids, corners, known, kept)


def _coco_boxes(corners: np.ndarray) -> np.ndarray:
    """COCO's [x, y, w, h] for faster-coco-eval."""
    return np.stack([corners[:, 1], corners[:, 0], corners[:, 3] - corners[:, 1],
                     corners[:, 2] - corners[:, 0]], 1)


def _agnostic_ap(annotations: dict, found: _Rows) -> dict[str, Any]:
    """Class-agnostic AP: every GT and detection becomes one "defect" category."""
    boxes, rows = _coco_boxes(found.corners), found.rows
    agnostic_gt = {"images": annotations["images"], "categories": [{"id": 1, "name": "defect"}],
                   "annotations": [dict(a, category_id=1) for a in annotations["annotations"]]}
    results = [{"image_id": found.image_ids[i], "category_id": 1, "bbox": boxes[i].tolist(),
                "score": float(rows["detector_score"][i])} for i in found.kept]
    stats = _coco_eval(agnostic_gt, results).stats_as_dict
    return {"ap": stats["AP_all"], "ap50": stats["AP_50"], "ap75": stats["AP_75"],
            "ar100": stats["AR_third"]}


def _per_class_ap(annotations: dict, cats: dict[int, str], found: _Rows) -> dict[str, Any]:
    """Per-class AP with the classifier's label as the class."""
    boxes, rows = _coco_boxes(found.corners), found.rows
    cat_by_name = {v: k for k, v in cats.items()}
    per_class_results = [
        {"image_id": found.image_ids[i], "category_id": cat_by_name[rows["label"][i]],
         "bbox": boxes[i].tolist(),
         "score": float(rows["detector_score"][i]) * float(rows["confidence"][i])}
        for i in found.kept if rows["label"][i] in cat_by_name]
    ev_cls = _coco_eval(annotations, per_class_results)
    precision = ev_cls.eval["precision"]  # [iou, recall, class, area, maxdets]
    per_class = {}
    for k, cat_id in enumerate(ev_cls.params.catIds):
        per_class[cats[cat_id]] = {"ap": _ap_from_precision(precision[:, :, k, 0, -1]),
                                   "ap50": _ap_from_precision(precision[0, :, k, 0, -1])}
    mean = float(np.nanmean([v["ap"] for v in per_class.values()])) \
        if per_class else float("nan")
    return {"per_class": per_class, "mean_class_ap": mean}


def _label_accuracy(annotations: dict, cats: dict[int, str], found: _Rows,
                    label_map: Optional[dict[int, str]]) -> dict[str, Any]:
    """Label accuracy over GT-matched detections (all rows, background included); recall over
    the scored rows only."""
    rows, corners = found.rows, found.corners
    gt_by_image: dict[int, list[dict]] = {}
    for a in annotations["annotations"]:
        gt_by_image.setdefault(a["image_id"], []).append(a)
    det_by_image: dict[int, list[int]] = {}
    for i in found.known:
        det_by_image.setdefault(found.image_ids[i], []).append(i)
    scores = np.asarray(rows["detector_score"], float)
    scored = set(found.kept)
    # Regions the job did not classify (--classify_detector_classes) have no classifier label.
    classified = rows.get("classified") or [True] * len(found.image_ids)
    det_correct = cls_correct = matched = matched_classified = recalled = 0
    for img, idx in det_by_image.items():
        gts = gt_by_image.get(img, [])
        gt_corners = np.array([[y, x, y + h, x + w] for x, y, w, h in (g["bbox"] for g in gts)],
                              float).reshape(-1, 4)
        idx_scored = [i for i in idx if i in scored]
        recalled += len(greedy_match(corners[idx_scored], scores[idx_scored], gt_corners))
        for d, g in greedy_match(corners[idx], scores[idx], gt_corners):
            i, truth = idx[d], cats[gts[g]["category_id"]]
            det_label = rows["detector_label"][i]
            if det_label is None and label_map:
                det_label = label_map.get(rows["detector_class_id"][i])
            matched += 1
            det_correct += det_label == truth
            if classified[i]:
                matched_classified += 1
                cls_correct += rows["label"][i] == truth
    return {
        "detector_label_accuracy": det_correct / matched if matched else float("nan"),
        "classifier_label_accuracy": cls_correct / matched_classified if matched_classified
        else float("nan"),
        "recall50": recalled / len(annotations["annotations"]) if annotations["annotations"]
        else float("nan"),
        "matched": matched,
        "num_images_with_detections": len(det_by_image),
    }


def evaluate(detections: Union[str, pa.Table], annotations: Union[str, dict], *,
             include_background: bool = False,
             label_map: Optional[dict[int, str]] = None) -> dict[str, Any]:
    """Compute the metrics described in the module docstring; returns them as a dict."""
    table = load_detections(detections) if isinstance(detections, str) else detections
    if isinstance(annotations, str):
        with open(annotations) as f:
            annotations = json.load(f)
    cats = {c["id"]: c["name"] for c in annotations["categories"]}
    found = _read_rows(table, annotations, include_background)
    matches = _label_accuracy(annotations, cats, found, label_map)
    with_detections = matches.pop("num_images_with_detections")
    return {
        **_agnostic_ap(annotations, found),
        **_per_class_ap(annotations, cats, found),
        **matches,
        "num_images": len(annotations["images"]),
        "num_images_with_detections": with_detections,
        "num_gt": len(annotations["annotations"]),
        "num_rows": table.num_rows,
        "num_rows_unknown_image": table.num_rows - len(found.known),
        "num_detections_scored": len(found.kept),
        "num_background": sum(found.rows["label"][i] == BACKGROUND for i in found.known),
        "include_background": include_background,
    }


def format_table(metrics: dict[str, Any]) -> str:
    """Human-readable summary of ``evaluate``'s result."""
    lines = [f"{'metric':<28}{'value':>10}"]
    for key in ("ap", "ap50", "ap75", "ar100", "recall50", "mean_class_ap",
                "detector_label_accuracy", "classifier_label_accuracy"):
        lines.append(f"{key:<28}{metrics[key]:>10.4f}")
    for key in ("num_images", "num_images_with_detections", "num_gt", "num_rows",
                "num_detections_scored", "num_background", "matched", "num_rows_unknown_image"):
        lines.append(f"{key:<28}{metrics[key]:>10d}")
    lines.append(f"{'class':<28}{'AP':>10}{'AP50':>10}")
    for name, v in metrics["per_class"].items():
        lines.append(f"{name:<28}{v['ap']:>10.4f}{v['ap50']:>10.4f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", required=True,
                        help="Pipeline output folder, its detections/ folder, or a Parquet file.")
    parser.add_argument("--annotations", required=True, help="COCO annotations.json.")
    parser.add_argument("--include_background", action="store_true",
                        help="Score rows labelled 'background' in AP too (default: rejected).")
    parser.add_argument("--label_map", default=None,
                        help="Detector label_map.pbtxt, to name detector_class_id when "
                             "detector_label is null.")
    args = parser.parse_args(argv)
    label_map = read_label_map(args.label_map) if args.label_map else None
    metrics = evaluate(args.detections, args.annotations,
                       include_background=args.include_background, label_map=label_map)
    print(format_table(metrics))
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
