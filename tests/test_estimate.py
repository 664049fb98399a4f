"""``--estimate``: the cost model on made-up readings, and the real thing on a small input
(its lines, nothing in --output, the temporary folder removed, bad settings refused first)."""

from __future__ import annotations

import os
import re
import tempfile

import pytest

from beam_pipeline.cost_model import SampleRun, commit_steps, estimate_lines, steady_state
from beam_pipeline.estimate import _drop_flags
from beam_pipeline.main import main
from tests.conftest import job_args

MB = 2**20


def _run(images=100, startup=20.0, per_image=0.05, cpu_per_image=0.08, tail=2.0):
    """Readings of a made-up run: ``startup`` s (10 CPU s) to the first image, then one image
    done every ``per_image`` s at ``cpu_per_image``, read every 0.1 s."""
    timeline, t = [], 0.0
    end = startup + images * per_image
    while t <= end + tail:
        done = 0 if t < startup else min(images, int((t - startup) / per_image) + 1)
        cpu = min(t, 10.0) if t < startup else 10.0 + done * cpu_per_image
        timeline.append((t, cpu, 500 * MB + done * 1024 * 10, done, images if t > 15 else 0,
                         1 if done else 0))
        t += 0.1
    return SampleRun(images, end + tail, 10.0 + images * cpu_per_image + 1.0,
                     500 * MB + images * 10240, timeline)


def test_steady_state_is_taken_apart_from_the_start_up():
    steady = steady_state(_run())
    assert steady.wall_per_image == pytest.approx(0.05, rel=0.05)
    assert steady.cpu_per_image == pytest.approx(0.08, rel=0.05)
    assert steady.first_done[0] == pytest.approx(20.0, abs=0.11)
    assert steady.ready[0] == pytest.approx(15.1, abs=0.11)
    assert len(steady.parts) >= 2 and all(p[0] == pytest.approx(20, rel=0.3)
                                          for p in steady.parts)


def test_steady_state_of_a_run_that_counted_nothing_is_none():
    run = _run()
    assert steady_state(SampleRun(5, 1.0, 1.0, 1, [(0.0, 0.0, 1, 0, 0, 0)])) is None
    assert steady_state(run) is not None


def test_estimate_lines_extrapolate_from_the_steady_state():
    run = _run()
    lines = estimate_lines(run, steady_state(run), todo=3000, cores=2, every=0,
                           deadline_hours=0.01)
    whole = next(line for line in lines if line.startswith("whole input here"))
    # 27 s of the made-up run, less its 100 images at 0.05 s, are fixed: 22 s + 3000 x 0.05.
    found = re.search(r"about (\d+) s wall \(2\.9 min\) for 3000 images \(22 s fixed", whole)
    assert found and 170 <= int(found.group(1)) <= 174 and "1 commit step" in whole
    assert "0.070 vCPU-hours (251 CPU s: " in whole  # 3000 x 0.08 + 11 fixed CPU s
    # 36 s less 22 s fixed leaves 14 s for 150 s of images: 11 workers.
    assert lines[-1].startswith("deadline 0.01 h: 11 workers like this machine (2 cores")
    too_soon = estimate_lines(run, steady_state(run), todo=3000, cores=2,
                              deadline_hours=0.001)
    assert "cannot be met" in too_soon[-1]


def test_commit_steps_follow_the_local_default():
    assert commit_steps(3000, 0, 0.05) == 1
    assert commit_steps(3000, -1, 0.05) == 1  # the first step holds 5000
    assert commit_steps(5000 + 12000 * 2, -1, 0.05) == 3  # then 600 s at 20 images/s
    assert commit_steps(10, 4, 0.05) == 3


def test_drop_flags_removes_values_and_switches():
    argv = ["--input", "a", "--estimate", "--min_score=0.3", "--output=o", "--estimate",
            "true", "--sample", "0.5", "--progress=false", "--overwrite", "--verbose"]
    assert _drop_flags(argv, ("--input", "--output", "--estimate", "--sample", "--progress",
                              "--overwrite")) == ["--min_score=0.3", "--verbose"]


@pytest.mark.e2e
def test_estimate_prints_its_lines_and_writes_nothing(models_dir, image_dir, tmp_path,
                                                      monkeypatch, capsys):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "never"
    main(job_args(models_dir, image_dir, out, "--estimate", "--estimate_images=3",
                  "--deadline_hours=2"))  # returns: exit 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("estimate: 4 images to do (0 skipped as done); a sample of 3 ")
    for prefix in ("sample run: ", "start-up (fixed, not per image): ", "per image (steady",
                   "memory: peak ", "whole input here: about ", "deadline 2 h: 1 worker"):
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    assert not out.exists()
    # (TensorFlow's autograph leaves its own files in the temporary folder.)
    assert [name for name in os.listdir(scratch) if name.startswith("bdc-")] == []


@pytest.mark.parametrize("bad", ["--min_score=2", "--estimate_images=0"])
def test_estimate_refuses_bad_settings_before_any_work(models_dir, image_dir, tmp_path, bad,
                                                       capsys):
    with pytest.raises(SystemExit) as exit_:
        main(job_args(models_dir, image_dir, tmp_path / "never", "--estimate", bad))
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "estimate:" not in captured.out and captured.err.startswith("error: ")
    assert not (tmp_path / "never").exists()


def test_steady_state_waits_for_every_worker_process():
    # Two workers: the second decodes its first image only when 40 of 100 are done; until
    # then its model loading burns CPU that no image owes (here 0.2 CPU s an image extra).
    run = _run()
    timeline = []
    for t, cpu, rss, done, queued, _ in run.timeline:
        extra = 0.2 * min(done, 40)
        timeline.append((t, cpu + extra, rss, done, queued, 2 if done >= 40 else int(done > 0)))
    late = SampleRun(run.images, run.wall_s, run.cpu_s + 8.0, run.peak_rss, timeline, workers=2)
    steady = steady_state(late)
    assert steady.window.startswith("images 40-") or steady.window.startswith("images 41-")
    assert steady.cpu_per_image == pytest.approx(0.08, rel=0.05)
