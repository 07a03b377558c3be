"""The seed's leak in a real training run: the guard checkpoints and exits 75 before the OOM kill.

The kill itself is real (`memory.kill_over_budget`: SIGKILL when RSS passes the budget, as the kernel's
OOM killer would); nothing here is mocked. The runs are conftest's shared leak_demo runs (helpers/shared_runs.py):
`leak_demo_aborted` is the product's leak_demo without any override.
"""

from __future__ import annotations

import json
import signal

import pytest

from tfodtrain import exit_codes

pytestmark = pytest.mark.slow


def test_guard_aborts_with_a_report_and_a_checkpoint(leak_demo_aborted):
    run_dir, result = leak_demo_aborted
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


def test_resume_with_the_leak_off_finishes(leak_demo_aborted, leak_demo_aborted_resumed):
    """A copy of the aborted run dir, resumed with the leak off a few steps past the abort checkpoint
    (helpers/shared_runs.py: resume_aborted): the restore is what is checked, not the rest of the 2000 steps."""
    step = json.loads((leak_demo_aborted[0] / "abort_report.json").read_text())["step"]
    run_dir, result = leak_demo_aborted_resumed
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {step} of {step + 6}" in result.stdout + result.stderr  # restored the abort checkpoint
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == step + 6


def test_without_the_guard_the_oom_killer_ends_it(leak_demo_unguarded):
    # a 2 GiB budget and a faster leak (25 MiB/s) from the first step: the same kill as the README's command, sooner
    run_dir, result = leak_demo_unguarded
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
    assert "memory budget exceeded" in result.stderr
    assert not (run_dir / "abort_report.json").exists()


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
    for _ in range(50):
        unpaced._pace()
    assert time.monotonic() - started < 1.0  # paced at 20 a second, 50 would take 2.45 s (loose for a loaded CI)


def test_the_leak_starts_after_start_step_batches_which_are_paced_too():
    """Before `start_step` batches nothing is kept (no detector runs), and those batches keep the pace."""
    import time

    from tfodtrain.callbacks.leak_demo import KeepDetections

    keep = KeepDetections(max_steps_per_s=20, start_step=3)
    started = time.monotonic()
    for batch in range(3):
        keep.on_train_batch_end(batch)
    assert keep.kept == [] and time.monotonic() - started >= 2 / 20 * 0.95
