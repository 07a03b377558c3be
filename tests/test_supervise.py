"""The supervisor (tfodtrain.supervise): restarts from the checkpoint, never restarts what must not be.

Fast tests run the real Supervisor over a fake trainer: a small Python child that "checkpoints" by
writing checkpoint files the way tf.train.CheckpointManager lays them out, then ends as its plan says
(exit codes, real SIGKILL / SIGSEGV / SIGABRT / SIGBUS deaths, SIGTERM handling). The slow test runs
the real trainer (`smoke`) under `trainer.max_restarts`, failing at chosen steps through
tfodtrain.testing.CrashAt: a guard-style abort (75), SIGKILL, a real segfault, then SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.repo import REPO
from tfodtrain.checkpoint_files import latest_step
from tfodtrain.supervise import FAULT_LOG, RESTARTS_FILE, Supervisor, describe_end, exit_code_of

FAKE_TRAINER = r'''
import ctypes, os, signal, sys, time
from pathlib import Path
from tfodtrain.supervise import enable_fault_log

enable_fault_log()
run_dir, plan = Path(sys.argv[1]), sys.argv[2].split(",")
counter = run_dir / "attempts"
attempt = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(attempt))
action = plan[attempt - 1]

def checkpoint(step):
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    (ckpt / f"ckpt-{step}.index").write_bytes(b"index")
    (ckpt / f"ckpt-{step}.data-00000-of-00001").write_bytes(b"data")
    (ckpt / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\n'
                                     f'all_model_checkpoint_paths: "ckpt-{step}"\n')

def crash_in_native_code():
    ctypes.string_at(0)

if action.endswith("-noprogress"):
    action = action.removesuffix("-noprogress")
else:
    checkpoint(attempt * 10)
if action == "wait":  # until SIGTERM: checkpoint again, exit 143, as the trainer does
    def stop(signum, frame):
        checkpoint(attempt * 10 + 5)
        staging = run_dir / "got_signal.tmp"  # whole or absent: the test polls for the file, then reads it
        staging.write_text(signal.Signals(signum).name)
        os.replace(staging, run_dir / "got_signal")
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    (run_dir / "ready").write_text("1")
    while True:
        time.sleep(0.05)
elif action == "segv":
    crash_in_native_code()
elif action in ("kill", "abrt", "bus"):
    os.kill(os.getpid(), {"kill": signal.SIGKILL, "abrt": signal.SIGABRT, "bus": signal.SIGBUS}[action])
sys.exit(int(action))
'''


def fake_supervisor(tmp_path: Path, plan: str, max_restarts: int = 10, backoff_s: float = 0.0) -> Supervisor:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return Supervisor([sys.executable, str(script), str(run_dir), plan], run_dir, max_restarts=max_restarts,
                      backoff_s=backoff_s, env=env)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RESTARTS_FILE).read_text().splitlines()]


def test_exit_codes_and_causes():
    assert exit_code_of(-9) == 137 and exit_code_of(-11) == 139 and exit_code_of(75) == 75
    assert describe_end(-signal.SIGKILL)[1:] == ("SIGKILL", True)
    assert describe_end(-signal.SIGSEGV)[1:] == ("SIGSEGV", True)
    assert describe_end(-signal.SIGTERM)[2] is False
    assert describe_end(75)[2] and describe_end(76)[2]
    assert not any(describe_end(code)[2] for code in (0, 1, 2, 74, 130, 143))


def test_restarts_after_each_restartable_end_resuming_from_the_checkpoint(tmp_path):
    supervisor = fake_supervisor(tmp_path, "75,76,kill,segv,abrt,bus,0")
    assert supervisor.run() == 0
    rows = records(supervisor.run_dir)
    assert [r["exit_code"] for r in rows] == [75, 76, 137, 139, 134, 135, 0]
    assert [r["signal"] for r in rows][2:6] == ["SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS"]
    assert [r["restart"] for r in rows] == [True] * 6 + [False]
    # Each attempt started from the checkpoint the previous one left.
    assert [r["started_step"] for r in rows] == [None, 10, 20, 30, 40, 50, 60]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60, 70]
    assert "OOM killer" in rows[2]["cause"] and "segmentation fault" in rows[3]["cause"]


@pytest.mark.parametrize("code", [0, 1, 2, 74, 130, 143])
def test_never_restarts_after(tmp_path, code):
    supervisor = fake_supervisor(tmp_path, f"{code},0")
    assert supervisor.run() == code
    rows = records(supervisor.run_dir)
    assert len(rows) == 1 and rows[0]["restart"] is False and rows[0]["exit_code"] == code


def test_a_restart_without_progress_stops_the_loop(tmp_path):
    supervisor = fake_supervisor(tmp_path, "kill,kill-noprogress,0")
    assert supervisor.run() == 137  # the last child's code: SIGKILL = 128 + 9
    rows = records(supervisor.run_dir)
    assert len(rows) == 2 and rows[1]["restart"] is False
    assert rows[1]["started_step"] == rows[1]["step"] == 10
    assert "no progress" in rows[1]["note"]


def test_a_first_attempt_without_progress_is_restarted_once(tmp_path):
    supervisor = fake_supervisor(tmp_path, "segv-noprogress,0")
    assert supervisor.run() == 0
    assert [r["restart"] for r in records(supervisor.run_dir)] == [True, False]


def test_restart_limit_and_doubling_backoff(tmp_path):
    supervisor = fake_supervisor(tmp_path, "75,75,75,0", max_restarts=2, backoff_s=0.05)
    started = time.monotonic()
    assert supervisor.run() == 75
    rows = records(supervisor.run_dir)
    assert [r["delay_s"] for r in rows] == [0.05, 0.1, None]
    assert "restart limit reached" in rows[2]["note"]
    assert time.monotonic() - started >= 0.15


def test_segfault_traceback_is_kept_in_the_run_dir(tmp_path):
    supervisor = fake_supervisor(tmp_path, "segv,0")
    assert supervisor.run() == 0
    text = (supervisor.run_dir / FAULT_LOG).read_text()
    assert "Segmentation fault" in text and "crash_in_native_code" in text
    assert records(supervisor.run_dir)[0]["fault_log"] == str(supervisor.run_dir / FAULT_LOG)


def supervisor_process(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A Supervisor in its own process (so the test can signal it like a scheduler would), its fake
    trainer started and waiting for SIGTERM."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launcher = (
        "import sys; from pathlib import Path; from tfodtrain.supervise import Supervisor; "
        f"sys.exit(Supervisor([sys.executable, {str(script)!r}, {str(run_dir)!r}, 'wait,0'], "
        f"Path({str(run_dir)!r}), max_restarts=3).run())")
    proc = subprocess.Popen([sys.executable, "-c", launcher], env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 60
    while not (run_dir / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the fake trainer never started"
        time.sleep(0.05)
    return proc, run_dir


def test_sigterm_to_the_supervisor_is_forwarded_and_nothing_restarts(tmp_path):
    proc, run_dir = supervisor_process(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert (run_dir / "got_signal").read_text() == "SIGTERM"
    rows = records(run_dir)
    assert len(rows) == 1 and rows[0]["restart"] is False and "SIGTERM" in rows[0]["note"]
    assert latest_step(run_dir / "checkpoints") == 15  # the child checkpointed on the forwarded signal


def test_a_killed_supervisor_leaves_no_orphan_trainer(tmp_path):
    """SIGKILL cannot be forwarded: the trainer gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and checkpoints."""
    proc, run_dir = supervisor_process(tmp_path)
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while not (run_dir / "got_signal").exists():
        assert time.monotonic() < deadline, "the trainer did not get a signal when its supervisor died"
        time.sleep(0.05)
    assert (run_dir / "got_signal").read_text() == "SIGTERM"


def test_child_command_repeats_the_overrides_pinned_to_the_run_dir(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from tfodtrain.paths import config_dir
    from tfodtrain.supervise import child_command

    overrides = ["+experiment=smoke", "trainer.max_restarts=2", "seed=3", f"run_dir={tmp_path}"]
    launch = ["hydra.verbose=true", "hydra.mode=MULTIRUN", "hydra.sweep.dir=/elsewhere", "hydra/launcher=basic"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose(config_name="config", overrides=overrides + launch, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    # The job's own settings, and no sweep or launcher: the child is one run in this job's dir.
    assert child_command(cfg) == [sys.executable, "-m", "tfodtrain", *overrides, "hydra.verbose=true",
                                  f"hydra.run.dir={tmp_path}"]


@pytest.mark.slow
def test_cli_child_failing_on_bad_input_is_not_restarted(tmp_path):
    """A mistake only the child sees (TF_CONFIG, read by the trainer): exit 2 passes through, once."""
    run_dir = tmp_path / "run"
    result = run_cli(["+experiment=smoke", "trainer.max_restarts=3", "trainer.restart_backoff_s=0"],
                     run_dir=run_dir, timeout=300, env={"TF_CONFIG": "{not json"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "TF_CONFIG is not valid cluster JSON" in result.stderr
    assert f"trainer.restart_backoff_s=0 hydra.run.dir={run_dir}" in result.stdout  # the child's command line
    rows = records(run_dir)
    assert len(rows) == 1 and rows[0]["exit_code"] == 2 and rows[0]["restart"] is False


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_before_training_starts_exits_cleanly(tmp_path, signum, code, data_cache):
    """Sent while the trainer imports TensorFlow / builds the model: no checkpoint yet, no traceback."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "tfodtrain", "+experiment=smoke", f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / ".hydra" / "config.yaml").exists():  # Hydra writes it just before the job starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert f"{signal.Signals(signum).name} received outside the training loop" in out + err
    assert "Traceback" not in err


