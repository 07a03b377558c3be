"""The leak guard's insurance checkpoint: saved at a warning, rate-limited, best effort, agreed between workers;
and the run that is killed after the warning resumes from it.

The callback tests drive the real LeakGuard and Checkpointer over a small Keras model in this process, with
the guard's decision given (a warning for `host`): what a warning is belongs to the detector, tested apart.
The failing save is a real write failure (RLIMIT_FSIZE). The slow test is a real leak_demo run under
`guard=warn` (conftest's shared `leak_demo_warned`), killed for real by the OOM-killer stand-in
(`memory.kill_over_budget`), then resumed.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import signal

import pytest

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

from tfodtrain import checkpoint_files  # noqa: E402
from tfodtrain.callbacks.base import RunContext  # noqa: E402
from tfodtrain.callbacks.guard import LeakGuard  # noqa: E402
from tfodtrain.checkpointing import INSURANCE_SAVE, NO_SAVE, REQUIRED_SAVE, Checkpointer  # noqa: E402
from tfodtrain.exit_codes import UserError  # noqa: E402
from tfodtrain.memory.policy import Decision  # noqa: E402

WARNING = Decision(action="warn", reason="host: memory projected to run out in 50 min", pool="host")


def small_model(units: int = 64, inputs: int = 32):
    model = tf_keras.Sequential([tf_keras.Input((inputs,)), tf_keras.layers.Dense(units), tf_keras.layers.Dense(4)])
    optimizer = tf_keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def guard_of(tmp_path, checkpointer, **kwargs) -> LeakGuard:
    writer = tf.summary.create_file_writer(str(tmp_path / "tensorboard"))
    run = RunContext(run_dir=tmp_path, config={}, checkpointer=checkpointer, summary_writer=writer,
                     initial_step=0, total_steps=100)
    guard = LeakGuard(mode="warn", **kwargs)
    guard.attach(run)
    return guard


def texts(tmp_path, tag: str) -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    if tag not in events.Tags()["tensors"]:
        return []
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in events.Tensors(tag)]


def test_a_warning_saves_an_ordinary_checkpoint_at_once_at_most_every_interval(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoints", *small_model(), keep=2)
    guard = guard_of(tmp_path, checkpointer, insurance_every_s=600)
    checkpointer.step.assign(7)
    guard._insure(WARNING)
    assert checkpoint_files.latest_step(tmp_path / "checkpoints") == 7 and guard.insurance[0]["seconds"] < 60
    checkpointer.step.assign(9)
    guard._insure(WARNING)  # 600 s have not passed
    assert checkpoint_files.latest_step(tmp_path / "checkpoints") == 7 and len(guard.insurance) == 1
    eager = guard_of(tmp_path, checkpointer, insurance_every_s=0)
    for step in (9, 11):  # keep=2: insurance saves are numbered and retired like any other checkpoint
        checkpointer.step.assign(step)
        eager._insure(WARNING)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.index")) == ["ckpt-11.index", "ckpt-9.index"]
    guard.run.summary_writer.flush()
    marks = texts(tmp_path, "guard/insurance")
    assert [step for step, _ in marks] == [7, 9, 11] and "insurance checkpoint" in marks[0][1]
    assert f"{tmp_path}/checkpoints/ckpt-7" in marks[0][1] and WARNING.reason in marks[0][1]


def test_no_insurance_when_switched_off(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoints", *small_model())
    guard_of(tmp_path, checkpointer, insurance_every_s=None)._insure(WARNING)
    assert checkpoint_files.latest_step(tmp_path / "checkpoints") is None


def test_a_failed_insurance_save_is_a_logged_warning_and_training_goes_on(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path / "checkpoints", *small_model(units=1024, inputs=64))  # ~0.55 MiB
    guard = guard_of(tmp_path, checkpointer)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a real EFBIG write failure, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
    try:
        checkpointer.step.assign(5)
        with caplog.at_level(logging.WARNING):
            guard._insure(WARNING)  # must not raise CheckpointWriteError (exit 74)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "the insurance checkpoint at step 5 failed (CheckpointWriteError" in caplog.text
    assert "training goes on" in caplog.text and guard.insurance[0]["error"]
    assert checkpoint_files.latest_step(tmp_path / "checkpoints") is None
    guard.run.summary_writer.flush()
    assert "FAILED" in texts(tmp_path, "guard/insurance")[0][1]


def test_with_several_workers_the_insurance_save_is_requested_as_best_effort(tmp_path):
    """Workers hold saves inside fit; the agreement then saves on all of them (an insurance-only request:
    a failure there is a warning too)."""
    checkpointer = Checkpointer(tmp_path / "checkpoints", *small_model())
    guard = guard_of(tmp_path, checkpointer)
    checkpointer.hold_saves()
    checkpointer.step.assign(4)
    guard._insure(WARNING)
    assert checkpoint_files.latest_step(tmp_path / "checkpoints") is None  # only requested
    assert checkpointer.take_request() == INSURANCE_SAVE and checkpointer.take_request() == NO_SAVE
    checkpointer.save(insurance=True)
    checkpointer.save()  # a periodic save at the same step: the request must succeed
    assert checkpointer.take_request() == REQUIRED_SAVE


@pytest.mark.parametrize("value", [-1, "often", True])
def test_a_bad_insurance_interval_is_one_line(value):
    with pytest.raises(UserError, match=r"^callbacks.leak_guard.insurance_every_s=.* must be seconds >= 0"):
        LeakGuard(insurance_every_s=value)


@pytest.mark.slow
def test_a_kill_after_the_warning_loses_at_most_the_steps_since_the_warning(leak_demo_warned, leak_demo_warned_resumed):
    """guard=warn never aborts: the leak runs on to the OOM-killer stand-in's SIGKILL. The insurance checkpoint
    saved at the first warning is what the resumed run restores (periodic checkpoints are off here, so
    nothing else could be restored).

    conftest's shared `leak_demo_warned` (helpers/shared_runs.py): leak_demo under a 2 GiB budget, its leak
    (after leak_demo's settled start, when the guard's start-up discount ends) paced to fill it in about FILL_S
    (240 s); the guard's defaults warned 35-130 s after the leak's start in the runs of 2026-11-30."""
    run_dir, killed = leak_demo_warned
    log = killed.stdout + killed.stderr
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, log[-3000:])
    assert "memory budget exceeded" in log
    warned = [int(step) for step in re.findall(r"Leak guard at step (\d+): host", log)]
    assert warned, log[-3000:]
    insured = re.findall(r"insurance checkpoint (\S+/ckpt-(\d+)) at step (\d+) \(saved in", log)
    assert insured, log[-3000:]
    path, step, _ = insured[0]
    latest = checkpoint_files.latest_step(run_dir / "checkpoints")
    assert int(step) >= warned[0] and latest >= int(step)

    # The guard's state went to TensorBoard at its readings: the trend a user sees before the end.
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"guard/host/slope_mib_per_min", "guard/host/confidence", "guard/host/seconds_to_limit",
            "guard/insurance", "guard/warning"} <= tags, sorted(tags)

    # A copy of the killed run dir, resumed with the leak off up to 6 steps past its latest checkpoint
    # (helpers/shared_runs.py: resume_warned), started as soon as the kill came.
    resumed_dir, resumed = leak_demo_warned_resumed
    steps = latest + 6
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    restored = int(re.search(rf"Resuming from checkpoint \S+ at step (\d+) of {steps}", resumed.stdout + resumed.stderr)[1])
    assert restored >= warned[0]  # at most the steps since the warning are lost
    assert json.loads((resumed_dir / "metrics.json").read_text())["resumed_from_step"] == restored
