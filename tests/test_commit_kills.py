"""Kill a local run with SIGKILL at about 30%, 60% and 90% of its images (in process and
multi_processing), resume each time with the same command, and compare with a run that was
never interrupted; and two resumes at once on one output.

The detector counts its own calls: it appends one line per image to a log (``tf.print`` in its
graph, so worker processes count too), which tells how far a run got and how many images all
attempts inferred together.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from beam_pipeline.commits import read_commits
from tests.conftest import (
    COLOR_LABELS,
    FAKE_BOXES,
    FAKE_CLASSES,
    FAKE_NUM_DETECTIONS,
    FAKE_SCORES,
    job_args,
    paint_image,
    read_table,
    write_png,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = 12  # plus one broken file: 13 paths, 12 detector calls
# Columns that differ between two runs of the same rows: the run's id.
PER_RUN = ("run_id",)
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scene(tmp_path_factory, models_dir):
    import tensorflow as tf

    root = tmp_path_factory.mktemp("kills")
    log = root / "detector_calls.log"

    class CountingDetector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def detect(self, input_tensor):
            tf.print("call", output_stream="file://" + str(log))

            def one(values):
                return tf.constant(values)[tf.newaxis]

            return {"detection_boxes": one(FAKE_BOXES), "detection_scores": one(FAKE_SCORES),
                    "detection_classes": one(FAKE_CLASSES),
                    "num_detections": tf.constant([float(FAKE_NUM_DETECTIONS)])}

    module = CountingDetector()
    tf.saved_model.save(module, str(root / "detector"),
                        signatures={"serving_default": module.detect})
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(20)
    for index in range(IMAGES):
        colors = tuple(COLOR_LABELS[i] for i in rng.integers(0, 3, size=3))
        write_png(images / f"{index:03d}.png", paint_image(colors))
    (images / "broken.png").write_bytes(b"not an image")
    return {"root": root, "log": log, "images": images, "detector": root / "detector",
            "models": models_dir}


def _argv(scene, output, *extra):
    return job_args(scene["models"], scene["images"], output, *extra,
                    detector_model=scene["detector"], progress="false")


# Every launch runs the detector once at validation on a generated image: the probe that proves
# how its boxes are expressed (docs/detector-exports.md). It is not an image's inference.
PROBE_CALLS = 1


def _calls(scene) -> int:
    try:
        with open(scene["log"]) as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def _start(argv):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "beam_pipeline", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: the kill takes workers too


def _kill_at(scene, argv, output, fraction: float, timeout: float = 240) -> bool:
    """Starts the job and kills its whole process group with SIGKILL once the images committed
    before it plus those it inferred reach ``fraction`` of the input; False when the job
    finished first."""
    process = _start(argv)
    goal = math.ceil(fraction * IMAGES) - _committed(output) + PROBE_CALLS
    start = _calls(scene)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if _calls(scene) - start >= goal:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.communicate(timeout=60)
    return False


def _committed(output) -> int:
    """Images the commits hold that went through the detector (the broken file did not)."""
    if not output.exists():
        return 0
    return sum(c["images"] - c["image_counts"].get("error_decode", 0)
               for c in read_commits(str(output)))


def _resumed_rows(output, attempts) -> int:
    """Rows the final attempt found committed (the broken file's row counts here)."""
    record = json.loads((output / "run.json").read_text())
    assert sum(new for _, new in attempts) <= record["commits"]["images_resumed"]
    return record["commits"]["images_resumed"]


def _rows(output):
    return [[{k: v for k, v in row.items() if k not in PER_RUN} for row in read_table(output, t)]
            for t in ("detections", "images")]


@pytest.fixture(scope="module")
def uninterrupted(scene, tmp_path_factory):
    from beam_pipeline.main import run

    output = tmp_path_factory.mktemp("whole") / "out"
    before = _calls(scene)
    run(_argv(scene, output, "--commit_every=0"))
    assert _calls(scene) - before == IMAGES + PROBE_CALLS  # one call per image, and the probe
    return _rows(output)


@pytest.mark.parametrize("mode,step", [
    ("in_memory", 2),
    ("multi_processing", 6),
])
def test_killed_at_30_60_90_percent_then_resumed(scene, uninterrupted, tmp_path, mode, step):
    output = tmp_path / "out"
    # One worker process: the kill takes the launcher and its worker as a run on more cores
    # would, at one TensorFlow start-up less per attempt (the test's cost is those start-ups).
    argv = _argv(scene, output, f"--commit_every={step}", f"--direct_running_mode={mode}",
                 *(["--direct_num_workers=1"] if mode == "multi_processing" else []))
    start = _calls(scene)
    attempts = []
    for fraction in (0.3, 0.6, 0.9):
        committed, calls = _committed(output), _calls(scene)
        assert _kill_at(scene, argv, output, fraction), \
            f"the run finished before {fraction:.0%}"
        assert not (output / "run.json").exists()
        attempts.append((_calls(scene) - calls - PROBE_CALLS, _committed(output) - committed))
    resumed = _start(argv)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed: {_resumed_rows(output, attempts)} images" in out
    # Row for row what a run never interrupted wrote; every path exactly once.
    assert _rows(output) == uninterrupted
    paths = [row["image_path"] for row in read_table(output, "images")]
    assert len(paths) == len(set(paths)) == IMAGES + 1
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "complete" and record["counts"]["images_read"] == IMAGES + 1
    # Each kill lost at most one commit step of inferred images.
    for inferred, new in attempts:
        assert inferred - new <= step, attempts
    total = _calls(scene) - start - (len(attempts) + 1) * PROBE_CALLS
    assert total <= IMAGES + len(attempts) * step, (total, attempts)
    print(f"{mode}: inferred per killed attempt / committed: {attempts}; all attempts: "
          f"{total} calls for {IMAGES} images")


def test_a_second_run_on_the_same_output_refuses_with_one_line(scene, tmp_path):
    from benchmarks._assets import build_detector

    # A detector that waits 1.5 s a call without CPU: the first run is surely still going
    # while the other two start and are refused, however fast the machine.
    slow = build_detector(str(tmp_path / "slow"), kind="free", delay_ms=1500)
    output = tmp_path / "out"
    argv = [*_argv(scene, output, "--commit_every=1", "--direct_running_mode=in_memory"),
            f"--detector_model={slow}"]
    first = _start(argv)
    deadline = time.monotonic() + 120
    while not (output / "_run.lock").exists() and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = _start(argv)
    _, err = second.communicate(timeout=120)
    assert first.poll() is None, "the first run ended before the second tried: no test"
    assert second.returncode == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: --output {output} is being written by another run "
                                f"(pid {first.pid}"), err[-2000:]
    # --overwrite deletes nothing under a live run: refused the same way, the folder untouched.
    before = sorted(path.name for path in output.iterdir())
    overwrite = _start([*argv, "--overwrite"])
    _, err = overwrite.communicate(timeout=120)
    assert overwrite.returncode == 2 and first.poll() is None, err[-2000:]
    assert "--overwrite deletes nothing while it runs" in err.strip().splitlines()[-1]
    assert set(before) <= {path.name for path in output.iterdir()}
    # The refused runs touched nothing: the first still holds its lock and goes on. It is not
    # waited for (its steps are the kill test's business): stopped here, workers and all.
    assert (output / "_run.lock").exists() and first.poll() is None
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
