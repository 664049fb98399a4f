"""Packaging for workers: what --setup_file ships (the sdist Beam builds) and the wheel hold
every module and the bundled models; the containers and the Flex Template match the options."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import apache_beam
import pytest

from beam_pipeline.options import DetectClassifyOptions

pytestmark = pytest.mark.e2e  # runs the job, subprocesses or builds: the slow tier

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("beam_pipeline", "transforms", "training", "models")
# The bundled models, as transforms/model_files.py names them (bundled:<path>).
BUNDLED_FILES = (
    "models/detector/saved_model/saved_model.pb",
    "models/detector/saved_model/variables/variables.index",
    "models/detector/label_map.pbtxt",
    "models/classifier/classifier.keras",
    "models/classifier/labels.txt",
)


def _source_files(package: str) -> set[str]:
    """Files of ``package`` in the working tree that must ship: modules, and every model file."""
    root = ROOT / package
    pattern = "*" if package == "models" else "*.py"
    return {path.relative_to(ROOT).as_posix() for path in root.rglob(pattern)
            if path.is_file() and "__pycache__" not in path.parts
            and not path.name.endswith(".pyc")}


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The project copied aside, so builds leave no build/ or egg-info in the tree and cannot
    pick up stale files from an earlier build/."""
    dest = tmp_path_factory.mktemp("src") / "beam-detect-classify"
    dest.mkdir()
    for name in ("setup.py", "README.md", "requirements.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def sdist_names(source_copy, tmp_path_factory) -> set[str]:
    # The command Beam's stager runs for --setup_file when the `build` package is absent.
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "sdist", "--dist-dir", str(out)],
                   cwd=source_copy, check=True, capture_output=True, timeout=180)
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        # Drop the top folder (beam-detect-classify-0.1.0/).
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


@pytest.fixture(scope="module")
def wheel_names(source_copy, tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(out), str(source_copy)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.mark.parametrize("archive", ["sdist_names", "wheel_names"])
def test_package_ships_every_module_and_the_bundled_models(archive, request):
    names = request.getfixturevalue(archive)
    expected = set(BUNDLED_FILES)
    for package in PACKAGES:
        expected |= _source_files(package)
    missing = sorted(expected - names)
    assert not missing, f"not in the {archive.split('_')[0]}: {missing}"


# What the trainers write (training/train_detector.py, training/train_classifier.py) and the
# SavedModel format's own files.
TRAINER_LAYOUT = (
    *BUNDLED_FILES,
    "models/README.md",
    "models/detector/saved_model/fingerprint.pb",
    "models/detector/saved_model/variables/variables.data-00000-of-00001",
    "models/detector/saved_model/assets/vocab.txt",
    "models/detector/training_summary.json",
    "models/classifier/training_summary.json",
)


def test_package_data_covers_the_trainers_layout(source_copy, tmp_path):
    # Independent of whether trained models are present: fake files in the layout the trainers
    # and the SavedModel format produce must all reach the wheel.
    layout = tmp_path / "layout"
    shutil.copytree(source_copy, layout,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info"))
    for name in TRAINER_LAYOUT:
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(b"x")
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(out), str(layout)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        missing = sorted(set(TRAINER_LAYOUT) - set(archive.namelist()))
    assert not missing, f"setup.py package_data misses {missing}"


def test_package_ships_every_model_file_git_tracks(wheel_names):
    # What is committed under models/ is what workers get: package_data must not lag behind.
    try:
        tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, check=True,
                                 capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no git checkout")
    missing = sorted(set(tracked) - wheel_names)
    assert not missing, f"committed under models/, not packaged (package_data): {missing}"


def test_wheel_has_no_tests_or_local_data(wheel_names):
    tops = {name.split("/", 1)[0] for name in wheel_names}
    assert tops <= set(PACKAGES) | {"beam_detect_classify-0.1.0.dist-info"}, tops


# --- Containers -----------------------------------------------------------------------------

def _python_and_beam() -> tuple[str, str]:
    return f"{sys.version_info.major}.{sys.version_info.minor}", apache_beam.__version__


def test_worker_dockerfile_matches_the_launchers_python_and_beam():
    python, beam = _python_and_beam()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^FROM apache/beam_python{python}_sdk:{re.escape(beam)}\s*$",
                     dockerfile, re.MULTILINE), "the worker image must match Python and Beam"
    lock = (ROOT / "requirements.lock").read_text()
    assert f"apache-beam=={beam}" in lock
    assert "requirements.lock" in dockerfile and "pip install --no-deps /tmp/src" in dockerfile


def test_flex_template_dockerfile_points_at_real_files():
    dockerfile = (ROOT / "flex_template" / "Dockerfile").read_text()
    python, _ = _python_and_beam()
    assert re.search(
        rf"^FROM gcr.io/dataflow-templates-base/python{python.replace('.', '')}"
        r"-template-launcher-base", dockerfile, re.MULTILINE)
    env = dict(re.findall(r'^ENV (FLEX_TEMPLATE_PYTHON_\w+)="\$\{WORKDIR\}/([^"]+)"', dockerfile,
                          re.MULTILINE))
    assert set(env) == {"FLEX_TEMPLATE_PYTHON_PY_FILE", "FLEX_TEMPLATE_PYTHON_SETUP_FILE"}
    for path in env.values():
        assert (ROOT / path).is_file(), path
        top = re.escape(path.split("/")[0])
        assert re.search(rf"^COPY .*\b{top}\b", dockerfile, re.MULTILINE), path


def test_dockerignore_keeps_what_the_images_need():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text()
               .splitlines() if line.strip() and not line.startswith("#")}
    needed = {"setup.py", "README.md", "requirements.lock", *PACKAGES}
    assert not ignored & needed
    assert {".venv", ".git", "data", "output"} <= ignored


