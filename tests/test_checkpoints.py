"""Checkpoints survive kills and full disks; a run dir refuses a configuration that does not fit it.

Most tests drive the real Checkpointer over a small Keras model in this process. The damaged cases
are made by hand the way a kill or a failing disk leaves files (a save's `_temp` folder, a truncated
data file, a lost state file); one test SIGKILLs a real saving process the moment its save is under
way; the full disk is a real 1 MiB tmpfs when this user may mount one, and a real write failure
through RLIMIT_FSIZE otherwise. The mismatch tests resume a copy of the session's smoke run with
another class count and another backbone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.repo import REPO

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

from tfodtrain import checkpoint_files  # noqa: E402
from tfodtrain.checkpointing import Checkpointer, CheckpointWriteError  # noqa: E402
from tfodtrain.exit_codes import CHECKPOINT_WRITE_FAILED, UserError  # noqa: E402


def small_model(units: int = 64, inputs: int = 32):
    model = tf_keras.Sequential([tf_keras.Input((inputs,)), tf_keras.layers.Dense(units), tf_keras.layers.Dense(4)])
    optimizer = tf_keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)  # slots exist, as after a first step
    return model, optimizer


def saved_at(checkpointer: Checkpointer, *steps: int) -> list[str]:
    paths = []
    for step in steps:
        checkpointer.step.assign(step)
        checkpointer.checkpoint.model.layers[0].kernel.assign_add(tf.ones_like(checkpointer.checkpoint.model.layers[0].kernel))
        paths.append(checkpointer.save())
    return paths


def fingerprint(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def test_keeps_the_last_k_and_restores_the_newest(tmp_path):
    model, optimizer = small_model()
    ckpt = Checkpointer(tmp_path, model, optimizer, keep=3)
    saved_at(ckpt, 1, 2, 3, 4, 5)
    assert [c.step for c in checkpoint_files.candidates(tmp_path)] == [5, 4, 3]
    assert not list(tmp_path.glob("ckpt-1.*")) and not list(tmp_path.glob("ckpt-2.*"))
    model2, optimizer2 = small_model()
    assert Checkpointer(tmp_path, model2, optimizer2, keep=3).restore_latest() == 5
    assert all((a.numpy() == b.numpy()).all() for a, b in zip(model.weights, model2.weights))


def test_a_step_is_saved_once_even_when_forced(tmp_path):
    model, optimizer = small_model()
    ckpt = Checkpointer(tmp_path, model, optimizer)
    (path,) = saved_at(ckpt, 7)
    before = fingerprint(tmp_path)
    assert ckpt.save(force=True) == path
    assert fingerprint(tmp_path) == before


def test_leftovers_of_a_save_killed_midway_are_skipped_and_removed(tmp_path):
    model, optimizer = small_model()
    saved_at(Checkpointer(tmp_path, model, optimizer), 1, 2)
    (tmp_path / "ckpt-3_temp").mkdir()  # a kill while tensors were written
    (tmp_path / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(b"\0" * 100)
    (tmp_path / "ckpt-3.index").write_bytes(b"half merged")  # a kill mid-merge: the state file never named it
    (tmp_path / "checkpoint.tmp42").write_text("model_checkpoint_path")  # a kill mid state-file write
    model2, optimizer2 = small_model()
    ckpt = Checkpointer(tmp_path, model2, optimizer2)
    assert not (tmp_path / "ckpt-3_temp").exists() and not (tmp_path / "checkpoint.tmp42").exists()
    assert ckpt.restore_latest() == 2
    saved_at(ckpt, 3)  # the step is saved again, over the half-merged files
    assert Checkpointer(tmp_path, *small_model()).restore_latest() == 3


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    model, optimizer = small_model()
    saved_at(Checkpointer(tmp_path, model, optimizer), 1, 2)
    data = tmp_path / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(tmp_path, *small_model()).restore_latest() == 1
    assert "ckpt-2 is damaged" in caplog.text


def test_a_lost_state_file_still_finds_the_newest_complete_checkpoint(tmp_path):
    model, optimizer = small_model()
    saved_at(Checkpointer(tmp_path, model, optimizer), 4, 8)
    (tmp_path / "checkpoint").unlink()
    (tmp_path / "ckpt-9.index").write_bytes(b"index without data")  # incomplete: never tried
    assert checkpoint_files.latest_step(tmp_path) == 8
    assert Checkpointer(tmp_path, *small_model()).restore_latest() == 8


def test_a_model_that_does_not_fit_is_one_line_and_the_checkpoint_untouched(tmp_path):
    model, optimizer = small_model()
    saved_at(Checkpointer(tmp_path, model, optimizer), 3)
    before = fingerprint(tmp_path)
    with pytest.raises(UserError) as error:
        Checkpointer(tmp_path, *small_model(units=65)).restore_latest()
    assert "does not fit this configuration" in str(error.value) and "\n" not in str(error.value)
    assert fingerprint(tmp_path) == before


def test_held_saves_are_only_requested(tmp_path):
    model, optimizer = small_model()
    ckpt = Checkpointer(tmp_path, model, optimizer)
    ckpt.hold_saves()
    ckpt.step.assign(5)
    assert ckpt.save() == str(tmp_path / "ckpt-5")
    assert checkpoint_files.latest_step(tmp_path) is None and ckpt.take_request() and not ckpt.take_request()
    ckpt.release_saves()
    ckpt.save()
    assert checkpoint_files.latest_step(tmp_path) == 5


def test_a_scratch_writer_restores_from_the_chief_dir_and_keeps_nothing(tmp_path):
    chief_dir, scratch = tmp_path / "checkpoints", tmp_path / "worker-1" / "checkpoint-scratch"
    saved_at(Checkpointer(chief_dir, *small_model()), 6)
    worker = Checkpointer(chief_dir, *small_model(), write_directory=scratch)
    assert worker.restore_latest() == 6
    saved_at(worker, 7, 8)
    assert worker.latest == str(chief_dir / "ckpt-8") and not scratch.exists()
    assert checkpoint_files.latest_step(chief_dir) == 6  # only the chief writes there


def _full_disk(tmp_path: Path):
    """A real 1 MiB tmpfs (needs the right to mount), else None."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    return mount if done.returncode == 0 else None


