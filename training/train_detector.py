"""Train the tiny CenterNet-style defect detector and export it as an OD API style SavedModel.

Usage::

    python -m training.train_detector --output models/detector [--seed 1 --num_images 6000 ...]

Training images are rendered in memory by ``training.generate`` (no files), the same renderer
as the evaluation sets but with a different seed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import numpy as np

from training import detector
from training.generate import render_image

__all__ = ["LABEL_MAP", "render_training_set", "train"]

# Deliberately coarse: the classifier names the defect type.
LABEL_MAP = "item {\n  id: 1\n  name: 'defect'\n  display_name: 'defect'\n}\n"


def render_training_set(seed: int, num_images: int, size: int, max_defects: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render images and their stride-4 targets as stacked numpy arrays."""
    images, heats, regs, masks = [], [], [], []
    for i in range(num_images):
        pixels, objects = render_image(seed, i, size, size, max_defects=max_defects)
        heat, reg, mask = detector.make_targets(objects, size, size)
        images.append(pixels)
        heats.append(heat)
        regs.append(reg)
        masks.append(mask)
    return np.stack(images), np.stack(heats), np.stack(regs), np.stack(masks)


def train(output: str, *, seed: int, num_images: int, size: int, epochs: int, batch_size: int,
          learning_rate: float, base: int, max_defects: int,
          init_from: Optional[str] = None, keras_checkpoint: Optional[str] = None) -> dict:
    """Train, export to ``output/saved_model`` and write the label map; returns a summary."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    images, heats, regs, masks = render_training_set(seed, num_images, size, max_defects)
    t_data = time.perf_counter() - t0
    print(f"rendered {num_images} images of {size}x{size} in {t_data:.1f} s", flush=True)

    model = detector.build_model(base)
    if init_from:  # warm start from a --keras_checkpoint of an earlier run
        model.load_weights(init_from)
    print(f"parameters: {model.count_params()}", flush=True)
    steps_per_epoch = num_images // batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=epochs * steps_per_epoch, warmup_target=None, alpha=0.02)
    optimizer = keras.optimizers.Adam(schedule)

    @tf.function(jit_compile=False)
    def step(x, heat, reg, mask):
        with tf.GradientTape() as tape:
            out = model(tf.cast(x, tf.float32) / 255.0, training=True)
            hl, sl, ol = detector.centernet_loss(out, heat, reg, mask)
            loss = hl + sl + ol
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return hl, sl, ol

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(num_images)
        sums = np.zeros(3)
        te = time.perf_counter()
        for s in range(steps_per_epoch):
            b = order[s * batch_size:(s + 1) * batch_size]
            x = images[b]
            # Flips keep boxes valid when applied to the stride-4 targets as well.
            if rng.random() < 0.5:
                x, hb, rb, mb = x[:, :, ::-1], heats[b][:, :, ::-1], regs[b][:, :, ::-1], masks[b][:, :, ::-1]
                rb = rb.copy()
                rb[..., 2] = np.where(mb[..., 0] > 0, 1.0 - rb[..., 2], 0.0)
            else:
                hb, rb, mb = heats[b], regs[b], masks[b]
            losses = step(np.ascontiguousarray(x), np.ascontiguousarray(hb),
                          np.ascontiguousarray(rb), np.ascontiguousarray(mb))
            sums += [float(v) for v in losses]
        print(f"epoch {epoch + 1}/{epochs}: heat {sums[0] / steps_per_epoch:.3f} "
              f"size {sums[1] / steps_per_epoch:.3f} offset {sums[2] / steps_per_epoch:.3f} "
              f"({time.perf_counter() - te:.0f} s)", flush=True)

    if keras_checkpoint:  # kept outside models/: only the SavedModel ships
        model.save_weights(keras_checkpoint)
    saved_model = os.path.join(output, "saved_model")
    detector.export_saved_model(model, saved_model)
    with open(os.path.join(output, "label_map.pbtxt"), "w") as f:
        f.write(LABEL_MAP)
    fn = tf.saved_model.load(saved_model).signatures["serving_default"]
    check = fn(input_tensor=tf.zeros([1, 300, 420, 3], tf.uint8))
    assert check["detection_boxes"].shape == (1, detector.MAX_DETECTIONS, 4)
    summary = {"seed": seed, "num_images": num_images, "size": size, "epochs": epochs,
               "batch_size": batch_size, "learning_rate": learning_rate, "base": base,
               "max_defects": max_defects, "init_from": init_from,
               "parameters": int(model.count_params()),
               "train_seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(output, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="models/detector")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num_images", type=int, default=6000)
    parser.add_argument("--size", type=int, default=256, help="Square training image size.")
    parser.add_argument("--epochs", type=int, default=11)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--base", type=int, default=32, help="Channel width of the network.")
    parser.add_argument("--max_defects", type=int, default=10,
                        help="Defects per training image, up to (denser than the default 6).")
    parser.add_argument("--init_from", default=None, help="Weights file to start from.")
    parser.add_argument("--keras_checkpoint", default=None,
                        help="Also save the trained weights here (*.weights.h5).")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    print(json.dumps(train(args.output, seed=args.seed, num_images=args.num_images, size=args.size,
                           epochs=args.epochs, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, base=args.base,
                           max_defects=args.max_defects, init_from=args.init_from,
                           keras_checkpoint=args.keras_checkpoint)))


if __name__ == "__main__":
    main()
