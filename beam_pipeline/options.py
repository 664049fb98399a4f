"""The job's command-line options: one PipelineOptions subclass, beside every standard Beam flag."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.early_flags import switch
from transforms import DEFAULT_MAX_IMAGE_PIXELS
from transforms.box_formats import AUTO, BOX_FORMATS
from transforms.classification import DEFAULT_CLASSIFIER_BATCH, PREPROCESS_MODES
from transforms.model_files import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR

__all__ = ["DetectClassifyOptions", "job_option_names", "job_parser", "switch", "unknown_flags"]


def _add(group, flag: str, label: str, **kwargs) -> None:
    """Declares one option. ``label`` is its short name in the Flex Template's parameter list
    (``beam_pipeline.option_docs`` generates that file and the options table from this parser:
    the parser is the only declaration of an option, its default and its help)."""
    group.add_argument(flag, **kwargs).label = label


def _add_switch(group, flag: str, label: str, *, default: bool, help: str) -> None:
    """An on/off option: bare (``--overwrite``) or with a value (``--overwrite=false``)."""
    _add(group, flag, label, nargs="?", const=True, default=default, type=switch, help=help)


def _add_input_output_flags(group) -> None:
    """What is read and where the tables go."""
    _add(
        group, "--input", "Input images", required=True,
        help="Images to process: a glob ('data/*.jpg', 'gs://bucket/shots/**.png'), a folder "
             "(its image files), or a manifest: a .txt file with one path per line or a "
             ".csv file with a 'path' column. Any Beam filesystem (local, gs://, s3://).")
    _add_switch(
        group, "--recursive", "Read subfolders", default=True,
        help="A folder --input is read with all its subfolders (image files only, hidden "
             "files and folders skipped); --recursive=false reads its top level only. "
             "Globs and manifests are taken as given.")
    _add(
        group, "--output", "Output folder", required=True,
        help="Output folder (any Beam filesystem); gets detections/ and images/ Parquet.")
    _add_switch(
        group, "--overwrite", "Overwrite an earlier run", default=False,
        help="Replace the tables of an earlier run in --output (without it, such a run is "
             "refused before any work starts). Also --overwrite=true|false.")


def _add_model_flags(group) -> None:
    """The two models and their labels."""
    _add(
        group, "--detector_model", "Detector SavedModel", default=DEFAULT_DETECTOR,
        help="TF2 Object Detection API or TF Model Garden detection SavedModel folder "
             "(serving_default signature). "
             "Default: the bundled wafer-defect detector.")
    _add(
        group, "--detector_box_format", "Detector box convention", choices=BOX_FORMATS,
        default=AUTO,
        help="What the detector's detection_boxes are in: normalized (OD API), image_info "
             "(Model Garden's resized-frame pixels, mapped back with its image_info "
             "output), pixels (of the input image), or auto: decided from the signature "
             "and a probe inference at start-up, which refuses boxes outside the range of "
             "the convention (docs/detector-exports.md).")
    _add(
        group, "--detector_label_map", "Detector label map", default=None,
        help="OD API label_map.pbtxt for detector_label. Default: the bundled map with the "
             "bundled detector, none (detector_label null) with another detector.")
    _add(
        group, "--classifier_model", "Classifier model", default=DEFAULT_CLASSIFIER,
        help="Keras classifier (.keras, .h5 or SavedModel folder). Default: the bundled "
             "wafer-defect classifier.")
    _add(
        group, "--classifier_labels", "Classifier labels", default=None,
        help="Labels file, one label per line in the classifier's output order. Default: "
             "the bundled labels with the bundled classifier, else labels.txt beside the "
             "model.")


def _add_region_flags(group) -> None:
    """Which detections become regions, how they are cropped and classified."""
    _add(
        group, "--min_score", "Minimum detector score", type=float, default=None,
        help="Keep detections scoring at least this (0..1). Default: the threshold the "
             "detector declares in <saved_model>/assets.extra/score_threshold.json (the "
             "bundled detector does), else 0.5.")
    _add(
        group, "--max_detections", "Regions per image", type=int, default=100,
        help="Classify at most this many regions per image, highest scores first.")
    _add(
        group, "--crop_padding", "Crop padding", type=float, default=0.0,
        help="Grow each box by this fraction of its height/width on each side before "
             "cropping (0.1 = 10%% context).")
    _add(
        group, "--classifier_batch_size", "Classifier batch size",
        type=int, default=DEFAULT_CLASSIFIER_BATCH,
        help="Largest batch of crops per classifier call.")
    _add(
        group, "--classifier_preprocess", "Classifier input range",
        choices=sorted(PREPROCESS_MODES), default="unit",
        help="Input range the classifier was trained on: unit = [0,1], raw = [0,255], "
             "symmetric = [-1,1].")


def _add_safety_and_scale_flags(group) -> None:
    """Limits on what is trusted, and how the work is spread."""
    _add(
        group, "--max_image_pixels", "Largest image (pixels)",
        type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help="Refuse images larger than this many pixels, checked from the header before "
             "decoding (decompression bombs).")
    _add_switch(
        group, "--unsafe_keras_deserialization", "Allow Keras Lambda layers", default=False,
        help="Allow Keras models with Lambda layers (runs Python code stored in the model "
             "file; only for models you trust). Also =true|false.")
    _add(
        group, "--model_copies", "Model copies per machine", type=int, default=0,
        help="Load this many copies of each model per machine, shared across processes "
             "(0 = one per worker process, Beam's default).")
    _add(
        group, "--num_shards", "Parquet files per table", type=int, default=0,
        help="Parquet files per table (0 = let the runner decide).")


def _add_class_filter_flags(group) -> None:
    """Which detector classes are classified."""
    _add(
        group, "--classify_detector_classes", "Detector classes to classify",
        default=None, metavar="IDS_OR_NAMES",
        help="Crop and classify only regions of these detector classes (comma-separated "
             "ids or label-map names, e.g. '1,3' or 'defect'). Other regions are still "
             "written, with classified=false. Default: every class.")


def _add_tiling_flags(group) -> None:
    """Detection in tiles, for large images with small objects."""
    _add(
        group, "--tile_size", "Tile size (pixels)", type=int, default=0,
        help="Detect in overlapping square tiles of this many pixels and merge the boxes "
             "(for large images with small objects; 0 = off: the whole image is one call).")
    _add(
        group, "--tile_overlap", "Tile overlap", type=float, default=0.2,
        help="Fraction of --tile_size that neighbouring tiles share, in [0, 0.5).")
    _add_switch(
        group, "--tile_full_image", "Also detect on the whole image", default=False,
        help="With --tile_size, also run the whole image, so objects larger than a tile "
             "are found too. Also =true|false.")
    _add(
        group, "--tile_batch_size", "Tiles per detector call", type=int, default=8,
        help="Tiles per detector call when the detector's batch dimension is free.")


def _add_selection_flags(group) -> None:
    """Which of the listed paths are processed."""
    _add(
        group, "--skip_done_in", "Skip what earlier runs did",
        action="append", default=None, metavar="GLOB",
        help="Earlier outputs (e.g. 'gs://b/results/*'; repeatable): skip every path that "
             "a complete earlier run finished 'ok' with the same fingerprint (same models, "
             "labels and row-changing options). Errors are processed again.")
    _add(
        group, "--sample", "Sample fraction", type=float, default=1.0,
        help="Process only this fraction (0..1] of the paths, chosen by a hash of each "
             "path: the same paths on every runner and rerun.")


def _add_run_flags(group) -> None:
    """How the run ends, commits its work and reports on it."""
    _add(
        group, "--max_error_fraction", "Error gate", type=float, default=None,
        help="Fail the job (exit 3) when errors / images read exceeds this (0..1), after "
             "writing the rows and the run record. Default: no gate.")
    _add(
        group, "--commit_every", "Images per commit", type=int, default=None,
        metavar="IMAGES",
        help="Make finished images durable in steps of this many images (final Parquet "
             "files and a commit record per step); after a crash the same command again "
             "resumes from the last commit (docs/commits.md). 0 = off: the run is one "
             "step. Default on local runners (DirectRunner, Prism): 5000 images, then steps "
             "of about 10 minutes of work at the rate measured; off on distributed "
             "runners, whose engine retries failed work.")
    _add_switch(
        group, "--estimate", "Estimate the cost, run nothing", default=False,
        help="Measure instead of run: list the input (with --sample and --skip_done_in), "
             "run the real job here on a small deterministic sample of it (--sample's "
             "hash) in a temporary folder, and print the CPU seconds and memory per image, "
             "the fixed start-up, the wall time here and the vCPU-hours for the whole "
             "input, and the workers --deadline_hours needs. Nothing is written to "
             "--output. DirectRunner only (docs/performance.md).")
    _add(
        group, "--estimate_images", "Estimate sample size", type=int, default=240,
        metavar="IMAGES",
        help="With --estimate: images in the sample (fewer when the input has fewer).")
    _add(
        group, "--deadline_hours", "Deadline (hours)", type=float, default=None,
        help="With --estimate: also print how many workers like this machine finish the "
             "whole input within this many hours. Default: not printed.")
    _add_switch(
        group, "--progress", "Progress lines", default=True,
        help="Print a progress line to stderr every 10 s on the DirectRunner. "
             "--progress=false turns it off.")
    _add_switch(
        group, "--verbose", "Verbose start-up logging", default=False,
        help="Show Beam's and TensorFlow's start-up logging (hidden by default: none of it "
             "needs action; warnings and errors are always shown).")


# The groups in the order --help, the Flex Template and docs/options.md list them; a new
# option joins the group it belongs to.
_GROUPS = (
    _add_input_output_flags,
    _add_model_flags,
    _add_region_flags,
    _add_safety_and_scale_flags,
    _add_class_filter_flags,
    _add_tiling_flags,
    _add_selection_flags,
    _add_run_flags,
)


class DetectClassifyOptions(PipelineOptions):
    """Options of ``python -m beam_pipeline``."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("beam-detect-classify")
        for add_flags in _GROUPS:
            add_flags(group)

