"""Exports for labelling: detections as a COCO dataset whose annotations are results (with
``score``), and the uncertain crops as PNG files in one folder per predicted label with a CSV."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import posixpath
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from beam_pipeline.report.data import to_crops
from beam_pipeline.report.pictures import cut_crop, load_image
from transforms.decoding import encode_png
from transforms.labels import BACKGROUND

__all__ = ["BACKGROUND", "REVIEW_CSV", "coco_dataset", "csv_cell", "export_coco",
           "export_review", "safe_name"]

REVIEW_CSV = "review.csv"
REVIEW_COLUMNS = ["file", "image_path", "roi_index", "box_ymin", "box_xmin", "box_ymax",
                  "box_xmax", "label", "confidence", "detector_score", "error"]


# Longest name made from data, before the digest that keeps changed names apart.
_NAME_CHARS = 60
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                               *(f"lpt{i}" for i in range(10))})
# A spreadsheet evaluates a cell starting with these as a formula (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_name(value: str, taken: set[str] | None = None) -> str:
    """A file or folder name made from data (a label, an image name) that cannot escape its
    folder: letters, digits, ``.``, ``-``, ``_`` and spaces only (separators, ``..``, NUL and
    other control characters become ``_``), no leading dot or ``-`` (an option, a formula),
    no trailing dot/space, not a Windows device name, at most 60 characters plus a digest. A
    name that had to change gets ``-<digest of the value>``, so two values never map to one
    name; ``taken`` (lower-cased names already used; updated) resolves what still collides,
    case-insensitively."""
    name = re.sub(r"[^\w. -]+|_+", "_", value, flags=re.ASCII).strip(" ")
    name = re.sub(r"\.{2,}", ".", name).lstrip(".").rstrip(". ") or "_"
    if name.split(".", 1)[0].lower() in _WINDOWS_RESERVED or name.startswith("-"):
        name = "_" + name
    if name != value or len(name) > _NAME_CHARS:
        digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[:_NAME_CHARS]}-{digest}"
    if taken is not None:
        base, n = name, 1
        while name.lower() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
    return name


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string starting with ``=``, ``+``, ``-``,
    ``@``, tab or CR gets a leading ``'`` (OWASP's advice); other values are unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _common_root(paths: list[str]) -> str:
    if not paths:
        return ""
    root = posixpath.dirname(paths[0])
    for path in paths[1:]:
        while root and not path.startswith(root.rstrip("/") + "/"):
            parent = posixpath.dirname(root)
            root = parent if parent != root else ""
    return root


def coco_dataset(images: pa.Table, detections: pa.Table, *,
                 include_background: bool = False) -> dict[str, Any]:
    """COCO ``images``, ``categories`` (the classifier's labels seen) and ``annotations``.

    Each annotation is a detection result: ``bbox`` ``[x, y, w, h]`` in pixels, ``category_id``
    from ``label``, ``score`` = detector score x classifier confidence, and the two scores kept
    as ``detector_score`` and ``confidence``. Rows labelled ``background`` are rejections and
    are left out unless ``include_background``; regions the job did not classify always are.
    ``file_name`` is the path below the images' common folder; ``path`` the full one.
    """
    if detections.num_rows:  # regions the job did not classify have the label ""
        detections = detections.filter(pc.not_equal(detections["label"], ""))
    if not include_background and detections.num_rows:
        detections = detections.filter(pc.not_equal(detections["label"], BACKGROUND))
    ok = images.filter(pc.equal(images["status"], "ok")).sort_by("image_path")
    paths = ok["image_path"].to_pylist()
    root = _common_root(paths)
    image_ids = {path: i + 1 for i, path in enumerate(paths)}
    coco_images = [{"id": image_ids[p], "file_name": p[len(root):].lstrip("/") if root else p,
                    "path": p, "width": w, "height": h}
                   for p, w, h in zip(paths, ok["width"].to_pylist(), ok["height"].to_pylist())]
    names = sorted(set(detections["label"].to_pylist())) if detections.num_rows else []
    category_ids = {name: i + 1 for i, name in enumerate(names)}
    annotations = []
    for crop in to_crops(detections.sort_by([("image_path", "ascending"),
                                             ("roi_index", "ascending")])):
        if crop.image_path not in image_ids:
            continue  # a row of an image whose newest run failed: not in the latest view
        ymin, xmin, ymax, xmax = crop.box
        width, height = xmax - xmin, ymax - ymin
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_ids[crop.image_path],
            "category_id": category_ids[crop.label], "bbox": [xmin, ymin, width, height],
            "area": width * height, "iscrowd": 0,
            "score": crop.detector_score * crop.confidence,
            "detector_score": crop.detector_score, "confidence": crop.confidence,
            "roi_index": crop.roi_index})
    return {"info": {"description": "beam-detect-classify detections"},
            "images": coco_images,
            "categories": [{"id": i, "name": n, "supercategory": "defect"}
                           for n, i in category_ids.items()],
            "annotations": annotations}


def export_coco(images: pa.Table, detections: pa.Table, path: str, *,
                include_background: bool = False) -> dict[str, int]:
    """Writes ``coco_dataset(...)`` as JSON to ``path``; returns the counts written."""
    dataset = coco_dataset(images, detections, include_background=include_background)
    with open(path, "w") as handle:
        json.dump(dataset, handle)
    return {key: len(dataset[key]) for key in ("images", "categories", "annotations")}


def _file_name(image_path: str, roi_index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", posixpath.splitext(posixpath.basename(image_path))[0])
    digest = hashlib.sha1(image_path.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem[:60]}-{digest}-r{roi_index}.png"  # no dots: never "..", never hidden


def export_review(detections: pa.Table, folder: str, below_confidence: float) -> dict[str, int]:
    """Crops with confidence below ``below_confidence`` as ``folder/<label>/<name>.png`` at
    their native size, and ``folder/review.csv`` with one row per crop (a crop that cannot be
    cut gets an empty ``file`` and the reason in ``error``). Every label of ``detections`` gets
    a folder, so a crop can be moved to any of them. Folder and file names are ``safe_name``s
    (the label column keeps the label itself); CSV cells are ``csv_cell``s. Returns counts."""
    labels = sorted(set(detections["label"].to_pylist())) if detections.num_rows else []
    taken = {REVIEW_CSV.lower()}
    folders = {label: safe_name(label, taken) for label in labels}
    os.makedirs(folder, exist_ok=True)
    for name in folders.values():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    rows = detections.filter(pc.less(detections["confidence"], below_confidence)) \
        if detections.num_rows else detections
    crops = to_crops(rows.sort_by([("image_path", "ascending"), ("roi_index", "ascending")]))
    written = failed = 0
    with open(os.path.join(folder, REVIEW_CSV), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REVIEW_COLUMNS)
        last_path, image, reason = None, None, None
        for crop in crops:
            if crop.image_path != last_path:  # rows are by image: each image is read once
                last_path = crop.image_path
                image, reason = load_image(crop.image_path)
            name, error = posixpath.join(folders[crop.label], _file_name(crop.image_path,
                                                                         crop.roi_index)), ""
            try:
                if image is None:
                    raise ValueError(reason)
                with open(os.path.join(folder, name), "wb") as out:
                    out.write(encode_png(cut_crop(image, crop.box, longest=None)))
                written += 1
            except ValueError as exc:
                name, error = "", str(exc)
                failed += 1
            writer.writerow([csv_cell(cell) for cell in (
                name, crop.image_path, crop.roi_index, *crop.box, crop.label,
                f"{crop.confidence:.6f}", f"{crop.detector_score:.6f}", error)])
    return {"crops": written, "failed": failed, "labels": len(labels)}
