"""A tiny CenterNet-style detector: model, training targets, loss and the OD API style export.

The network maps an RGB image to stride-4 maps with 5 channels: one class-agnostic centre
heatmap logit, log box width and height (in input pixels), and the sub-cell centre offset.
TensorFlow is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

__all__ = ["STRIDE", "build_model", "centernet_loss", "export_saved_model",
           "fused_batch_norm_layer", "make_targets"]

STRIDE = 4
MAX_DETECTIONS = 100
# Padding so that every pyramid level divides evenly.
_PAD_MULTIPLE = 32


def build_model(base: int = 24, stem: str = "patch") -> Any:
    """Build the Keras detector; input float RGB in [0, 1], any size divisible by 32.

    ``stem="patch"`` reaches stride 4 with one 4x4 stride-4 convolution (a patchify stem);
    ``stem="conv"`` with two strided 3x3 convolutions (the first bundled detector's stem, about
    a third slower to train on CPU).
    """
    import keras
    from keras import layers

    norm = fused_batch_norm_layer()

    def conv(x, ch, stride=1, k=3):
        x = layers.Conv2D(ch, k, strides=stride, padding="same", use_bias=False)(x)
        x = norm()(x)
        return layers.ReLU()(x)

    def sep(x, ch, stride=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = norm()(x)
        x = layers.ReLU()(x)
        return conv(x, ch, k=1)

    inputs = keras.Input((None, None, 3))
    if stem == "patch":
        c4 = sep(sep(conv(inputs, base, 4, k=4), base), base)  # stride 4
    elif stem == "conv":
        x = conv(inputs, base // 2 + 4, 2)           # stride 2
        c4 = sep(conv(x, base, 2), base)             # stride 4
    else:
        raise ValueError(f"unknown stem {stem!r}: use 'patch' or 'conv'")
    c8 = sep(sep(c4, base * 2, 2), base * 2)     # stride 8
    c16 = sep(sep(c8, base * 3, 2), base * 3)    # stride 16
    c32 = sep(sep(sep(c16, base * 4, 2), base * 4), base * 4)  # stride 32
    p = conv(c32, base * 2, k=1)
    p = layers.Add()([layers.UpSampling2D(2)(p), conv(c16, base * 2, k=1)])
    p = sep(p, base * 2)
    p = layers.Add()([layers.UpSampling2D(2)(p), conv(c8, base * 2, k=1)])
    p = sep(p, base)
    p = layers.Add()([layers.UpSampling2D(2)(p), conv(c4, base, k=1)])
    p = sep(sep(p, base), base)
    heat = layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-math.log(99.0)))(p)
    box = layers.Conv2D(4, 1)(p)
    outputs = layers.Concatenate()([heat, box])
    return keras.Model(inputs, outputs, name="tiny_centernet")


@functools.cache
def fused_batch_norm_layer() -> Any:
    """A batch norm layer that runs TensorFlow's fused kernel (``FusedBatchNormV3``).

    Keras 3 computes batch norm from separate moment and arithmetic ops; on CPU that was about
    40% of a training step of this network; the fused kernel makes a step about 1.35x faster.
    The detector is TensorFlow-only (it ships as a SavedModel), so the TF op is fine.
    """
    import keras
    import tensorflow as tf

    class FusedBatchNorm(keras.layers.Layer):
        def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs: Any):
            super().__init__(**kwargs)
            self.momentum, self.epsilon = momentum, epsilon

        def build(self, input_shape: Any) -> None:
            channels = (input_shape[-1],)
            self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
            self.moving_mean = self.add_weight(shape=channels, initializer="zeros",
                                               trainable=False, name="moving_mean")
            self.moving_variance = self.add_weight(shape=channels, initializer="ones",
                                                   trainable=False, name="moving_variance")

        def call(self, x: Any, training: Any = None) -> Any:
            if training:
                y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                    x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
                keep = self.momentum
                self.moving_mean.assign(self.moving_mean * keep + mean * (1 - keep))
                self.moving_variance.assign(
                    self.moving_variance * keep + variance * (1 - keep))
                return y
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=False)
            return y

        def get_config(self) -> dict:
            return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}

    return FusedBatchNorm


def make_targets(objects: list[dict[str, Any]], height: int,
                 width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (heatmap [h, w, 1], regression [h, w, 4], mask [h, w, 1]) at stride 4.

    Regression channels: log(box w), log(box h), centre offset x, y within the cell.
    """
    oh, ow = height // STRIDE, width // STRIDE
    heat = np.zeros((oh, ow, 1), np.float32)
    reg = np.zeros((oh, ow, 4), np.float32)
    mask = np.zeros((oh, ow, 1), np.float32)
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float32)
    for obj in objects:
        x, y, w, h = obj["bbox"]
        cx, cy = (x + w / 2) / STRIDE, (y + h / 2) / STRIDE
        ix, iy = min(int(cx), ow - 1), min(int(cy), oh - 1)
        r = _gaussian_radius(h / STRIDE, w / STRIDE)
        sigma = (2 * r + 1) / 6.0
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
        heat[..., 0] = np.maximum(heat[..., 0], g)
        heat[iy, ix, 0] = 1.0
        reg[iy, ix] = (math.log(w), math.log(h), cx - ix, cy - iy)
        mask[iy, ix, 0] = 1.0
    return heat, reg, mask


