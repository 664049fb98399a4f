"""Fine-tune a classifier on a review folder of corrected crops (the end of the review loop).

Usage::

    python -m beam_pipeline.report --runs OUTPUT --export_review review/ --below_confidence 0.9
    # a person moves each wrongly labelled PNG into the folder of its right label
    python -m training.finetune --review review/ --output models/classifier_ft

The review folder holds one folder per label (``review/<label>/*.png``, crops at their native
size, as ``--export_review`` writes them); a crop's label is the folder it is in now. Crops are
resized as the pipeline resizes them, mixed with freshly rendered training crops
(``make_crops``, so the model keeps what it knew) and trained for a few epochs at a low learning
rate from the given classifier. Writes ``classifier.keras`` and ``labels.txt`` under
``--output``.

A folder whose name starts with ``_`` (``_unsure/``) is ignored: the place for crops nobody can
name. Batch normalization layers stay frozen (their statistics come from the full training set).

``--relabel_from ANNOTATIONS`` plays the person for generated data: before training it moves
every crop (``review.csv``'s paths and boxes) to the folder of the ground-truth box it overlaps
with IoU >= 0.5; a crop that covers no defect by more than 10% of either's area (the trainer's
rule for background) to ``background``; anything between to ``_unsure``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from collections.abc import Sequence

import cv2
import numpy as np

from training.train_classifier import BACKGROUND_ID, INPUT_SIZE, LABELS, _augment, make_crops
from transforms.boxes import intersection_areas, iou_matrix, resize_to

__all__ = ["finetune", "read_review_folder", "relabel_from_annotations"]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
BACKGROUND_OVERLAP = 0.1  # train_classifier's background crops overlap defects at most this


def read_review_folder(folder: str, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Crops of ``folder/<label>/`` resized to the classifier's input (uint8) and their label
    ids. Raises ValueError for a folder holding pictures whose name is not a label."""
    crops, ids, unknown = [], [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isdir(path) or name.startswith("_"):
            continue
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(PICTURE_SUFFIXES))
        if name not in labels:
            if files:
                unknown.append(name)
            continue
        for file in files:
            bgr = cv2.imread(os.path.join(path, file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{os.path.join(path, file)} is not a readable picture")
            crops.append(resize_to(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), INPUT_SIZE, INPUT_SIZE))
            ids.append(labels.index(name))
    if unknown:
        raise ValueError(f"folders {unknown} in {folder} are not labels of the classifier "
                         f"({', '.join(labels)}): move their crops into a label's folder")
    if not crops:
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8), np.zeros((0,), np.int32)
    return np.stack(crops), np.array(ids, np.int32)


def relabel_from_annotations(folder: str, annotations: str, *, iou: float = 0.5) -> dict:
    """Moves each crop of ``review.csv`` to the folder of the ground-truth box (COCO, matched by
    the image's basename) it overlaps most with IoU >= ``iou``; to ``background`` when it
    covers no box by more than ``BACKGROUND_OVERLAP`` of either's area; else to ``_unsure``."""
    with open(annotations) as handle:
        coco = json.load(handle)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_file = {os.path.basename(im["file_name"]): im["id"] for im in coco["images"]}
    boxes: dict[int, list[tuple[list[float], str]]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append(([y, x, y + h, x + w], names[a["category_id"]]))
    moved = kept = 0
    with open(os.path.join(folder, "review.csv"), newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["file"]]
    for row in rows:
        truth = boxes.get(by_file.get(os.path.basename(row["image_path"])), [])
        box = [float(row[k]) for k in ("box_ymin", "box_xmin", "box_ymax", "box_xmax")]
        label = LABELS[BACKGROUND_ID]
        if truth:
            gts = np.array([b for b, _ in truth], np.float64)
            overlaps = iou_matrix(np.array([box]), gts)[0]
            areas = np.minimum((box[2] - box[0]) * (box[3] - box[1]),
                               (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]))
            covered = intersection_areas(np.array([box]), gts)[0] / np.maximum(areas, 1e-9)
            if overlaps.max() >= iou:
                label = truth[int(np.argmax(overlaps))][1]
            elif covered.max() > BACKGROUND_OVERLAP:
                label = "_unsure"
        source = os.path.join(folder, row["file"])
        target = os.path.join(folder, label, os.path.basename(row["file"]))
        if os.path.exists(source) and source != target:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
            moved += 1
        else:
            kept += 1
    return {"moved": moved, "kept": kept}


