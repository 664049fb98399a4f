"""Fail-fast checks of ``--input``: a glob, folder or manifest that names at least one image."""

from __future__ import annotations

import os

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.errors import ConfigError
from transforms.inputs import (
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    InputSpec,
    first_manifest_path,
    listed_kind,
    resolve_input,
)
from transforms.paths import has_scheme, local_file_problem

__all__ = ["check_input"]

_FOLDER_SAMPLE = 10_000


def check_input(opts_input: str, *, recursive: bool = True) -> InputSpec:
    """Resolves ``--input`` and checks that it names at least one image (a manifest: that it
    exists and names at least one path), so a typo fails here rather than as an empty run.
    A folder is searched in its subfolders too when ``recursive``."""
    if not opts_input.strip():
        raise ConfigError("--input is empty; pass a glob, a folder or a manifest file")
    if opts_input.lower().endswith(MANIFEST_EXTENSIONS) and not FileSystems.exists(opts_input):
        raise ConfigError(f"--input manifest {opts_input} does not exist; check the path")
    if opts_input.lower().endswith(MANIFEST_EXTENSIONS) and "*" not in opts_input:
        problem = local_file_problem(opts_input)  # a FIFO would block the first read
        if problem is not None:
            raise ConfigError(f"--input manifest {opts_input}: {problem}")
    try:
        spec = resolve_input(opts_input, recursive=recursive)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--input {opts_input}: {str(exc).splitlines()[0]}") from exc
    if spec.kind == "manifest":
        if not FileSystems.exists(spec.location):
            raise ConfigError(f"--input manifest {spec.location} does not exist; check the path")
        if first_manifest_path(spec) is None:
            raise ConfigError(f"--input manifest {spec.location} names no paths (only blank or "
                              "# lines); put one image path per line")
        return spec
    # A folder is listed up to _FOLDER_SAMPLE names, enough to find an image in any real one.
    found = FileSystems.match([spec.location], limits=[_FOLDER_SAMPLE if spec.only_images else 1])
    paths = [m.path for m in found[0].metadata_list]
    if not spec.only_images:
        if not paths:
            raise ConfigError(f"--input {opts_input} matches no files; check the path and "
                              "pattern")
        return spec
    local = None if has_scheme(opts_input) else opts_input
    if local is not None and not os.path.exists(local):
        raise ConfigError(f"--input {opts_input} does not exist; check the path")
    if local is not None and os.path.isfile(local):
        raise ConfigError(f"--input {opts_input} is a file without an image extension "
                          f"({' '.join(IMAGE_EXTENSIONS)}); pass it as a glob, or list it in a "
                          ".txt manifest")
    if len(paths) < _FOLDER_SAMPLE and not any(
            listed_kind(path, spec.root) == "image" for path in paths):
        where = "in it or its subfolders" if recursive else (
            "at its top level (--recursive=false; its subfolders were not searched)")
        raise ConfigError(f"--input folder {opts_input} has no image files {where} "
                          f"({' '.join(IMAGE_EXTENSIONS)}; hidden files skipped); pass a glob "
                          f"such as '{opts_input.rstrip('/')}/**.<ext>' for other names")
    return spec