def _gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the centre may move this far and keep IoU >= min_overlap."""
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return max(0.0, min(r1, r2, r3))


def centernet_loss(outputs: Any, heat: Any, reg: Any, mask: Any) -> tuple[Any, Any, Any]:
    """Penalty-reduced focal loss on the heatmap, L1 on log-size and offset at centres."""
    import tensorflow as tf

    p = tf.clip_by_value(tf.sigmoid(outputs[..., :1]), 1e-4, 1 - 1e-4)
    pos = tf.cast(tf.equal(heat, 1.0), tf.float32)
    num_pos = tf.maximum(tf.reduce_sum(pos), 1.0)
    pos_loss = -tf.reduce_sum(pos * tf.square(1 - p) * tf.math.log(p))
    neg_loss = -tf.reduce_sum((1 - pos) * tf.pow(1 - heat, 4) * tf.square(p) * tf.math.log(1 - p))
    heat_loss = (pos_loss + neg_loss) / num_pos
    l1 = tf.abs(outputs[..., 1:] - reg) * mask
    size_loss = tf.reduce_sum(l1[..., :2]) / num_pos
    off_loss = tf.reduce_sum(l1[..., 2:]) / num_pos
    return heat_loss, size_loss, off_loss


def export_saved_model(model: Any, path: str, *, score_floor: float = 0.05,
                       iou_threshold: float = 0.5, top_k: int = 200) -> None:
    """Export ``model`` as a TF2 OD API style SavedModel (``serving_default``, uint8 input)."""
    import tensorflow as tf

    class Detector(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[
            tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def __call__(self, input_tensor):
            shape = tf.shape(input_tensor)
            h, w = shape[1], shape[2]
            ph = (_PAD_MULTIPLE - h % _PAD_MULTIPLE) % _PAD_MULTIPLE
            pw = (_PAD_MULTIPLE - w % _PAD_MULTIPLE) % _PAD_MULTIPLE
            x = tf.cast(input_tensor, tf.float32) / 255.0
            x = tf.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]], mode="SYMMETRIC")
            out = self.net(x, training=False)[0]
            heat = tf.sigmoid(out[..., 0])
            pooled = tf.nn.max_pool2d(heat[None, ..., None], 3, 1, "SAME")[0, ..., 0]
            peaks = tf.where(tf.equal(pooled, heat), heat, 0.0)
            ow = tf.shape(heat)[1]
            scores, idx = tf.math.top_k(tf.reshape(peaks, [-1]), k=tf.minimum(
                top_k, tf.size(peaks)))
            iy, ix = idx // ow, idx % ow
            r = tf.gather_nd(out[..., 1:], tf.stack([iy, ix], 1))
            cx = (tf.cast(ix, tf.float32) + r[:, 2]) * STRIDE
            cy = (tf.cast(iy, tf.float32) + r[:, 3]) * STRIDE
            bw, bh = tf.exp(tf.minimum(r[:, 0], 8.0)), tf.exp(tf.minimum(r[:, 1], 8.0))
            hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
            boxes = tf.stack([tf.clip_by_value((cy - bh / 2) / hf, 0.0, 1.0),
                              tf.clip_by_value((cx - bw / 2) / wf, 0.0, 1.0),
                              tf.clip_by_value((cy + bh / 2) / hf, 0.0, 1.0),
                              tf.clip_by_value((cx + bw / 2) / wf, 0.0, 1.0)], 1)
            # NMS in pixel space: normalized boxes of a non-square image would distort IoU.
            scale = tf.stack([hf, wf, hf, wf])
            keep = tf.image.non_max_suppression(boxes * scale, scores, MAX_DETECTIONS,
                                                iou_threshold=iou_threshold,
                                                score_threshold=score_floor)
            n = tf.shape(keep)[0]
            pad = MAX_DETECTIONS - n
            det_boxes = tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]])
            det_scores = tf.pad(tf.gather(scores, keep), [[0, pad]])
            det_classes = tf.pad(tf.ones([n], tf.float32), [[0, pad]])
            return {
                "detection_boxes": tf.reshape(det_boxes, [1, MAX_DETECTIONS, 4]),
                "detection_scores": tf.reshape(det_scores, [1, MAX_DETECTIONS]),
                "detection_classes": tf.reshape(det_classes, [1, MAX_DETECTIONS]),
                "num_detections": tf.reshape(tf.cast(n, tf.float32), [1]),
            }

    module = Detector(model)
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
