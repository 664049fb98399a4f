"""Input resolution, manifests and label files."""

from __future__ import annotations

import io

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.validation import ConfigError, check_input
from tests.conftest import paint_image, write_png
from transforms.labels import parse_label_map, read_labels
from transforms.reading import (
    ReadImagePaths,
    listed_kind,
    parse_manifest_line,
    read_at_most,
    resolve_input,
)
from transforms.records import METRICS_NAMESPACE


def test_resolve_input_kinds(tmp_path):
    assert resolve_input("data/*.jpg").kind == "glob"
    single = resolve_input("data/one.PNG")
    assert (single.kind, single.location, single.only_images) == ("glob", "data/one.PNG", False)
    folder = resolve_input(str(tmp_path))
    assert (folder.kind, folder.location, folder.only_images, folder.root) == (
        "glob", f"{tmp_path}/**", True, f"{tmp_path}/")
    assert resolve_input(str(tmp_path), recursive=False).location == f"{tmp_path}/*"
    assert resolve_input("gs://bucket/shots/").location == "gs://bucket/shots/**"
    assert resolve_input("data/**.jpg").only_images is False  # a glob is taken as given
    text = tmp_path / "list.txt"
    text.write_text("a.png\n")
    assert (resolve_input(str(text)).kind, resolve_input(str(text)).csv_column) == (
        "manifest", None)


def test_resolve_input_finds_csv_path_column(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("id,path,note\n1,a.png,x\n")
    assert resolve_input(str(manifest)).csv_column == 1
    manifest.write_text("id,file\n1,a.png\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        resolve_input(str(manifest))


@pytest.mark.parametrize("line, column, expected", [
    ("a.png", None, "/data/a.png"),
    ("  /abs/b.png  ", None, "/abs/b.png"),
    ("gs://bucket/c.png", None, "gs://bucket/c.png"),
    ("", None, None),
    ("# a comment", None, None),
    ('7,"with, comma.png",x', 1, "/data/with, comma.png"),
    ("7", 1, None),
])
def test_parse_manifest_line(line, column, expected):
    assert parse_manifest_line(line, base="/data", csv_column=column) == expected


def test_parse_label_map_prefers_display_name():
    text = """
    item { id: 1 name: '/m/01g317' display_name: "person" }
    item {
      name: "defect"
      id: 2
    }
    """
    assert parse_label_map(text) == {1: "person", 2: "defect"}
    with pytest.raises(ValueError, match="no 'item"):
        parse_label_map("nothing here")


def test_read_labels_skips_blank_lines(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\n dog \nbird\n")
    assert read_labels(str(path)) == ["cat", "dog", "bird"]


@pytest.mark.parametrize("path, expected", [
    ("/data/a.png", "image"),
    ("/data/2024-01-02/b.JPG", "image"),
    ("/data/2024/01/c.tiff", "image"),
    ("/data/README.txt", "other"),
    ("/data/2024/labels.json", "other"),
    ("/data/.hidden.png", "hidden"),
    ("/data/._a.jpg", "hidden"),  # macOS resource forks
    ("/data/.git/objects/x.png", "hidden"),
    ("/data/2024/.thumbs/d.png", "hidden"),
    ("s3://bucket/shots/.write-probe-1f", "hidden"),
])
def test_listed_kind_by_path(path, expected):
    root = "s3://bucket/shots/" if path.startswith("s3://") else "/data/"
    assert listed_kind(path, root) == expected


def test_listed_kind_hidden_root_itself_is_not_hidden():
    assert listed_kind("/home/u/.cache/shots/a.png", "/home/u/.cache/shots/") == "image"


def _tree(root, names: list[str]) -> None:
    image = paint_image(("red", "green", "blue"))
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            write_png(path, image)
        else:
            path.write_text("not an image\n")


TREE = ["top.png", "2024-01-01/a.png", "2024-01-02/deeper/b.png", "README.txt",
        "2024-01-01/notes.csv", ".hidden.png", ".cache/c.png", "2024-01-02/.d.png"]


def _list(spec, expected: list[str]) -> dict[str, int]:
    """Runs ReadImagePaths, checks in the pipeline that it passes on exactly ``expected``, and
    returns its counters."""
    # The job's options are registered (required --input/--output): the run parses them too.
    pipeline = beam.Pipeline(runner="FnApiRunner",
                             options=PipelineOptions(["--input=x", "--output=x"]))
    assert_that(pipeline | ReadImagePaths(spec), equal_to(expected))
    result = pipeline.run()
    result.wait_until_finish()
    return {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}


def test_read_image_paths_folder_is_recursive_and_counts(tmp_path):
    _tree(tmp_path, TREE)
    counters = _list(resolve_input(str(tmp_path)), [
        str(tmp_path / name) for name in ["top.png", "2024-01-01/a.png",
                                          "2024-01-02/deeper/b.png"]])
    assert (counters["files_listed"], counters["files_skipped_not_image"],
            counters["files_skipped_hidden"]) == (3, 2, 3)


def test_read_image_paths_folder_top_level_only(tmp_path):
    _tree(tmp_path, TREE)
    counters = _list(resolve_input(str(tmp_path), recursive=False), [str(tmp_path / "top.png")])
    assert (counters["files_listed"], counters["files_skipped_not_image"],
            counters["files_skipped_hidden"]) == (1, 1, 1)


def test_read_image_paths_glob_taken_as_given(tmp_path):
    _tree(tmp_path, TREE)
    counters = _list(resolve_input(f"{tmp_path}/**.txt"), [str(tmp_path / "README.txt")])
    assert counters["files_listed"] == 1
    assert counters.get("files_skipped_not_image", 0) == 0


def test_check_input_folder_of_dated_subfolders(tmp_path):
    _tree(tmp_path, ["2024-01-01/a.png", "2024-01-02/b.png"])
    assert check_input(str(tmp_path)).location == f"{tmp_path}/**"
    with pytest.raises(ConfigError, match="no image files at its top level.*--recursive=false"):
        check_input(str(tmp_path), recursive=False)


@pytest.mark.parametrize("names, message", [
    (["README.txt", "sub/notes.csv"], "has no image files in it or its subfolders"),
    ([".hidden.png", ".cache/a.png"], "hidden files skipped"),
])
def test_check_input_folder_without_visible_images(tmp_path, names, message):
    _tree(tmp_path, names)
    with pytest.raises(ConfigError, match=message):
        check_input(str(tmp_path))


def test_check_input_missing_folder_and_plain_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_input(str(tmp_path / "no-such-folder"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ConfigError, match="is a file without an image extension"):
        check_input(str(tmp_path / "notes.md"))


class _CountingStream(io.BytesIO):
    """A stream that records the sizes it was asked for."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        return super().read(size)


@pytest.mark.parametrize("size", [0, 10, (1 << 20) - 1, 1 << 20, (1 << 20) + 5, 20 << 20])
def test_read_at_most_reads_everything_up_to_one_byte_past_the_limit(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    limit = 17 << 20
    stream = _CountingStream(data)
    got = read_at_most(stream, limit)
    assert got == data[:limit + 1]
    # Never one huge read: the first asks 1 MiB, later ones at most 16 MiB.
    assert stream.asked[0] == 1 << 20 and max(stream.asked) <= 16 << 20