@pytest.mark.parametrize("failure", ["tmpfs_full", "file_size_limit"])
def test_a_failing_save_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, failure):
    directory = tmp_path / "ckpt"
    if failure == "tmpfs_full":
        directory = _full_disk(tmp_path)
        if directory is None:
            pytest.skip("cannot mount a tmpfs here (not root); the file_size_limit case covers the failure")
    ckpt = Checkpointer(directory, *small_model(units=1024, inputs=64))  # ~0.55 MiB a checkpoint: 1 fits in 1 MiB, 2 do not
    try:
        saved_at(ckpt, 1)
        before = fingerprint(directory)
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        if failure == "file_size_limit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
        try:
            with pytest.raises(CheckpointWriteError) as error:
                saved_at(ckpt, 2)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            signal.signal(signal.SIGXFSZ, old_handler)
        message = str(error.value)
        assert error.value.exit_code == CHECKPOINT_WRITE_FAILED == 74
        assert f"cannot write checkpoint {directory}/ckpt-2" in message
        assert f"the previous checkpoint {directory}/ckpt-1 is intact" in message and "\n" not in message
        assert fingerprint(directory) == before  # nothing partial left, ckpt-1 and the state file as they were
        assert not list(directory.glob("ckpt-2*"))
        assert Checkpointer(directory, *small_model(units=1024, inputs=64)).restore_latest() == 1
    finally:
        if failure == "tmpfs_full":
            subprocess.run(["umount", str(directory)], check=False)


SAVER = r'''
import sys, tensorflow as tf, tf_keras
from tfodtrain.checkpointing import Checkpointer
model = tf_keras.Sequential([tf_keras.Input((2048,))] + [tf_keras.layers.Dense(2048) for _ in range(4)])
optimizer = tf_keras.optimizers.SGD(momentum=0.9)
optimizer.build(model.trainable_variables)
ckpt = Checkpointer(sys.argv[1], model, optimizer, keep=2)
for step in range(1, 10_000):
    optimizer.iterations.assign(step)
    ckpt.save()
'''


@pytest.mark.slow
def test_a_process_killed_mid_save_leaves_a_restorable_newest_checkpoint(tmp_path):
    """SIGKILL the instant a save's `_temp` folder appears (128 MiB per save: the save is under way)."""
    directory = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(directory)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the saver never got to its third save"
            if checkpoint_files.latest_step(directory) and list(directory.glob("ckpt-*_temp")):
                if checkpoint_files.latest_step(directory) >= 2:
                    proc.kill()
                    break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    named = checkpoint_files.latest_step(directory)
    model = tf_keras.Sequential([tf_keras.Input((2048,))] + [tf_keras.layers.Dense(2048) for _ in range(4)])
    optimizer = tf_keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    ckpt = Checkpointer(directory, model, optimizer, keep=2)
    assert ckpt.restore_latest() == named
    assert not list(directory.glob("ckpt-*_temp"))  # the killed save's leftovers are gone


@pytest.mark.slow
@pytest.mark.parametrize("override", ["data.num_classes=5", "model.task_overrides.model.backbone.mobilenet.model_id=MobileNetV1"],
                         ids=["other_classes", "other_backbone"])
def test_resuming_with_a_config_that_does_not_fit_is_exit_2_and_changes_nothing(tmp_path, smoke_run, override):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run / "checkpoints", run_dir / "checkpoints")
    before = fingerprint(run_dir / "checkpoints")
    result = run_cli(["+experiment=smoke", override], run_dir=run_dir, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfodtrain: error:")]
    assert len(errors) == 1 and "does not fit this configuration" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert fingerprint(run_dir / "checkpoints") == before
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "run_info.json").exists()
