"""Input resolution, manifests and label files."""

from __future__ import annotations

import pytest

from transforms.labels import parse_label_map, read_labels
from transforms.reading import parse_manifest_line, resolve_input


def test_resolve_input_kinds(tmp_path):
    assert resolve_input("data/*.jpg").kind == "glob"
    single = resolve_input("data/one.PNG")
    assert (single.kind, single.location, single.only_images) == ("glob", "data/one.PNG", False)
    folder = resolve_input(str(tmp_path))
    assert (folder.kind, folder.location, folder.only_images) == (
        "glob", f"{tmp_path}/*", True)
    assert resolve_input("gs://bucket/shots/").location == "gs://bucket/shots/*"
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
