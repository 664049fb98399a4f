"""Tests of the synthetic wafer-inspection generator (no TensorFlow, no training)."""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from training import generate


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_generate_dataset_same_seed_is_byte_identical(tmp_path, image_format):
    a = generate.generate_dataset(str(tmp_path / "a"), 4, seed=7, width=160, height=128,
                                  image_format=image_format)
    generate.generate_dataset(str(tmp_path / "b"), 4, seed=7, width=160, height=128,
                                  image_format=image_format)
    assert os.path.basename(a) == "annotations.json"
    da, db = _digest(str(tmp_path / "a")), _digest(str(tmp_path / "b"))
    assert da == db
    assert len(da) == 5  # 4 images + annotations.json


def test_generate_dataset_other_seed_differs(tmp_path):
    generate.generate_dataset(str(tmp_path / "a"), 2, seed=1, width=96, height=96)
    generate.generate_dataset(str(tmp_path / "b"), 2, seed=2, width=96, height=96)
    images_a = _digest(str(tmp_path / "a" / "images"))
    images_b = _digest(str(tmp_path / "b" / "images"))
    assert set(images_a.values()).isdisjoint(images_b.values())


def test_generate_dataset_coco_layout(tmp_path):
    path = generate.generate_dataset(str(tmp_path), 6, seed=3, width=200, height=150)
    with open(path) as f:
        coco = json.load(f)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in coco["categories"]] == [
        "particle", "scratch", "stain", "bridge", "void"]
    ids = {im["id"] for im in coco["images"]}
    assert len(ids) == 6
    for im in coco["images"]:
        assert (im["width"], im["height"]) == (200, 150)
        pixels = cv2.imread(os.path.join(str(tmp_path), "images", im["file_name"]))
        assert pixels.shape == (150, 200, 3) and pixels.dtype == np.uint8
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for a in coco["annotations"]:
        assert a["image_id"] in ids
        assert a["iscrowd"] == 0
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def test_render_image_annotation_sanity():
    width, height = 512, 384
    counts, categories, touching_border = [], set(), 0
    for index in range(40):
        pixels, objects = generate.render_image(11, index, width, height)
        assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8
        counts.append(len(objects))
        for obj in objects:
            x, y, w, h = obj["bbox"]
            assert 0 <= x and 0 <= y and w >= 4 and h >= 4
            assert x + w <= width and y + h <= height
            assert obj["category_id"] in generate.CATEGORY_NAMES
            categories.add(obj["category_id"])
            touching_border += x == 0 or y == 0 or x + w == width or y + h == height
    assert min(counts) >= 0 and max(counts) <= generate.MAX_DEFECTS
    assert 0 in counts or min(counts) <= 1  # empty or nearly empty images occur
    assert categories == {1, 2, 3, 4, 5}
    assert touching_border > 0


def test_main_cli(tmp_path, capsys):
    generate.main(["--output", str(tmp_path), "--num_images", "2", "--seed", "4",
                   "--width", "64", "--height", "64", "--format", "jpg"])
    assert capsys.readouterr().out.strip().endswith("annotations.json")
    assert sorted(os.listdir(tmp_path / "images")) == ["wafer_4_000000.jpg", "wafer_4_000001.jpg"]