def job_parser(prog: str = "python -m beam_pipeline") -> argparse.ArgumentParser:
    """A parser with only the job's own options (for ``--help`` and the run record)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Finds objects in images with a TF Object Detection API detector, "
                    "classifies each one with a Keras CNN, and writes Parquet tables.",
        epilog="Beam's own options (--runner, --direct_running_mode, --direct_num_workers, "
               "--temp_location, Dataflow/Flink/Spark settings, --s3_* credentials) are "
               "accepted too: https://beam.apache.org/releases/pydoc/current/"
               "apache_beam.options.pipeline_options.html. Exit codes: 0 done; 2 a "
               "configuration mistake, nothing ran; 3 the error gate failed, rows and run "
               "record written; 1 the job failed.")
    DetectClassifyOptions._add_argparse_args(parser)
    return parser


def job_option_names() -> list[str]:
    """The destinations of the job's own options, in the order ``--help`` lists them."""
    return [action.dest for action in job_parser()._actions if action.dest != "help"]


class _ParserCaptured(Exception):
    pass


def unknown_flags(argv: Sequence[str]) -> list[str]:
    """The words of ``argv`` that no registered option (the job's or Beam's) accepts.

    Beam keeps or discards such flags with only a log warning, so ``--min_scor 0.3`` would run
    with the default; the job refuses them instead. The parser is Beam's own (every
    PipelineOptions subclass, abbreviations off), taken from ``get_all_options``' hook.
    """
    captured = {}

    def capture(parser) -> None:
        captured["parser"] = parser
        raise _ParserCaptured

    try:
        PipelineOptions([]).get_all_options(add_extra_args_fn=capture)
    except _ParserCaptured:
        pass
    _, unknown = captured["parser"].parse_known_args(list(argv))
    return unknown
