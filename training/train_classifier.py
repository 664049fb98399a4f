"""Train the small Keras CNN that names a detected region's defect type (or background).

Usage::

    python -m training.train_classifier --output models/classifier [--seed 2 --num_images 3000 ...]

The defaults are the settings of the bundled classifier (about 12 minutes on 2 CPU cores).

Input: 64x64x3 float RGB already scaled to [0, 1] by the caller (the pipeline's default
``--classifier_preprocess unit`` divides uint8 by 255; the model has no Rescaling layer).
Output: softmax over ``LABELS`` in that order (also written to ``labels.txt``).
Crops are cut exactly as the pipeline cuts them (``transforms.boxes``: ``clip_boxes``,
``crop_box``, ``resize_to``) from ground-truth boxes with random jitter, plus background boxes
that barely touch any defect.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Optional

import numpy as np

from training.common import add_common_flags, write_summary
from training.generate import CATEGORY_NAMES, render_image
from transforms.boxes import clip_boxes, crop_box, intersection_areas, resize_to

__all__ = ["INPUT_SIZE", "LABELS", "build_model", "make_crops", "train"]

INPUT_SIZE = 64
LABELS = [CATEGORY_NAMES[k] for k in sorted(CATEGORY_NAMES)] + ["background"]
BACKGROUND_ID = len(LABELS) - 1


def _overlap_fraction(box: np.ndarray, gts: np.ndarray) -> float:
    """Largest fraction of ``box`` (y0, x0, y1, x1) covered by one of ``gts``."""
    if len(gts) == 0:
        return 0.0
    box = np.asarray(box, np.float64)
    gt_area = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    # Covered part of the box, or of the defect: a box inside a big stain is not background.
    return float(np.max(intersection_areas(box, gts)[0]
                        / np.minimum((box[2] - box[0]) * (box[3] - box[1]), gt_area)))


def make_crops(seed: int, num_images: int, *, size: int = 512, jitters: int = 2,
               backgrounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Render images and cut jittered defect crops and background crops (uint8, int labels)."""
    rng = np.random.default_rng([seed, 10 ** 6])
    crops, labels = [], []
    for i in range(num_images):
        pixels, objects = render_image(seed, i, size, size)
        gts = np.array([[y, x, y + h, x + w] for x, y, w, h in (o["bbox"] for o in objects)],
                       float).reshape(-1, 4)
        for o, gt in zip(objects, gts):
            bh, bw = gt[2] - gt[0], gt[3] - gt[1]
            for _ in range(jitters):
                # Each edge moves by up to 15% of the box size: detector boxes are not exact.
                d = rng.uniform(-0.15, 0.15, 4) * np.array([bh, bw, bh, bw])
                box = clip_boxes(gt + d, size, size)[0]
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                crops.append(resize_to(crop_box(pixels, box), INPUT_SIZE, INPUT_SIZE))
                labels.append(o["category_id"] - 1)
        made = tries = 0
        while made < backgrounds and tries < 50:
            tries += 1
            bh, bw = np.exp(rng.uniform(np.log(5), np.log(160), 2))
            y0 = rng.uniform(-bh / 4, size - 3 * bh / 4)
            x0 = rng.uniform(-bw / 4, size - 3 * bw / 4)
            box = clip_boxes([y0, x0, y0 + bh, x0 + bw], size, size)[0]
            if box[2] - box[0] < 3 or box[3] - box[1] < 3 or _overlap_fraction(box, gts) > 0.1:
                continue
            crops.append(resize_to(crop_box(pixels, box), INPUT_SIZE, INPUT_SIZE))
            labels.append(BACKGROUND_ID)
            made += 1
    return np.stack(crops), np.array(labels, np.int32)


def build_model() -> Any:
    """Four conv blocks, global pooling, softmax over ``LABELS``; float input in [0, 1]."""
    import keras
    from keras import layers

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="crop")
    x = inputs
    for i, ch in enumerate((32, 64, 96, 128)):
        x = layers.Conv2D(ch, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        if i < 3:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="defect_classifier")


def _augment(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Flips and 90-degree turns (defects have no preferred orientation), brightness jitter."""
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.5:
        x = np.transpose(x, (0, 2, 1, 3))
    gain = rng.uniform(0.85, 1.15, (len(x), 1, 1, 1)).astype(np.float32)
    return np.clip(x.astype(np.float32) / 255.0 * gain, 0.0, 1.0)


def train(output: str, *, seed: int, num_images: int, val_images: int, epochs: int,
          batch_size: int, learning_rate: float) -> dict:
    """Train, save ``classifier.keras`` and ``labels.txt`` under ``output``; returns a summary."""
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    x_train, y_train = make_crops(seed, num_images)
    x_val, y_val = make_crops(seed + 10 ** 4, val_images)
    print(f"crops: {len(x_train)} train, {len(x_val)} val "
          f"(per class {np.bincount(y_train, minlength=len(LABELS)).tolist()}) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)

    model = build_model()
    steps = epochs * (len(x_train) // batch_size)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.02)),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    x_val_f = x_val.astype(np.float32) / 255.0
    for epoch in range(epochs):
        te = time.perf_counter()
        order = rng.permutation(len(x_train))
        losses = []
        for s in range(len(x_train) // batch_size):
            b = order[s * batch_size:(s + 1) * batch_size]
            losses.append(model.train_on_batch(_augment(rng, x_train[b]), y_train[b]))
        val_loss, val_acc = model.evaluate(x_val_f, y_val, batch_size=256, verbose=0)
        print(f"epoch {epoch + 1}/{epochs}: loss {np.mean([v[0] for v in losses]):.4f} "
              f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} "
              f"({time.perf_counter() - te:.0f} s)", flush=True)

    model.save(os.path.join(output, "classifier.keras"))
    with open(os.path.join(output, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    reloaded = keras.models.load_model(os.path.join(output, "classifier.keras"), safe_mode=True)
    pred = np.argmax(reloaded(x_val_f[:512], training=False), axis=1)
    summary = {"seed": seed, "num_images": num_images, "val_images": val_images,
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "train_crops": len(x_train), "val_crops": len(x_val),
               "val_accuracy": round(float(val_acc), 4),
               "reloaded_accuracy_first_512": round(float(np.mean(pred == y_val[:512])), 4)}
    return write_summary(output, summary, model=model, start=t0)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, output="models/classifier", seed=2, num_images=3000, epochs=16,
                     batch_size=64, learning_rate=2e-3)
    parser.add_argument("--val_images", type=int, default=200)
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    print(json.dumps(train(args.output, seed=args.seed, num_images=args.num_images,
                           val_images=args.val_images, epochs=args.epochs,
                           batch_size=args.batch_size, learning_rate=args.learning_rate)))


if __name__ == "__main__":
    main()
