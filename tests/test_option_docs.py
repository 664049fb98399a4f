"""The parser is the only declaration of an option: the committed Flex Template metadata and
options table are what ``beam_pipeline.option_docs`` generates from it."""

from __future__ import annotations

import json

import pytest

from beam_pipeline import option_docs
from beam_pipeline.options import job_option_names


def test_committed_flex_template_metadata_is_generated_from_the_parser():
    committed = json.loads(option_docs.METADATA.read_text(encoding="utf-8"))
    assert committed == option_docs.flex_template_metadata(), (
        "flex_template/metadata.json is stale: run python -m beam_pipeline.option_docs")


def test_committed_options_table_is_generated_from_the_parser():
    text = option_docs.OPTIONS_DOC.read_text(encoding="utf-8")
    assert text == option_docs.with_table(text), (
        "docs/options.md is stale: run python -m beam_pipeline.option_docs")


def test_options_table_lists_every_option_once_in_help_order():
    rows = [line.split("`")[1] for line in option_docs.options_table().splitlines()[2:]]
    assert rows == [f"--{name}" for name in job_option_names()]


def test_metadata_regexes_accept_each_default_and_choice():
    import re

    for parameter in option_docs.flex_template_metadata()["parameters"]:
        assert parameter["label"] and parameter["helpText"], parameter["name"]
        for pattern in parameter.get("regexes", []):
            assert re.fullmatch(pattern, "true" if "true" in pattern else "1") or re.fullmatch(
                pattern, parameter["helpText"].rsplit("Default: ", 1)[-1].rstrip(".")), (
                    parameter["name"])


def test_with_table_replaces_only_between_the_markers():
    document = f"intro\n{option_docs.TABLE_START}\nold rows\n{option_docs.TABLE_END}\noutro\n"
    result = option_docs.with_table(document)
    assert result.startswith("intro\n") and result.endswith(f"{option_docs.TABLE_END}\noutro\n")
    assert "old rows" not in result and "| `--input` | required |" in result


def test_check_mode_fails_on_a_stale_copy(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "options.md"
    stale.write_text(f"{option_docs.TABLE_START}\n| stale |\n{option_docs.TABLE_END}\n")
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(option_docs.flex_template_metadata(), indent=2) + "\n")
    monkeypatch.setattr(option_docs, "OPTIONS_DOC", stale)
    monkeypatch.setattr(option_docs, "METADATA", metadata)
    monkeypatch.setattr(option_docs, "ROOT", tmp_path)
    with pytest.raises(SystemExit) as exited:
        option_docs.main(["--check"])
    assert exited.value.code == 1 and "options.md is stale" in capsys.readouterr().err
    option_docs.main([])
    with pytest.raises(SystemExit) as exited:
        option_docs.main(["--check"])
    assert exited.value.code == 0