# --- Flex Template parameters ---------------------------------------------------------------

def _option_actions() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    DetectClassifyOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return {action.dest: action for action in parser._actions  # pylint: disable=protected-access
            if action.option_strings and action.dest != "help"}


def _metadata() -> dict:
    return json.loads((ROOT / "flex_template" / "metadata.json").read_text())


def test_flex_template_parameters_are_the_options_flags():
    actions = _option_actions()
    # The launcher passes every parameter as --name=value, so every flag takes a value (the
    # on/off ones true or false) and every flag is a parameter.
    assert not [dest for dest, action in actions.items() if action.nargs == 0]
    params = {param["name"]: param for param in _metadata()["parameters"]}
    assert set(params) == set(actions)
    for name, param in params.items():
        action = actions[name]
        assert param["label"] and param["helpText"], name
        assert param.get("isOptional", False) == (not action.required), name
        regexes = [re.compile(pattern) for pattern in param.get("regexes", [])]
        samples = list(action.choices or []) + (
            [str(action.default)] if action.default is not None else [])
        for sample in samples:
            assert all(regex.fullmatch(sample) for regex in regexes), (name, sample)


def test_flex_template_parameter_values_parse_with_the_options():
    argv = []
    for param in _metadata()["parameters"]:
        action = _option_actions()[param["name"]]
        if action.choices:
            value = action.choices[0]
        elif action.default is not None and not isinstance(action.default, str):
            value = str(action.default)
        elif action.type in (int, float):  # a number whose default is None (not set)
            value = "0.5" if action.type is float else "1"
        else:
            value = "gs://bucket/x"
        argv.append(f"--{param['name']}={value}")
    parsed = DetectClassifyOptions(argv).get_all_options(retain_unknown_options=True)
    assert parsed["input"] == "gs://bucket/x" and parsed["output"] == "gs://bucket/x"
    assert parsed["overwrite"] is False and parsed["unsafe_keras_deserialization"] is False
    switched = DetectClassifyOptions(argv + ["--overwrite=true"])
    assert switched.get_all_options()["overwrite"] is True


# --- Pinned versions ----------------------------------------------------------------------------

def _pins(name: str) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-r ")):
            dist, version = line.split("==")
            pins[canonicalize_name(dist)] = version
    return pins


def test_runtime_lock_pins_install_requires_and_no_test_tools():
    import ast

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    runtime, test = _pins("requirements.lock"), _pins("requirements-test.lock")
    assert not runtime.keys() & test.keys(), "pin each package in one file only"
    tree = ast.parse((ROOT / "setup.py").read_text())
    install_requires = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                            if isinstance(node, ast.Assign)
                            and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES")
    for spec in install_requires:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(runtime[name]), (spec, runtime[name])
    assert "boto3" in runtime  # s3:// on workers (apache-beam[aws])
    for tool in ("pytest", "hypothesis", "moto", "faster-coco-eval"):
        assert tool in test and tool not in runtime, tool
    lines = [line for line in (ROOT / "requirements-test.lock").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "-r requirements.lock"


def test_this_environment_has_the_pinned_versions():
    from importlib.metadata import PackageNotFoundError, version

    wrong = {}
    for name, pinned in {**_pins("requirements.lock"), **_pins("requirements-test.lock")}.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"(pinned, installed): {wrong}; rerun ./run_local.sh test to resync .venv"
