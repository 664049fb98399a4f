"""Every ``python -m beam_pipeline`` command line in the README parses with the job's and Beam's
own options: a misspelt or unknown flag, a bad value or a missing required flag fails here."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.resources import resource_hints_from_options

from beam_pipeline.options import DetectClassifyOptions

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^[ \t]*```[a-z]*[ \t]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
# $VAR, ${VAR} and $(command): the values are the reader's, so any word stands in.
SHELL_EXPANSION = re.compile(r"\$\{\w+\}|\$\(.*?\)|\$\w+")


def _commands(text: str, marker: str) -> list[list[str]]:
    """Shell commands in fenced code blocks whose words contain ``marker`` (``\\`` continuations
    joined, shell expansions replaced by a placeholder, quoting undone with shlex)."""
    commands = []
    for block in FENCE.findall(text):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            if marker not in line:
                continue
            line = SHELL_EXPANSION.sub("placeholder", line.rstrip().rstrip("&"))
            commands.append(shlex.split(line, comments=True))
    return commands


def _job_argv(words: list[str]) -> list[str]:
    """The arguments after ``-m beam_pipeline``."""
    index = next(i for i in range(len(words) - 1)
                 if words[i] == "-m" and words[i + 1] == "beam_pipeline")
    return words[index + 2:]


class _Captured(Exception):
    pass


def _beam_parser() -> argparse.ArgumentParser:
    """The parser Beam itself builds from every PipelineOptions subclass (the job's included),
    with abbreviations off: taken from get_all_options' extra-args hook, before it parses."""
    captured = {}

    def capture(parser):
        captured["parser"] = parser
        raise _Captured

    with pytest.raises(_Captured):
        PipelineOptions([]).get_all_options(add_extra_args_fn=capture)
    return captured["parser"]


class _Refused(Exception):
    pass


def check_command(argv: list[str]) -> PipelineOptions:
    """Parses ``argv`` like the job does and refuses what Beam would silently drop.

    ``PipelineOptions(argv)`` keeps unknown flags and ``get_all_options()`` only logs a warning
    when it discards them, so the unknown list of Beam's own parser is checked instead. A bad
    value or a missing required flag makes argparse exit; that is turned into a failure too.
    """
    parser = _beam_parser()
    parser.exit_on_error = False

    def refuse(message):
        raise _Refused(message)

    parser.error = refuse
    try:
        _, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, _Refused) as exc:
        raise AssertionError(f"{shlex.join(argv)}: {exc}") from exc
    if unknown:
        raise AssertionError(f"unknown flags {unknown} in: {shlex.join(argv)}")
    options = PipelineOptions(argv)
    options.view_as(DetectClassifyOptions)  # the job's own view, required flags included
    try:
        resource_hints_from_options(options)  # Beam parses --resource_hints values only here
    except ValueError as exc:
        raise AssertionError(f"{shlex.join(argv)}: {exc}") from exc
    return options


def _is_job(words: list[str]) -> bool:
    return any(words[i] == "-m" and words[i + 1] == "beam_pipeline"
               for i in range(len(words) - 1))


# The README and the longer pages it links to (docs/*.md).
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_COMMANDS = [words for doc in DOCS
                   for words in _commands(doc.read_text(encoding="utf-8"), "-m beam_pipeline")
                   if _is_job(words)]


def test_readme_has_the_recipes():
    runners = {PipelineOptions(_job_argv(words)).get_all_options()["runner"]
               for words in README_COMMANDS}
    assert {"DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner"} <= runners
    assert len(README_COMMANDS) >= 7


@pytest.mark.parametrize("words", README_COMMANDS, ids=lambda words: " ".join(words)[:60])
def test_readme_command_parses(words):
    check_command(_job_argv(words))


@pytest.mark.parametrize("bad", [
    "--min_scor=0.3",                # misspelt job flag
    "--max_num_worker=10",           # misspelt Beam flag
    "--num_workers_harness_threads=4",
    "--inp=x",                       # abbreviations are off, like in Beam
    "--min_score=high",              # a value of the wrong type
    "--classifier_preprocess=imagenet",
    "--resource_hints=min_ram=lots",
])
def test_check_command_refuses_mistakes(bad):
    with pytest.raises(AssertionError):
        check_command(["--input=in/*.png", "--output=out", bad])


def test_check_command_refuses_a_missing_required_flag():
    with pytest.raises(AssertionError, match="--input"):
        check_command(["--output=out"])


def test_check_command_accepts_the_job_and_beam_flags():
    options = check_command([
        "--input=in/*.png", "--output", "out", "--min_score=0.3", "--runner=DataflowRunner",
        "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1",
        "--number_of_worker_harness_threads=4", "--flink_version=1.19",
        "--s3_endpoint_url=http://127.0.0.1:9000", "--overwrite"])
    assert options.view_as(DetectClassifyOptions).min_score == 0.3


def test_readme_flex_template_parameters_are_declared():
    # gcloud's --parameters=name=value pairs: each a template parameter or a Beam option.
    metadata = json.loads((ROOT / "flex_template" / "metadata.json").read_text())
    declared = {param["name"] for param in metadata["parameters"]}
    actions = _beam_parser()._actions  # pylint: disable=protected-access
    beam_flags = {action.dest for action in actions}
    runs = [words for doc in DOCS
            for words in _commands(doc.read_text(encoding="utf-8"), "flex-template run")]
    assert len(runs) >= 2, "no gcloud dataflow flex-template run commands in the README and docs"
    for words in runs:
        names = [word.split("=", 2)[1] for word in words if word.startswith("--parameters=")]
        names += [words[i + 1].split("=", 1)[0] for i, word in enumerate(words[:-1])
                  if word == "--parameters"]
        assert names and set(names) <= declared | beam_flags, names
        assert {"input", "output"} <= set(names)


def test_a_misspelt_flag_in_a_readme_block_fails():
    text = ("Intro\n\n```bash\n.venv/bin/python -m beam_pipeline \\\n"
            "  --input 'gs://b/x/*.jpg' \\\n"
            "  --output=gs://$BUCKET/out --job_name=\"run-$(date +%s)\" \\\n"
            "  --max_detection=5   # one letter short\n```\n")
    (words,) = _commands(text, "-m beam_pipeline")
    assert _job_argv(words)[:2] == ["--input", "gs://b/x/*.jpg"]
    with pytest.raises(AssertionError, match="--max_detection=5"):
        check_command(_job_argv(words))
    check_command(_job_argv(words)[:-1])
