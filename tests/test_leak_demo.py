"""The seed's leak in a real training run: the guard checkpoints and exits 75 before the OOM kill.

The kill itself is real (`memory.kill_over_budget`: SIGKILL when RSS passes the budget, as the kernel's
OOM killer would); nothing here is mocked.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from helpers.cli import run_cli
from tfodtrain import exit_codes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aborted_run(tmp_path_factory, data_cache):
    run_dir = tmp_path_factory.mktemp("leak") / "run"
    result = run_cli(["+experiment=leak_demo"], run_dir=run_dir)
    return run_dir, result


def test_guard_aborts_with_a_report_and_a_checkpoint(aborted_run):
    run_dir, result = aborted_run
    assert result.returncode == exit_codes.GUARD_ABORT, result.stderr[-3000:]
    report = json.loads((run_dir / "abort_report.json").read_text())
    assert report["pool"] == "host" and report["reason"].startswith("host:")
    assert report["slope_bytes_per_step"] > 2 << 20  # the callback keeps ~2.5 MiB of detections a step
    assert report["step"] < report["projected_exhaustion_step"] <= 2000
    assert report["settings"]["horizon_s"] == 180 and report["settings"]["warmup_s"] == 0  # the product defaults
    assert report["used_bytes"] < report["limit_bytes"] == 3072 << 20
    assert report["checkpoint"].endswith(f"ckpt-{report['step']}")
    assert (run_dir / f"checkpoints/ckpt-{report['step']}.index").exists()
    assert "memory budget exceeded" not in result.stderr  # it stopped before the kill


def test_resume_with_the_leak_off_finishes(aborted_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(aborted_run[0], run_dir)
    step = json.loads((run_dir / "abort_report.json").read_text())["step"]
    # the rest of the 2000 steps without the leak (and unpaced) take about a minute here; 600 is enough
    result = run_cli(["+experiment=leak_demo", "leak_demo.leak=false", "trainer.steps=600"], run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {step} of 600" in result.stdout + result.stderr  # restored the abort checkpoint
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 600


def test_without_the_guard_the_oom_killer_ends_it(tmp_path, data_cache):
    # a 2 GiB budget and a faster leak (25 MiB/s): the same kill as the README's command, minutes sooner
    result = run_cli(["+experiment=leak_demo", "guard=off", "memory.budget_mb=2048", "leak_demo.max_steps_per_s=10"],
                     run_dir=tmp_path / "run")
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
    assert "memory budget exceeded" in result.stderr
    assert not (tmp_path / "run" / "abort_report.json").exists()


def test_the_leaking_run_is_paced_so_the_leak_rate_is_the_same_on_any_machine():
    """Batches that end at once are spread to max_steps_per_s (real sleeps, nothing mocked)."""
    import time

    from tfodtrain.callbacks.leak_demo import KeepDetections

    keep = KeepDetections(max_steps_per_s=20)
    started = time.monotonic()
    for _ in range(5):
        keep._pace()
    assert time.monotonic() - started >= 4 / 20 * 0.95  # 4 intervals between 5 batch ends
    unpaced = KeepDetections(max_steps_per_s=None)
    started = time.monotonic()
    for _ in range(5):
        unpaced._pace()
    assert time.monotonic() - started < 0.05
