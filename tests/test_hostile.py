"""Issue 21: a careless user or an attacker, with files built for it (``tests/hostile_files.py``).

Each case ends as its row, its refusal or its warning, and nothing outside the output folder is
touched: the tests list the file tree around each case before and after. The fast ones need
no TensorFlow (validation refuses before any model is loaded); ``e2e`` ones run the job.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import subprocess
import sys

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import run_record, runs
from beam_pipeline.main import main
from beam_pipeline.output_checks import check_output, check_output_location
from beam_pipeline.report.export import csv_cell, export_review, safe_name
from beam_pipeline.validation import ConfigError
from tests import hostile_files as hostile
from transforms.decoding import DecodeError, decode_image
from transforms.labels import LabelError, parse_label_map, read_labels
from transforms.model_files import local_model_problem
from transforms.output_folder import delete_tables
from transforms.reading import FAILED_TAG, ReadAndDecodeFn, resolve_input
from transforms.records import DETECTIONS_SCHEMA, IMAGES_SCHEMA, DetectionRow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(root) -> dict[str, tuple]:
    """Every path below ``root`` (links not followed) with its kind, size and mtime."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def _png(path, height=20, width=30) -> str:
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return str(path)


def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code, capsys.readouterr().err


def _record(output, **extra) -> None:
    record = {"version": 1, "run_id": "20260101T000000.000000Z-00000000",
              "status": "complete", "fingerprint": "f" * 32, **extra}
    (output / "run.json").write_text(json.dumps(record))


def _images_table(path, rows: int = 1) -> None:
    table = pa.Table.from_pylist([{
        "image_path": f"/data/{i}.png", "status": "ok", "run_id": "r", "fingerprint": "f" * 32}
        for i in range(rows)], schema=IMAGES_SCHEMA.empty_table().select(
            ["image_path", "status", "run_id", "fingerprint"]).schema)
    pq.write_table(table, str(path))


# -- 1. --overwrite deletes only what a run wrote; --output never meets the input ----------

def test_generator_layout_with_overwrite_is_refused_and_touches_nothing(tmp_path, capsys):
    data = tmp_path / "D"
    (data / "images").mkdir(parents=True)
    for i in range(4):
        _png(data / "images" / f"{i}.png")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, err = _exit_code(["--input", str(data / "images"), "--output", str(data),
                                *extra], capsys)
        assert code == 2
        assert err.count("\n") == 1 and f"contains the input {data / 'images'}/" in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("output, relation", [
    ("D/images", "is the input"),
    ("D/images/out", "lies inside the input folder"),
    ("D", "contains the input"),
])
def test_output_that_meets_an_input_folder_or_glob_is_refused(output, relation, tmp_path):
    (tmp_path / "D" / "images").mkdir(parents=True)
    for given in (str(tmp_path / "D" / "images"), str(tmp_path / "D" / "images") + "/**.png"):
        with pytest.raises(ConfigError, match=relation):
            check_output_location(str(tmp_path / output), resolve_input(given))
    check_output_location(str(tmp_path / "results"), resolve_input(str(tmp_path / "D/images")))
    # A glob of one folder's files, or one file, never lists a folder below it.
    for given in (str(tmp_path / "D" / "images") + "/*.png", str(tmp_path / "D/images/a.png")):
        check_output_location(str(tmp_path / "D/images/out"), resolve_input(given))
    with pytest.raises(ConfigError, match="contains the input"):
        check_output_location(str(tmp_path / "D"), resolve_input(str(tmp_path / "D/a.png")))


def test_output_that_holds_a_manifest_or_its_images_is_refused(tmp_path):
    (tmp_path / "D" / "images").mkdir(parents=True)
    manifest = tmp_path / "D" / "list.txt"
    manifest.write_text(_png(tmp_path / "D" / "images" / "a.png") + "\n")
    with pytest.raises(ConfigError, match="contains the input"):
        check_output_location(str(tmp_path / "D"), resolve_input(str(manifest)))
    check_output_location(str(tmp_path / "out"), resolve_input(str(manifest)))


@pytest.mark.parametrize("root", ["/", "/..", "s3://bucket", "gs://bucket/"])
def test_filesystem_roots_are_refused(root):
    with pytest.raises(ConfigError, match="filesystem root"):
        check_output_location(root, resolve_input("/data/images"))


