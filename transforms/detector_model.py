"""DetectorModel: a loaded detection SavedModel, fed as its signature asks, its boxes normalized."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transforms.box_formats import (
    AUTO,
    IMAGE_INFO,
    NORMALIZED,
    box_range_problem,
    decide_box_format,
    describe_box_format,
    probe_image,
    to_normalized,
)
from transforms.detector_feeds import feed, pad_for_detector, unpad
from transforms.detector_signature import (
    IMAGE_INFO_KEY,
    MODEL_GARDEN,
    OD_API,
    OD_API_OUTPUT_KEYS,
    READ_KEYS,
    SIGNATURE_NAME,
    graph_op_types,
    parse_detections,
    recognise_input,
)
from transforms.records import Detections, short_message

__all__ = ["DetectorModel"]


class DetectorModel:
    """A loaded OD API or Model Garden SavedModel: its ``serving_default`` signature, how to
    feed it and how to read its boxes.

    Attributes:
        input_key: the signature's input name (``input_tensor``; ``inputs`` for TF1 and Model
            Garden exports).
        input_type: the OD API ``--input_type`` whose feed this signature takes (``INPUT_TYPES``).
        batchable: whether the batch dimension is free (same-size images share one call).
        family: ``OD_API``, or ``MODEL_GARDEN`` when the signature has an ``image_info`` output.
        box_format: the box convention read (``transforms.box_formats``); with ``auto``, the
            family's default until ``prove_box_format`` runs the probe.
    """

    def __init__(self, path: str, *, box_format: str = AUTO):
        import tensorflow as tf

        # Keep the loaded object alive: the signature's variables belong to it.
        self._loaded = tf.saved_model.load(path)
        signatures = getattr(self._loaded, "signatures", {})
        if SIGNATURE_NAME not in signatures:
            raise ValueError(
                f"{path} has no '{SIGNATURE_NAME}' signature (found {sorted(signatures)}); "
                "export it with the TF Object Detection API exporter")
        self._fn = signatures[SIGNATURE_NAME]
        try:
            self.input = recognise_input(self._fn.structured_input_signature[1],
                                         lambda: graph_op_types(self._fn))
        except ValueError as exc:
            raise ValueError(f"{path}: '{SIGNATURE_NAME}' {exc}") from None
        self.input_key = self.input.key
        self.input_type = self.input.input_type
        self.batchable = self.input.batchable
        missing = [k for k in OD_API_OUTPUT_KEYS if k not in self._fn.structured_outputs]
        if missing:
            raise ValueError(f"{path}: '{SIGNATURE_NAME}' lacks outputs {missing}; "
                             f"an OD API detector returns {list(OD_API_OUTPUT_KEYS)}")
        self._tf = tf
        has_image_info = IMAGE_INFO_KEY in self._fn.structured_outputs
        self.family = MODEL_GARDEN if has_image_info else OD_API
        if box_format == IMAGE_INFO and not has_image_info:
            raise ValueError(f"{path}: --detector_box_format=image_info, but '{SIGNATURE_NAME}' "
                             "has no image_info output to map boxes with")
        self._requested = box_format
        if box_format == AUTO:  # until the probe says otherwise: the exporter's default
            box_format = IMAGE_INFO if has_image_info else NORMALIZED
            self.box_format_how = "the exporter's default, not probed"
        else:
            self.box_format_how = "stated"
        self.box_format = box_format

    def describe(self) -> str:
        """One line: the family and input type recognised, its dtype, shape and name, the
        feed, and the box convention with how it was decided."""
        return (f"{self.input.describe(self.family)}; {describe_box_format(self.box_format)} "
                f"({self.box_format_how})")

    def prove_box_format(self) -> str:
        """Runs the probe image and decides (``auto``) or checks (a stated convention) how the
        boxes are expressed; sets and returns ``box_format``.

        A probe that gives no boxes (or whose call fails) cannot refuse: the family's default
        or the stated convention stays, and the run-time check guards every image.

        Raises:
            ValueError: one line naming what the probe saw and the flag that overrides it.
        """
        image = probe_image()
        try:
            outputs = self._call([image], with_image_info=self.family == MODEL_GARDEN)
            boxes = parse_detections(outputs, 0).boxes
            info = outputs[IMAGE_INFO_KEY][0] if IMAGE_INFO_KEY in outputs else None
        except Exception:  # noqa: BLE001  # pylint: disable=broad-except
            boxes, info = None, None
        self.box_format, self.box_format_how = decide_box_format(
            self._requested, has_image_info=self.family == MODEL_GARDEN, boxes=boxes,
            height=image.shape[0], width=image.shape[1], image_info=info)
        return self.box_format

    def _call(self, images: Sequence[np.ndarray], *,
              with_image_info: bool = False) -> dict[str, np.ndarray]:
        outputs = self._fn(**{self.input_key: feed(self.input_type, images, self._tf)})
        # Masks, keypoints and raw detections can be large: only what is read leaves TF.
        keys = (*READ_KEYS, IMAGE_INFO_KEY) if (
            with_image_info or self.box_format == IMAGE_INFO) else READ_KEYS
        return {key: outputs[key].numpy() for key in keys if key in outputs}

    def _read(self, outputs: Mapping[str, np.ndarray], index: int,
              image: np.ndarray) -> Detections:
        """Entry ``index`` with its boxes normalized to ``image``; an error when they are
        outside the range of the convention read (never dropped in silence)."""
        found = parse_detections(outputs, index)
        height, width = image.shape[:2]
        info = outputs[IMAGE_INFO_KEY][index] if self.box_format == IMAGE_INFO else None
        problem = box_range_problem(found.boxes, self.box_format, height, width, info)
        if problem is not None:
            return Detections.failed(short_message(
                f"{problem} (boxes read as {self.box_format}; --detector_box_format states "
                "the convention)"))
        return dataclasses.replace(
            found, boxes=to_normalized(found.boxes, self.box_format, height, width, info))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detects objects in each RGB uint8 image; a failing image gets an error, not a raise.

        Boxes are normalized to each image's own size, from the convention ``box_format``; an
        image whose boxes are outside that convention's range gets an error. Same-size images
        share one call when the batch dimension is free; otherwise each image is its own call.
        Images with a side under ``MIN_DETECTOR_SIDE`` are padded for the call
        (``pad_for_detector``).
        """
        padded = [pad_for_detector(image) for image in images]
        results = self._detect([image for image, _ in padded])
        return [unpad(found, factors) for found, (_, factors) in zip(results, padded)]

    def _detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if self.batchable and len(images) > 1 and len({im.shape for im in images}) == 1:
            try:
                outputs = self._call(images)
                return [self._read(outputs, i, image) for i, image in enumerate(images)]
            except Exception:  # noqa: BLE001, S110  # pylint: disable=broad-except
                pass  # fall back to one call per image, so only the bad image fails
        results = []
        for image in images:
            try:
                results.append(self._read(self._call([image]), 0, image))
            except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except
                results.append(Detections.failed(short_message(f"{type(exc).__name__}: {exc}")))
        return results

    def detect_tiled(self, image: np.ndarray, tiling: Any) -> Detections:
        """Detects objects in overlapping tiles of one image and merges them
        (``transforms.tiles.detect_tiled``); a method so that it also works through the proxy
        Beam uses for ``--model_copies``."""
        from transforms.tiles import detect_tiled

        return detect_tiled(self, image, tiling)