def finetune(classifier: str, review: str, output: str, *, labels: Sequence[str] = LABELS,
             epochs: int = 4, learning_rate: float = 3e-4, batch_size: int = 64,
             replay_images: int = 300, review_repeats: int = 4, seed: int = 7) -> dict:
    """Trains ``classifier`` further on the review crops plus replayed training crops; saves
    ``output/classifier.keras`` and ``output/labels.txt``; returns a summary."""
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    x_review, y_review = read_review_folder(review, labels)
    if not len(x_review):
        raise ValueError(f"no crops in the label folders of {review}")
    x_replay, y_replay = make_crops(seed + 20000, replay_images) if replay_images else (
        x_review[:0], y_review[:0])
    x = np.concatenate([np.repeat(x_review, review_repeats, axis=0), x_replay])
    y = np.concatenate([np.repeat(y_review, review_repeats), y_replay])
    model = keras.models.load_model(classifier, safe_mode=True)
    for layer in model.layers:  # frozen: a few hundred crops must not move the statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    if model.output_shape[-1] != len(labels):
        raise ValueError(f"{classifier} has {model.output_shape[-1]} outputs for "
                         f"{len(labels)} labels")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    steps = max(1, len(x) // batch_size)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = [model.train_on_batch(_augment(rng, x[b]), y[b])[0]
                  for b in (order[s * batch_size:(s + 1) * batch_size] for s in range(steps))]
        print(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}", flush=True)
    os.makedirs(output, exist_ok=True)
    model.save(os.path.join(output, "classifier.keras"))
    with open(os.path.join(output, "labels.txt"), "w") as handle:
        handle.write("\n".join(labels) + "\n")
    review_pred = np.argmax(model(x_review.astype(np.float32) / 255.0, training=False), axis=1)
    return {"review_crops": len(x_review),
            "review_per_label": {n: int(c) for n, c in zip(
                labels, np.bincount(y_review, minlength=len(labels)))},
            "replay_crops": len(x_replay), "epochs": epochs,
            "learning_rate": learning_rate, "seed": seed,
            "review_accuracy_after": round(float(np.mean(review_pred == y_review)), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--review", required=True, help="folder written by --export_review")
    parser.add_argument("--output", required=True, help="folder for the fine-tuned model")
    parser.add_argument("--classifier", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "classifier",
        "classifier.keras"), help="Keras classifier to start from")
    parser.add_argument("--labels", default=None,
                        help="labels file (default: labels.txt beside --classifier)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--replay_images", type=int, default=300,
                        help="generated images whose crops are mixed in (0: review crops only)")
    parser.add_argument("--review_repeats", type=int, default=4,
                        help="times each review crop is repeated per epoch")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--relabel_from", default=None,
                        help="COCO annotations: move crops to their true label first "
                             "(generated data only)")
    args = parser.parse_args(argv)
    labels_path = args.labels or os.path.join(os.path.dirname(args.classifier), "labels.txt")
    with open(labels_path) as handle:
        labels = [line.strip() for line in handle if line.strip()]
    if args.relabel_from:
        print(json.dumps({"relabel": relabel_from_annotations(args.review, args.relabel_from)}))
    print(json.dumps(finetune(args.classifier, args.review, args.output, labels=labels,
                              epochs=args.epochs, learning_rate=args.learning_rate,
                              replay_images=args.replay_images,
                              review_repeats=args.review_repeats, seed=args.seed)))


if __name__ == "__main__":
    main()
