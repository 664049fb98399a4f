"""Train the tiny CenterNet-style defect detector and export it as an OD API style SavedModel.

Usage::

    python -m training.train_detector --output models/detector [--seed 1 --num_images 8000 ...]

The defaults are the settings of the bundled detector (about 13 minutes on 2 CPU cores).
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
from training.common import add_common_flags, write_summary
from training.generate import render_image

__all__ = ["LABEL_MAP", "augment_batch", "render_training_set", "train"]

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


def augment_batch(x: np.ndarray, heat: np.ndarray, reg: np.ndarray, mask: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Apply one random symmetry of the square (flips, transpose) to a batch and its targets.

    All eight symmetries keep the stride-4 targets exact, so they are applied to the maps
    directly: a flip mirrors the centre offset within its cell (``o -> 1 - o``), a transpose swaps
    width with height and the x offset with the y offset. Eight views of every rendered image make a
    fixed training set behave much more like fresh data, at almost no cost.
    """
    reg = reg.copy()
    if rng.random() < 0.5:  # horizontal flip (axis 2 is x)
        x, heat, reg, mask = x[:, :, ::-1], heat[:, :, ::-1], reg[:, :, ::-1], mask[:, :, ::-1]
        reg[..., 2] = np.where(mask[..., 0] > 0, 1.0 - reg[..., 2], 0.0)
    if rng.random() < 0.5:  # vertical flip
        x, heat, reg, mask = x[:, ::-1], heat[:, ::-1], reg[:, ::-1], mask[:, ::-1]
        reg[..., 3] = np.where(mask[..., 0] > 0, 1.0 - reg[..., 3], 0.0)
    if rng.random() < 0.5:  # transpose: x <-> y
        x, heat, reg, mask = (a.transpose(0, 2, 1, 3) for a in (x, heat, reg, mask))
        reg = reg[..., [1, 0, 3, 2]]
    return tuple(np.ascontiguousarray(a) for a in (x, heat, reg, mask))


def train(output: str, *, seed: int, num_images: int, size: int, epochs: int, batch_size: int,
          learning_rate: float, base: int, max_defects: int, stem: str = "patch",
          init_from: Optional[str] = None, keras_checkpoint: Optional[str] = None) -> dict:
    """Train, export to ``output/saved_model`` and write the label map; returns a summary."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    images, heats, regs, masks = render_training_set(seed, num_images, size, max_defects)
    t_data = time.perf_counter() - t0
    print(f"rendered {num_images} images of {size}x{size} in {t_data:.1f} s", flush=True)

    model = detector.build_model(base, stem)
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
            x, hb, rb, mb = augment_batch(images[b], heats[b], regs[b], masks[b], rng)
            losses = step(x, hb, rb, mb)
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
               "batch_size": batch_size, "learning_rate": learning_rate, "base": base, "stem": stem,
               "max_defects": max_defects, "init_from": init_from}
    return write_summary(output, summary, model=model, start=t0)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, output="models/detector", seed=1, num_images=8000, epochs=18,
                     batch_size=16, learning_rate=3e-3)
    parser.add_argument("--size", type=int, default=256, help="Square training image size.")
    parser.add_argument("--base", type=int, default=32, help="Channel width of the network.")
    parser.add_argument("--stem", choices=["patch", "conv"], default="patch",
                        help="How the network reaches stride 4 (see training.detector).")
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
                           max_defects=args.max_defects, stem=args.stem,
                           init_from=args.init_from,
                           keras_checkpoint=args.keras_checkpoint)))


if __name__ == "__main__":
    main()