def test_overwrite_deletes_only_the_files_a_run_writes(tmp_path):
    out = tmp_path / "out"
    (out / "images" / "beam-temp-part-" "0123456789abcdef0123456789abcdef").mkdir(parents=True)
    (out / "images" / "beam-temp-part-0123456789abcdef0123456789abcdef" / "tmp").write_text("x")
    (out / "detections").mkdir()
    for table in ("images", "detections"):
        (out / table / "part-00000-of-00001.parquet").write_bytes(b"PAR1")
    _record(out)
    (out / "_SUCCESS").write_text("complete\n")
    (out / "images" / "keep.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    outside = _tree(tmp_path / "out" / "images")
    left = delete_tables(str(out))
    assert sorted(os.path.relpath(p, out) for p in left) == ["images/keep.png", "notes.txt"]
    assert sorted(_tree(out)) == ["images", "images/keep.png", "notes.txt"]
    assert "images/keep.png" not in outside  # sanity: listed relative to its own folder


@pytest.mark.parametrize("layout", ["user run.json", "user _SUCCESS", "images of a user"])
def test_a_folder_that_is_not_this_jobs_output_is_refused_even_with_overwrite(layout, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if layout == "user run.json":
        (out / "run.json").write_text('{"my": "settings"}')
    elif layout == "user _SUCCESS":
        (out / "_SUCCESS").write_text("")
    else:
        (out / "images").mkdir()
        _png(out / "images" / "a.png")
    before = _tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="which this job did not write"):
            check_output(str(out), overwrite=overwrite)
    assert _tree(tmp_path) == before


def test_job_names_as_links_are_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "images")
    with pytest.raises(ConfigError, match="images as a symbolic link"):
        check_output(str(tmp_path / "out"), overwrite=True)


# -- 2. Names from data cannot escape; CSV cells are not formulas; label files are checked --

HOSTILE_LABELS = ["/tmp/x", "../../../../tmp/y", "..", "a/b/c", "=HYPERLINK(1)", "+1", "-2",
                  "@SUM", "\tx", "CON", "Red", "red", "x" * 300]