@pytest.mark.slow
def test_supervised_smoke_restarts_after_abort_sigkill_and_segfault_then_stops_on_sigterm(supervised_smoke):
    """4 trainer processes (helpers/shared_runs.py's SUPERVISED_PLAN): guard-style abort (75) at step 1, SIGKILL
    at 2, SIGSEGV at 3, SIGTERM at 4. conftest's `supervised_smoke`, started with the session."""
    run_dir, result = supervised_smoke
    assert result.returncode == 143, result.stderr[-4000:]
    rows = records(run_dir)
    assert [(r["exit_code"], r["signal"], r["restart"]) for r in rows] == [
        (75, None, True), (137, "SIGKILL", True), (139, "SIGSEGV", True), (143, None, False)]
    # Each restart resumed from the checkpoint of the step it failed at (checkpoint_every=1).
    assert [r["started_step"] for r in rows] == [None, 1, 2, 3]
    output = result.stdout + result.stderr
    for step in (1, 2, 3):
        assert f"Resuming from checkpoint {run_dir}/checkpoints/ckpt-{step} at step {step} of 6" in output
    # SIGTERM arrived during step 4's callbacks: step 5 ended, was checkpointed, and the run stopped there.
    assert rows[-1]["step"] == 5 and latest_step(run_dir / "checkpoints") == 5
    assert "SIGTERM received; checkpoint" in output
    faults = (run_dir / FAULT_LOG).read_text()
    assert "Segmentation fault" in faults and "_segv" in faults  # the Python traceback of the crash
    assert not (run_dir / "metrics.json").exists()  # never reached the end
