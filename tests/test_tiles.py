"""Tiled detection: tile geometry (hypothesis), the seam merge, and detect_tiled with fake and
small real SavedModel detectors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.records import Detections
from transforms.tiles import (
    TilingConfig,
    detect_tiled,
    merge_detections,
    overlap_pixels,
    tile_grid,
)

sizes = st.integers(1, 300)
tile_sizes = st.integers(1, 120)
overlaps = st.floats(0.0, 0.49)


# --- tile geometry -------------------------------------------------------------------------

@settings(deadline=None)  # a shared CPU: no timed assertions
@given(sizes, sizes, tile_sizes, overlaps)
def test_tile_grid_covers_every_pixel_with_equal_tiles_inside_the_image(height, width, tile,
                                                                       overlap):
    grid = tile_grid(height, width, tile, overlap)
    assert grid.dtype == np.int64 and grid.shape[1] == 4
    assert (grid[:, 0] >= 0).all() and (grid[:, 1] >= 0).all()
    assert (grid[:, 2] <= height).all() and (grid[:, 3] <= width).all()
    assert set(grid[:, 2] - grid[:, 0]) == {min(tile, height)}
    assert set(grid[:, 3] - grid[:, 1]) == {min(tile, width)}
    starts = np.zeros((height + 1, width + 1), np.int32)  # 2-D running sum of tile corners
    np.add.at(starts, (grid[:, 0], grid[:, 1]), 1)
    np.add.at(starts, (grid[:, 2], grid[:, 1]), -1)
    np.add.at(starts, (grid[:, 0], grid[:, 3]), -1)
    np.add.at(starts, (grid[:, 2], grid[:, 3]), 1)
    covered = starts.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    assert covered.min() >= 1
    assert len(np.unique(grid, axis=0)) == len(grid)


@settings(deadline=None)  # a shared CPU: no timed assertions
@given(sizes, sizes, tile_sizes, overlaps)
def test_tile_grid_last_row_and_column_end_at_the_edges(height, width, tile, overlap):
    grid = tile_grid(height, width, tile, overlap)
    assert grid[:, 0].min() == 0 and grid[:, 1].min() == 0
    assert grid[:, 2].max() == height and grid[:, 3].max() == width


@settings(deadline=None)  # a shared CPU: no timed assertions
@given(sizes, tile_sizes, overlaps)
def test_tile_grid_one_tile_fewer_could_not_cover_with_the_overlap(length, tile, overlap):
    count = len(tile_grid(length, 1, tile, overlap))
    size, step = min(tile, length), tile - overlap_pixels(tile, overlap)
    if count > 1:
        assert size + (count - 2) * step < length


@settings(deadline=None)  # a shared CPU: no timed assertions
@given(sizes, tile_sizes, overlaps, st.data())
def test_tile_grid_object_within_the_overlap_is_whole_in_some_tile(length, tile, overlap,
                                                                   data):
    extent = data.draw(st.integers(1, max(1, min(length, overlap_pixels(tile, overlap)))))
    start = data.draw(st.integers(0, length - extent))
    grid = tile_grid(length, 1, tile, overlap)
    assert ((grid[:, 0] <= start) & (grid[:, 2] >= start + extent)).any()


@settings(deadline=None)  # a shared CPU: no timed assertions
@given(sizes, sizes, tile_sizes, overlaps)
def test_tile_grid_neighbours_share_at_least_the_overlap(height, width, tile, overlap):
    grid = tile_grid(height, width, tile, overlap)
    shared = overlap_pixels(tile, overlap)
    assert shared < tile / 2
    for axis, length in ((0, height), (1, width)):
        starts = np.unique(grid[:, axis])
        steps = np.diff(starts)
        assert (steps > 0).all() and (steps <= min(tile, length) - shared).all()


@pytest.mark.parametrize("height, width", [(10, 20), (512, 512), (1, 1)])
def test_tile_grid_image_smaller_than_a_tile_is_one_tile(height, width):
    assert tile_grid(height, width, 512, 0.2).tolist() == [[0, 0, height, width]]


def test_tile_grid_known_layout():
    # 64-pixel tiles, 12 shared: starts every 52, the last moved back to end at the edge.
    grid = tile_grid(100, 200, 64, 0.2)
    assert sorted(set(grid[:, 0].tolist())) == [0, 36]
    assert sorted(set(grid[:, 1].tolist())) == [0, 52, 104, 136]


@pytest.mark.parametrize("tile, overlap", [(64, -0.1), (64, 0.5), (64, 0.9), (0, 0.2),
                                           (-8, 0.2)])
def test_tile_grid_refuses_bad_tiles_and_overlaps(tile, overlap):
    with pytest.raises(ValueError, match="tile"):
        tile_grid(100, 100, tile, overlap)


# --- the seam merge -------------------------------------------------------------------------

LEFT_TILE, RIGHT_TILE = [0, 0, 64, 64], [0, 52, 64, 116]  # share columns 52..64


def test_merge_detections_cut_box_joins_its_whole_counterpart():
    whole = [10, 50, 20, 70]     # seen whole by the right tile
    cut_part = [10, 50, 20, 64]  # the left tile's view, cut at its edge: IoU 0.7, all inside
    boxes, scores, classes = merge_detections(
        np.array([cut_part, whole]), [0.9, 0.6], [1, 1], groups=[0, 1],
        regions=[LEFT_TILE, RIGHT_TILE], match_threshold=0.8)
    assert boxes.tolist() == [whole]
    assert scores.tolist() == pytest.approx([0.9])
    assert classes.tolist() == [1]


def test_merge_detections_whole_duplicates_in_an_overlap_become_the_best_one():
    boxes, scores, _ = merge_detections(
        np.array([[10, 54, 20, 60], [10.5, 54, 20.5, 60.5], [10, 53.5, 20, 60]]),
        [0.5, 0.8, 0.7], [2, 2, 2], groups=[0, 1, 2],
        regions=[LEFT_TILE, RIGHT_TILE, [0, 40, 64, 104]])
    assert boxes.tolist() == [[10.5, 54, 20.5, 60.5]]
    assert scores.tolist() == pytest.approx([0.8])


def test_merge_detections_whole_view_wins_over_a_better_scored_cut_part():
    whole, part = [10, 50, 20, 70], [10, 50, 20, 64]
    boxes, scores, _ = merge_detections(np.array([whole, part]), [0.5, 0.9], [1, 1],
                                        groups=[1, 0], regions=[RIGHT_TILE, LEFT_TILE])
    assert boxes.tolist() == [whole]
    assert scores.tolist() == pytest.approx([0.9])


def test_merge_detections_small_box_from_a_tile_that_saw_the_large_one_stays():
    large, small = [5, 20, 40, 60], [20, 54, 30, 60]  # a particle on a stain
    kept, _, _ = merge_detections(np.array([large, small]), [0.9, 0.8], [1, 1], groups=[1, 0],
                                  regions=[RIGHT_TILE, LEFT_TILE])
    assert len(kept) == 2
    # From the right tile, which does not hold all of the large box, it is a partial view.
    merged, _, _ = merge_detections(np.array([large, small]), [0.9, 0.8], [1, 1],
                                    groups=[0, 1], regions=[LEFT_TILE, RIGHT_TILE])
    assert merged.tolist() == [large]


def test_merge_detections_boxes_of_one_tile_or_of_two_classes_stay_apart():
    pair = np.array([[10, 50, 20, 70], [10, 50, 20, 64]])
    same_tile, _, _ = merge_detections(pair, [0.9, 0.6], [1, 1], groups=[3, 3])
    two_classes, _, _ = merge_detections(pair, [0.9, 0.6], [1, 2], groups=[0, 1])
    assert len(same_tile) == 2 and len(two_classes) == 2


def test_merge_detections_pieces_of_an_object_larger_than_the_overlap_become_their_union():
    pieces = np.array([[0, 0, 30, 64], [0, 52, 30, 90]])  # each cut, sharing columns 52..64
    boxes, scores, _ = merge_detections(pieces, [0.7, 0.9], [1, 1], groups=[0, 1],
                                        regions=[LEFT_TILE, RIGHT_TILE], match_threshold=0.3)
    assert boxes.tolist() == [[0, 0, 30, 90]]
    assert scores.tolist() == pytest.approx([0.9])


def test_merge_detections_matches_through_each_other():
    # A whole box and two parts of it; the parts do not match each other.
    boxes, _, _ = merge_detections(
        np.array([[0, 0, 10, 40], [0, 0, 10, 12], [0, 30, 10, 40]]), [0.5, 0.9, 0.8],
        [1, 1, 1], groups=[0, 1, 2])
    assert boxes.tolist() == [[0, 0, 10, 40]]


def test_merge_detections_without_groups_or_regions_matches_on_the_smaller_box():
    boxes, scores, _ = merge_detections(
        np.array([[0, 0, 10, 10], [0, 0, 10, 4], [50, 50, 60, 60]]), [0.4, 0.8, 0.6], [1, 1, 1])
    assert boxes.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]
    assert scores.tolist() == pytest.approx([0.8, 0.6])


def test_merge_detections_passes_non_finite_values_on_sorted_last():
    boxes, scores, _ = merge_detections(
        np.array([[0, 0, 10, 10], [np.nan, 0, 10, 10], [0, 0, 10, 10]]),
        [0.5, 0.9, np.nan], [1, 1, 1], groups=[0, 1, 2])
    assert len(boxes) == 3
    assert np.isnan(boxes[0, 0]) and scores[0] == pytest.approx(0.9)
    assert np.isnan(scores[-1])


def test_merge_detections_empty_and_mismatched_inputs():
    boxes, scores, classes = merge_detections(np.zeros((0, 4)), [], [], groups=[],
                                              regions=np.zeros((0, 4)))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.dtype == np.int32
    with pytest.raises(ValueError, match="one entry per box"):
        merge_detections(np.zeros((2, 4)), [0.5], [1, 1])


def _perfect_tile_detections(objects: np.ndarray, grid: np.ndarray):
    """What a perfect detector sees in each tile: every object clipped to the tile."""
    boxes, groups, regions = [], [], []
    for index, tile in enumerate(grid):
        clipped = np.concatenate([np.maximum(objects[:, :2], tile[:2]),
                                  np.minimum(objects[:, 2:], tile[2:])], axis=1)
        visible = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        boxes.append(clipped[visible])
        groups += [index] * int(visible.sum())
        regions += [tile] * int(visible.sum())
    return np.concatenate(boxes), np.array(groups), np.array(regions).reshape(-1, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(40, 160), st.integers(40, 160), st.integers(16, 48), overlaps, st.data())
def test_merge_detections_perfect_tiles_give_each_object_once(height, width, tile, overlap,
                                                              data):
    shared = overlap_pixels(tile, overlap)
    size = data.draw(st.integers(1, max(1, shared)))
    # Objects on a lattice with gaps between them; each fits in the overlap, so some tile
    # sees it whole and every other tile sees a part of it or nothing.
    cells = [(y, x) for y in range(0, height - size, size + 2)
             for x in range(0, width - size, size + 2)]
    chosen = data.draw(st.lists(st.sampled_from(cells), min_size=1, max_size=12, unique=True))
    objects = np.array([[y, x, y + size, x + size] for y, x in chosen], np.float64)
    grid = tile_grid(height, width, tile, overlap)
    boxes, groups, regions = _perfect_tile_detections(objects, grid)
    merged, _, _ = merge_detections(boxes, np.linspace(1, 0.5, len(boxes)), np.ones(len(boxes)),
                                    groups=groups, regions=regions)
    assert sorted(map(tuple, merged.tolist())) == sorted(map(tuple, objects.tolist()))


# --- detect_tiled with a fake detector --------------------------------------------------------

class SquareFinder:
    """A fake DetectorModel: boxes of the bright (grey > 200) connected blobs of each input
    (score 0.9, class 1), after shrinking the input to ``resize`` pixels a side when set, as an
    SSD export does inside its graph. Records the inputs of every call."""

    def __init__(self, *, batchable: bool = False, resize: int = 0, fail_on_call: int = -1):
        self.batchable = batchable
        self.resize = resize
        self.fail_on_call = fail_on_call
        self.calls: list[list[np.ndarray]] = []

    def _find(self, image: np.ndarray) -> Detections:
        if self.resize:
            image = cv2.resize(image, (self.resize, self.resize), interpolation=cv2.INTER_AREA)
        bright = (image.mean(axis=2) > 200).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
        left, top, w, h = (stats[1:, k].astype(np.float32) for k in range(4))
        scale = np.array([image.shape[0], image.shape[1]] * 2, np.float32)
        boxes = np.stack([top, left, top + h, left + w], axis=1).reshape(-1, 4) / scale
        return Detections(boxes, np.full(count - 1, 0.9, np.float32),
                          np.ones(count - 1, np.int32))

    def detect(self, images):
        self.calls.append(list(images))
        if len(self.calls) - 1 == self.fail_on_call:
            return [Detections.failed("ValueError: broken call") for _ in images]
        return [self._find(image) for image in images]


# On a 256x256 image, 64-pixel tiles sharing 16 pixels start at 0, 48, 96, 144 and 192.
SQUARES = np.array([
    [20, 20, 27, 27],      # inside the first tile only
    [50, 100, 57, 107],    # in the overlap of two tile rows
    [100, 60, 107, 67],    # across the right edge (x = 64) of the first tile column
    [142, 142, 149, 149],  # at the corner of four tiles
    [240, 200, 247, 207],  # in the last row, near the bottom edge
], np.float32)
TILES_64 = TilingConfig(tile_size=64, overlap=0.25)


def _squares_image(squares: np.ndarray = SQUARES, size: int = 256) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    for top, left, bottom, right in squares.astype(int):
        image[top:bottom, left:right] = 255
    return image


def _sorted_boxes(boxes: np.ndarray) -> list[tuple]:
    return sorted(tuple(round(float(v), 4) for v in box) for box in boxes)


def test_detect_tiled_off_or_one_tile_is_one_call_with_the_whole_image():
    image = _squares_image()
    for config in (TilingConfig(tile_size=0), TilingConfig(tile_size=256),
                   TilingConfig(tile_size=512, full_image=True)):
        model = SquareFinder()
        found = detect_tiled(model, image, config)
        assert len(model.calls) == 1 and model.calls[0][0] is image
        assert _sorted_boxes(found.boxes) == _sorted_boxes(SQUARES / 256)


def test_detect_tiled_finds_each_square_once_in_whole_image_coordinates():
    found = detect_tiled(SquareFinder(), _squares_image(), TILES_64)
    assert found.error is None
    assert _sorted_boxes(found.boxes) == _sorted_boxes(SQUARES / 256)
    assert found.scores.tolist() == pytest.approx([0.9] * len(SQUARES))
    assert found.classes.dtype == np.int32 and found.classes.tolist() == [1] * len(SQUARES)


def test_detect_tiled_tiles_are_views_of_the_image():
    image = _squares_image()
    model = SquareFinder()
    detect_tiled(model, image, TILES_64)
    tiles = [tile for call in model.calls for tile in call]
    assert len(tiles) == len(tile_grid(256, 256, 64, 0.25)) == 25
    assert all(tile.shape == (64, 64, 3) and tile.base is image for tile in tiles)


@pytest.mark.parametrize("batchable, sizes", [(True, [8, 8, 8, 1]), (False, [1] * 25)])
def test_detect_tiled_stacks_up_to_batch_size_only_for_a_batchable_detector(batchable, sizes):
    model = SquareFinder(batchable=batchable)
    detect_tiled(model, _squares_image(), TilingConfig(tile_size=64, overlap=0.25,
                                                       batch_size=8))
    assert [len(call) for call in model.calls] == sizes


def test_detect_tiled_full_image_adds_one_whole_call_that_finds_large_objects():
    large = np.array([[30, 30, 200, 220]], np.float32)  # larger than a tile
    image = _squares_image(large)
    model = SquareFinder()
    found = detect_tiled(model, image, TilingConfig(tile_size=64, overlap=0.25,
                                                    full_image=True))
    assert [call[0].shape for call in model.calls].count((256, 256, 3)) == 1
    assert model.calls[-1][0] is image
    assert _sorted_boxes(found.boxes) == _sorted_boxes(large / 256)


def test_detect_tiled_resizing_detector_misses_small_squares_whole_and_finds_them_tiled():
    # Shrunk 8 times, a 7x7 square covers at most 49/64 of a pixel: never above 200 grey.
    image = _squares_image(size=512)
    whole = SquareFinder(resize=64).detect([image])[0]
    tiled = detect_tiled(SquareFinder(resize=64), image, TILES_64)
    assert len(whole.boxes) == 0
    assert _sorted_boxes(tiled.boxes) == _sorted_boxes(SQUARES / 512)


def test_detect_tiled_fails_the_image_when_a_tile_call_fails():
    found = detect_tiled(SquareFinder(fail_on_call=3), _squares_image(), TILES_64)
    assert found.error == "tile 3 at row 0, column 144: ValueError: broken call"
    assert found.boxes.shape == (0, 4)
    failed_whole = detect_tiled(SquareFinder(fail_on_call=25), _squares_image(),
                                TilingConfig(tile_size=64, overlap=0.25, full_image=True))
    assert failed_whole.error.startswith("the whole image: ")


# --- detect_tiled with small real SavedModels, loaded as the job loads them ------------------

WINDOW = 7  # the blob detector's box side, in pixels of its resized input


def save_resizing_blob_detector(path: str, *, input_size: int, batchable: bool) -> str:
    """An OD API style SavedModel that resizes every input to ``input_size`` squared inside
    its graph (area averaging, as an SSD export resizes), scores each 7x7 window by its mean
    brightness, and returns the windows around the peaks after non-maximum suppression.
    Its windows on a square cut by the input's edge (score <= 4/7) are offset from the
    square, unlike a trained detector's boxes: the score floor of 0.6 drops them."""
    import tensorflow as tf

    class ResizingBlobDetector(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None if batchable else 1, None, None, 3], tf.uint8)])
        def detect(self, input_tensor):
            pixels = tf.cast(input_tensor, tf.float32) / 255.0
            pixels = tf.image.resize(pixels, [input_size, input_size], method="area")
            grey = tf.reduce_mean(pixels, axis=-1, keepdims=True)
            score = tf.nn.avg_pool2d(grey, WINDOW, 1, "SAME")
            peaks = tf.where(score >= tf.nn.max_pool2d(score, 3, 1, "SAME"), score, 0.0)
            batch = tf.shape(pixels)[0]
            flat = tf.reshape(peaks, [batch, -1])
            top = tf.math.top_k(flat, k=32)
            rows = tf.cast(top.indices // input_size, tf.float32)
            cols = tf.cast(top.indices % input_size, tf.float32)
            first = float((WINDOW - 1) // 2)
            boxes = tf.stack([rows - first, cols - first, rows - first + WINDOW,
                              cols - first + WINDOW], axis=-1) / float(input_size)
            nms = tf.image.combined_non_max_suppression(
                boxes[:, :, tf.newaxis], top.values[..., tf.newaxis], 32, 32,
                iou_threshold=0.5, score_threshold=0.6)
            return {"detection_boxes": nms.nmsed_boxes,
                    "detection_scores": nms.nmsed_scores,
                    "detection_classes": nms.nmsed_classes + 1.0,
                    "num_detections": tf.cast(nms.valid_detections, tf.float32)}

    module = ResizingBlobDetector()
    tf.saved_model.save(module, path, signatures={"serving_default": module.detect})
    return path


@pytest.fixture(scope="module")
def blob_detectors(tmp_path_factory):
    root = tmp_path_factory.mktemp("blob_detectors")
    return {batchable: save_resizing_blob_detector(str(root / f"blob_{batchable}"),
                                                   input_size=64, batchable=batchable)
            for batchable in (False, True)}


@pytest.mark.parametrize("batchable", [False, True])
def test_detect_tiled_real_resizing_detector_finds_small_squares_only_tiled(blob_detectors,
                                                                            batchable):
    from transforms.detection import DetectorModel
    from transforms.regions import select_regions

    model = DetectorModel(blob_detectors[batchable])
    assert model.batchable is batchable
    image = _squares_image(size=512)
    whole = model.detect([image])[0]
    tiled = detect_tiled(model, image, TilingConfig(tile_size=64, overlap=0.25, batch_size=4))
    assert tiled.error is None
    kept_whole, _, _ = select_regions(whole, 512, 512, min_score=0.5, max_detections=100,
                                      padding=0.0)
    kept, pixel_boxes, _ = select_regions(tiled, 512, 512, min_score=0.5, max_detections=100,
                                          padding=0.0)
    assert len(kept_whole) == 0
    assert _sorted_boxes(pixel_boxes) == _sorted_boxes(SQUARES)
    assert tiled.scores[kept].tolist() == pytest.approx([1.0] * len(SQUARES))


# --- the job end to end ----------------------------------------------------------------------

def _job_has_tiling() -> bool:
    from beam_pipeline.options import job_option_names

    return "tile_size" in job_option_names()


@pytest.mark.e2e
@pytest.mark.skipif(not _job_has_tiling(), reason="--tile_size is not wired into the job yet")
def test_job_resizing_detector_finds_small_objects_only_with_tiles(models_dir, blob_detectors,
                                                                   tmp_path):
    from beam_pipeline.main import run
    from tests.conftest import job_args, read_table, write_png

    images = tmp_path / "images"
    images.mkdir()
    path = write_png(images / "squares.png", _squares_image(size=512))
    detector = f"--detector_model={blob_detectors[False]}"
    run(job_args(models_dir, images, tmp_path / "whole", detector, "--min_score=0.5"))
    run(job_args(models_dir, images, tmp_path / "tiled", detector, "--min_score=0.5",
                 "--tile_size=64", "--tile_overlap=0.25", "--tile_batch_size=4"))

    assert read_table(tmp_path / "whole", "detections") == []
    rows = read_table(tmp_path / "tiled", "detections")
    assert {row["image_path"] for row in rows} == {path}
    boxes = np.array([[row[f"box_{k}"] for k in ("ymin", "xmin", "ymax", "xmax")]
                      for row in rows])
    assert _sorted_boxes(boxes) == _sorted_boxes(SQUARES)
    assert [row["detector_score"] for row in rows] == pytest.approx([1.0] * len(SQUARES))
    (image_row,) = read_table(tmp_path / "tiled", "images")
    assert (image_row["status"], image_row["num_detections"]) == ("ok", len(SQUARES))
