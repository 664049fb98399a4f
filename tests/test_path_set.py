"""The launcher's compact path set and the local selection built on it: exact answers,
unicode paths, empty and several earlier runs, every listed path counted once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.path_set import PathSet, digests, read_path_set
from beam_pipeline.selection import done_set, select_paths
from transforms.reading import resolve_input
from transforms.records import IMAGES_SCHEMA, STATUS_ERROR, STATUS_OK

UNICODE = ["/data/übersicht/ä.png", "/data/日本/写真.jpg", "/data/emoji/🙂.png",
           "/data/e\u0301.png", "/data/\u00e9.png", "/data/bad-\udcff.png"]


def test_path_set_answers_exactly_for_members_and_near_misses():
    members = [f"/archive/lot-{i // 100:03d}/img-{i:06d}.jpg" for i in range(5000)]
    paths = PathSet.from_paths(members + members[:10])  # repeats count once
    assert len(paths) == 5000 and paths.nbytes == 5000 * 16
    assert all(path in paths for path in members[::97])
    near = [path + " " for path in members[:50]] + [path.upper() for path in members[:50]] \
        + [path[:-1] for path in members[:50]] + ["", "/archive"]
    assert not any(path in paths for path in near)
    found = paths.contains(digests(members[:3] + near[:3]))
    assert found.tolist() == [True, True, True, False, False, False]


def test_path_set_keeps_unicode_paths_apart():
    # NFD and NFC spellings of "é" are different paths, as on a filesystem.
    paths = PathSet.from_paths(UNICODE[:4])
    assert all(path in paths for path in UNICODE[:4])
    assert "/data/\u00e9.png" not in paths and UNICODE[5] not in paths
    assert len(PathSet.from_paths(UNICODE)) == len(UNICODE)


def test_empty_path_set_holds_nothing():
    empty = PathSet.from_paths([])
    assert len(empty) == 0 and "/a.png" not in empty
    assert empty.contains(digests([])).shape == (0,)
    assert PathSet.from_digests([]).contains(digests(["/a.png"])).tolist() == [False]


def test_path_set_looks_past_digests_that_share_a_high_word():
    words = np.array([[7, 1], [7, 3], [7, 2], [9, 1]], dtype=np.uint64)
    paths = PathSet.from_digests([words])
    asked = np.array([[7, 2], [7, 4], [9, 1], [8, 1], [10, 0]], dtype=np.uint64)
    assert paths.contains(asked).tolist() == [True, False, True, False, False]


def _images_table(folder, rows, fingerprint="fp1"):
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    table = pa.table({
        "image_path": [path for path, _ in rows], "width": [1] * n, "height": [1] * n,
        "status": [status for _, status in rows], "error_stage": [None] * n,
        "error": [None] * n, "num_detections": [0] * n, "run_id": ["r"] * n,
        "fingerprint": [fingerprint] * n}, schema=IMAGES_SCHEMA)
    pq.write_table(table, folder / "part-00000-of-00001.parquet", row_group_size=3)
    return str(folder / "*.parquet")


def test_done_set_reads_ok_rows_of_this_fingerprint_from_several_runs(tmp_path):
    first = _images_table(tmp_path / "a", [(UNICODE[0], STATUS_OK), ("/x/1.png", STATUS_ERROR),
                                           ("/x/2.png", STATUS_OK), ("/x/3.png", STATUS_OK)])
    second = _images_table(tmp_path / "b", [("/x/1.png", STATUS_OK), ("/x/2.png", STATUS_OK)])
    other = _images_table(tmp_path / "c", [("/x/4.png", STATUS_OK)], fingerprint="fp2")
    empty = _images_table(tmp_path / "d", [])
    done = done_set([first, second, other, empty], "fp1")
    assert len(done) == 4  # /x/2.png in two runs counts once; /x/4.png has another fingerprint
    assert all(path in done for path in (UNICODE[0], "/x/1.png", "/x/2.png", "/x/3.png"))
    assert "/x/4.png" not in done
    assert len(done_set([empty], "fp1")) == 0 and len(read_path_set([])) == 0


@pytest.mark.parametrize("sample", [1.0, 0.5])
def test_select_paths_counts_every_listed_path_once(tmp_path, sample):
    listed = [f"/in/{i:04d}.png" for i in range(300)] + UNICODE[:5]  # a file holds no surrogate
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(listed + listed[:40] + ["# note", ""]) + "\n",
                        encoding="utf-8")
    done = PathSet.from_paths(listed[:100] + UNICODE[:2] + ["/elsewhere/gone.png"])
    held = PathSet.from_paths(listed[90:120])
    chosen = select_paths(resolve_input(str(manifest)), sample=sample, done=done, held=held)
    from transforms.skipping import in_sample

    within = [path for path in listed if in_sample(path, sample)]
    in_held = [path for path in within if path in listed[90:120]]
    in_done = [path for path in within if path not in in_held
               and (path in listed[:100] or path in UNICODE[:2])]
    assert chosen.resumed == len(in_held) and chosen.skipped == len(in_done)
    assert chosen.todo == sorted(set(within) - set(in_held) - set(in_done))
    assert len(chosen.todo) + chosen.skipped + chosen.resumed == len(within)


def test_select_paths_without_done_sets_lists_everything(tmp_path):
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    chosen = select_paths(resolve_input(str(tmp_path)), done=PathSet())
    assert chosen.todo == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert (chosen.skipped, chosen.resumed) == (0, 0)
    assert chosen.counts == {"files_listed": 2, "files_skipped_hidden": 1,
                             "files_skipped_not_image": 1}