def test_review_export_keeps_every_file_inside_its_folder(tmp_path):
    image = _png(tmp_path / "shot.png", 40, 40)
    rows = [DetectionRow(image_path=image, roi_index=i, box_ymin=0, box_xmin=0, box_ymax=10,
                         box_xmax=10, detector_class_id=1, detector_label=None,
                         detector_score=0.9, class_id=i, label=label, confidence=0.1,
                         detector_model="d", classifier_model="c").to_dict()
            for i, label in enumerate(HOSTILE_LABELS)]
    detections = pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)
    around = tmp_path / "around"
    around.mkdir()
    before = _tree(around)
    folder = around / "review"
    counts = export_review(detections, str(folder), 0.5)
    assert counts == {"crops": len(HOSTILE_LABELS), "failed": 0,
                      "labels": len(HOSTILE_LABELS)}
    assert set(_tree(around)) - {"review"} == {
        os.path.relpath(os.path.join(root, name), around)
        for root, dirs, files in os.walk(folder) for name in dirs + files}
    assert {p for p in _tree(around) if p in before} == set(before)
    top = os.listdir(folder)
    assert len(top) == len(HOSTILE_LABELS) + 1  # one folder a label, none shared, + review.csv
    assert all(len(name) <= 80 and not name.startswith(".") for name in top)
    with open(folder / "review.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert sorted(row["label"] for row in written) == sorted(csv_cell(x) for x in HOSTILE_LABELS)
    assert all(row["label"][0] not in "=+-@\t" for row in written)
    for row in written:
        assert os.path.isfile(folder / row["file"]) and row["file"].count("/") == 1


def test_safe_names_have_no_separators_dots_or_controls_and_never_collide():
    taken: set[str] = set()
    names = [safe_name(value, taken) for value in [*HOSTILE_LABELS, "a\x00b", "a_b", "a b"]]
    assert len({name.lower() for name in names}) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name
        assert name.isprintable() and not name.startswith(".") and len(name) <= 80
    assert safe_name("red") == "red"  # ordinary labels keep their folder names


@pytest.mark.parametrize("text, message", [
    ("red\nred\n", "listed twice"),
    ("red\ngr\x00een\n", "U+0000"),
    ("red\ngr\x1b[31meen\n", "U+001B"),
    ("red\n\u202eneerg\n", "U+202E"),
])
def test_label_files_with_controls_or_duplicates_are_refused(text, message, tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(LabelError, match=re.escape(message)):
        read_labels(str(path))


def test_a_bom_is_not_part_of_the_first_label(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffred\ngreen\n".encode("utf-8"))
    assert read_labels(str(path)) == ["red", "green"]
    assert parse_label_map("\ufeffitem { id: 1 name: 'a' }") == {1: "a"}


@pytest.mark.parametrize("text", ["item { id: 1 name: 'a' } item { id: 1 name: 'b' }",
                                  "item { id: 1 name: 'a' } item { id: 2 name: 'a' }"])
def test_label_maps_with_duplicates_are_refused(text):
    with pytest.raises(LabelError, match="listed twice"):
        parse_label_map(text)


def test_cli_refuses_a_nul_label_in_one_line_before_any_work(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"a\nb\x00\nc\n")
    code, err = _exit_code(["--input", _png(tmp_path / "a.png"), "--output", str(tmp_path / "o"),
                            "--classifier_labels", str(labels)], capsys)
    assert code == 2 and err.count("\n") == 1 and "U+0000" in err
    assert not (tmp_path / "o").exists()


# -- 3. One pixel limit every decoder obeys; formats refused by content; bytes by size ------

def test_tiff_that_lists_its_width_twice_is_refused_by_the_decoder_itself(tmp_path):
    data = open(hostile.tiff_with_repeated_width(str(tmp_path / "w.tif"), data_rows=64),
                "rb").read()
    with pytest.raises(DecodeError, match="header says 20000x20000"):
        decode_image(data)
    # With our header check out of the way, OpenCV's own limit (set by `transforms` before
    # cv2 was imported) refuses it from libtiff's reading of the header.
    with pytest.raises(DecodeError, match="larger than the decoder's limit of 100000000"):
        decode_image(data, max_pixels=10**12)


@pytest.mark.parametrize("build, hint", [
    (lambda p: hostile.hdr_named_png(p, 12000, lines=2), "a Radiance HDR image"),
    (lambda p: hostile.pfm(p), "a PFM float image"),
])
def test_formats_the_job_does_not_accept_are_refused_by_content(build, hint, tmp_path):
    data = open(build(str(tmp_path / "x.png")), "rb").read()
    assert cv2.imdecode(np.frombuffer(open(hostile.hdr_named_png(
        str(tmp_path / "small.png"), 8), "rb").read(), np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(DecodeError, match=f"format \\(it looks like {hint}\\)"):
        decode_image(data, max_pixels=10**12)


def test_error_messages_never_quote_a_files_bytes():
    secret = b"\x01\x02HOME=/root\x00PATH=/usr/bin\x00"
    with pytest.raises(DecodeError) as refused:
        decode_image(secret)
    assert "HOME" not in str(refused.value) and "\\x" not in str(refused.value)


_AT_LIMIT = """
import sys
import transforms  # sets OpenCV's limit (the environment's value here) before cv2 loads
from transforms.decoding import DecodeError, decode_image
side = int(sys.argv[1])
data = open(sys.argv[2], "rb").read()
try:
    print(decode_image(data, max_pixels=10**12).shape[:2])
except DecodeError as exc:
    print("refused:", exc)
"""


def test_every_process_decodes_by_the_limit_in_its_environment(tmp_path):
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": str(500 * 400),
           "PYTHONPATH": REPO}
    outcomes = []
    for width in (500, 501):
        path = hostile.png_of_zeros(str(tmp_path / f"z{width}.png"), width, 400)
        done = subprocess.run([sys.executable, "-c", _AT_LIMIT, str(width), path], env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        outcomes.append(done.stdout.strip())
    assert outcomes[0] == "(400, 500)"
    assert outcomes[1].startswith("refused: PNG is larger than the decoder's limit of 200000")


@pytest.mark.e2e  # a launcher process
def test_max_image_pixels_sets_the_decoders_limit_for_the_launcher(tmp_path):
    script = ("import atexit, os, sys\n"
              "from beam_pipeline.main import main\n"
              "atexit.register(lambda: print(__import__('transforms.decoding').decoding"
              ".decoder_pixel_limit(), 'cv2' in sys.modules))\n"
              f"main(['--input', {str(tmp_path / 'none')!r}, '--output', "
              f"{str(tmp_path / 'o')!r}, '--max_image_pixels=12345'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 2
    assert done.stdout.split() == ["12345", "True"]


def test_a_file_over_the_byte_limit_is_refused_from_its_size_unread(tmp_path):
    path = hostile.over_byte_limit(str(tmp_path / "big.png"), 8 << 30)  # sparse: no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (out,) = list(ReadAndDecodeFn().process(path))
    assert out.tag == FAILED_TAG and out.value.error_stage == "read"
    assert "more than any image within --max_image_pixels=100000000 needs" in out.value.error
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


# -- 4. Model folders are read as files only ------------------------------------------------

@pytest.mark.parametrize("kind, message", [
    ("device", "a symbolic link that leaves the model folder"),
    ("fifo", "not a regular file"),
    ("outside", "a symbolic link that leaves the model folder"),
])
def test_model_folders_with_devices_fifos_or_escaping_links_are_refused(kind, message, tmp_path):
    folder = hostile.model_folder_with(str(tmp_path / "model"), kind)
    assert message in local_model_problem(folder)
    with pytest.raises(ValueError, match=message):
        run_record.content_digest(folder)  # refused before anything is opened: no hang


def test_a_link_inside_the_model_folder_is_fine(tmp_path):
    folder = hostile.model_folder_with(str(tmp_path / "model"), "inside")
    assert local_model_problem(folder) is None
    assert len(run_record.content_digest(folder)) == 64


@pytest.mark.e2e  # a launcher process
def test_cli_refuses_a_detector_folder_with_a_fifo_without_hanging(tmp_path):
    folder = hostile.model_folder_with(str(tmp_path / "model"), "fifo")
    done = subprocess.run(
        [sys.executable, "-m", "beam_pipeline", "--input", _png(tmp_path / "a.png"),
         "--output", str(tmp_path / "o"), "--detector_model", folder], capture_output=True,
        text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "not a regular file" in done.stderr


# -- 5. Earlier runs that cannot be read: one warning each, treated as not done -------------

def _earlier_runs(root) -> dict[str, str]:
    """Folders of earlier runs, each broken in one way; values: what its warning says."""
    broken = {}
    for name, build, says in [
        ("nested", lambda p: hostile.nested_json(p), "nested too deeply"),
        ("deep", lambda p: open(p, "w").write(json.dumps(
            {"version": 1, "run_id": "x", "status": "complete",
             "counts": json.loads("{\"a\":" * 40 + "1" + "}" * 40)})), "nested deeper than"),
        ("huge", lambda p: hostile.sparse_whitespace_json(p), "over the 1048576 of any run record"),
        ("list", lambda p: open(p, "w").write("[1, 2]"), "is not a run record"),
        ("counts", lambda p: open(p, "w").write(json.dumps(
            {"version": 1, "run_id": "x", "status": "complete", "counts": [1]})),
         "wrong or missing: counts"),
    ]:
        (root / name).mkdir()
        build(str(root / name / "run.json"))
        broken[name] = says
    for name, part in [("noise", lambda p: hostile.random_bytes(p)),
                       ("truncated", lambda p: (_images_table(p), os.truncate(p, 100)))]:
        (root / name / "images").mkdir(parents=True)
        (root / name / "detections").mkdir()
        _record(root / name)
        part(str(root / name / "images" / "part-00000-of-00001.parquet"))
        broken[name] = "is not a readable Parquet file"
    return broken


def test_unreadable_earlier_runs_warn_once_each_and_are_not_done(tmp_path, capsys):
    broken = _earlier_runs(tmp_path)
    (tmp_path / "good" / "images").mkdir(parents=True)
    _record(tmp_path / "good")
    _images_table(tmp_path / "good" / "images" / "part-00000-of-00001.parquet")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = runs.complete_outputs([str(tmp_path / "*")])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert [folder for folder, _ in found] == [str(tmp_path / "good")]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == len(broken)
    for name, says in broken.items():
        (line,) = [w for w in warnings if f"{tmp_path / name} " in w]
        assert line.startswith("warning: ignoring") and "treated as not done" in line
        assert says in line
    runs.main(["list", str(tmp_path / "*")])
    listed = capsys.readouterr()
    assert listed.out.count("\n") == 1 and len(listed.err.strip().splitlines()) == len(broken)
    runs.main(["latest", str(tmp_path / "*"), "--output", str(tmp_path / "latest.parquet")])
    assert "0 detections rows" in capsys.readouterr().out


def test_report_skips_an_unreadable_complete_run(tmp_path, capsys):
    from beam_pipeline.report.__main__ import main as report_main

    _earlier_runs(tmp_path)
    assert report_main(["--runs", str(tmp_path / "*"), "--html",
                        str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no complete run" in err and "Traceback" not in err


# -- 6 and 7. Tiny images are detected; a default run prints only progress on stderr --------

@pytest.mark.e2e
def test_default_run_is_quiet_and_detects_on_tiny_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for height, width in [(1, 1), (1, 5000), (9, 17), (100, 200)]:
        _png(images / f"{height}x{width}.png", height, width)
    around = _tree(tmp_path)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TF_CPP", "OPENCV", "GRPC", "BDC_"))}
    done = subprocess.run([sys.executable, "-m", "beam_pipeline", "--input", str(images),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300, env={**env, "PYTHONPATH": REPO}, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if not line.startswith("progress: ")]
    assert noise == []
    rows = pq.read_table(str(tmp_path / "out" / "images")).to_pylist()
    assert sorted((r["width"], r["height"], r["status"]) for r in rows) == [
        (1, 1, "ok"), (17, 9, "ok"), (200, 100, "ok"), (5000, 1, "ok")]
    after = _tree(tmp_path)
    assert {path: info for path, info in after.items() if not path.startswith("out")} == around


@pytest.mark.e2e
def test_job_with_unreadable_earlier_runs_warns_and_processes_everything(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    broken = _earlier_runs(earlier)
    images = tmp_path / "images"
    images.mkdir()
    paths = [_png(images / f"{i}.png", 40, 60) for i in range(2)]
    around = _tree(earlier)
    done = subprocess.run([sys.executable, "-m", "beam_pipeline", "--input", str(images),
                           "--output", str(tmp_path / "out"), "--skip_done_in",
                           str(earlier / "*")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(broken) and "Traceback" not in done.stderr
    rows = pq.read_table(str(tmp_path / "out" / "images")).to_pylist()
    assert sorted(r["image_path"] for r in rows) == sorted(paths)
    assert _tree(earlier) == around


def test_worker_processes_start_up_noise_is_dropped_and_errors_pass(capfd):
    from beam_pipeline.quiet import quiet_worker_processes

    worker = ("import sys\n"
              "sys.stderr.write('INFO:__main__:Logging handler created.\\n')\n"
              "sys.stderr.write('WARNING:root:apitools not found, and bigquery client ...\\n')\n"
              "sys.stderr.write('WARNING:__main__:No semi_persistent_directory found\\n')\n"
              "sys.stderr.write('ERROR:worker:something real\\nTraceback (most recent)\\n')\n")
    with quiet_worker_processes():
        subprocess.run([sys.executable, "-c", worker], check=True, timeout=60)
        print("progress: 1/2 images", file=sys.stderr)
    assert capfd.readouterr().err.splitlines() == [
        "ERROR:worker:something real", "Traceback (most recent)", "progress: 1/2 images"]


def test_an_object_over_the_byte_limit_is_refused_from_its_metadata_unread(monkeypatch):
    import types

    import transforms.reading

    class Body:
        raw = types.SimpleNamespace(_downloader=types.SimpleNamespace(size=8 << 30))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, *args):
            raise AssertionError("the body was read")

    monkeypatch.setattr(transforms.reading.FileSystems, "open", lambda *a, **k: Body())
    (out,) = list(ReadAndDecodeFn().process("s3://bucket/huge.png"))
    assert out.tag == FAILED_TAG and "more than any image within" in out.value.error
