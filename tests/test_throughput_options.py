"""What keeps the loop fast without changing what it does: steps_per_execution, no per-step log sync,
one TensorBoard event per memory reading, mixed-precision loss scaling; and the block timing of
scripts/bench_overhead.py."""

from __future__ import annotations

import json

import pytest

from helpers.cli import compose_config, run_cli
from tfodtrain.callbacks.base import RunCallback, RunContext

# memory.interval_s=3600: readings by steps only here (the first execution, tracing, takes over the default 5 s)
SPE_RUN = ["+experiment=smoke", "trainer.steps=7", "trainer.steps_per_execution=2", "memory.interval_steps=3",
           "memory.interval_s=3600", "trainer.checkpoint_every=3", "trainer.keep_checkpoints=10", "trainer.log_every=3"]


def _run(tmp_path, initial_step=0, total_steps=7, steps_per_execution=2, memory=None):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path / "tensorboard"))
    return RunContext(run_dir=tmp_path, config={}, checkpointer=None, summary_writer=writer,
                      initial_step=initial_step, total_steps=total_steps,
                      steps_per_execution=steps_per_execution, memory=memory)


def _keras_batches(initial_step, total_steps, steps_per_execution):
    """The `batch` Keras hands on_train_batch_end: the last step index of each execution, the last one
    possibly shorter (tf_keras DataHandler)."""
    batches, done, remaining = [], 0, total_steps - initial_step
    while done < remaining:
        done += min(steps_per_execution, remaining - done)
        batches.append(done - 1)
    return batches


@pytest.mark.parametrize("initial_step, total_steps, spe, every, expected", [
    (0, 7, 2, 3, [4, 6]),  # executions end at 2, 4, 6, 7: the short last one crosses no multiple of 3
    (0, 12, 4, 10, [12]),
    (5, 14, 4, 3, [9, 13]),  # resumed at 5: executions end at 9, 13, 14
    (0, 5, 1, 2, [2, 4]),
])
def test_due_steps_follow_executions(tmp_path, initial_step, total_steps, spe, every, expected):
    run = _run(tmp_path, initial_step, total_steps, spe)
    callback = RunCallback()
    callback.attach(run)
    steps = [run.step_of(b) for b in _keras_batches(initial_step, total_steps, spe)]
    assert steps[-1] == total_steps
    assert sum(run.execution_steps(s) for s in steps) == total_steps - initial_step
    assert [s for s in steps if callback.is_due(s, every)] == expected


def test_guard_gets_every_monitor_reading_with_steps_per_execution(tmp_path):
    from tfodtrain.callbacks.guard import LeakGuard
    from tfodtrain.callbacks.monitor import MemoryMonitor, MemorySampler

    sampler = MemorySampler(interval_steps=3, run_dir=tmp_path)
    run = _run(tmp_path, total_steps=15, steps_per_execution=2, memory=sampler)
    monitor, guard = MemoryMonitor(), LeakGuard(mode="warn")
    guarded_steps = []
    for callback in (monitor, guard):
        callback.attach(run)
        callback.on_train_begin()
    for batch in _keras_batches(0, 15, 2):
        monitor.on_train_batch_end(batch)
        guard.on_train_batch_end(batch)
        assessment = guard.guard.assessments.get("host")
        if assessment is not None and assessment.step not in guarded_steps:
            guarded_steps.append(assessment.step)
    monitor.on_train_end()
    readings = [json.loads(line)["step"] for line in (tmp_path / "memory_readings.jsonl").read_text().splitlines()]
    assert readings == [4, 6, 10, 12, 15]  # the first execution end past each multiple of 3
    assert guarded_steps == readings


def test_batched_scalar_writes_read_back_like_eager_ones(tmp_path):
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    from tfodtrain.callbacks.scalars import ScalarWriter

    values = {"memory/host/used_mib": 812.25, "memory/host/limit_mib": 23500.0}
    batched = ScalarWriter(tf.summary.create_file_writer(str(tmp_path / "batched")))
    eager = tf.summary.create_file_writer(str(tmp_path / "eager"))
    for step in (10, 20):
        batched.write(step, {tag: value + step for tag, value in values.items()})
        with eager.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value + step)
    batched.writer.flush()
    eager.flush()

    def events(name):
        accumulator = event_accumulator.EventAccumulator(str(tmp_path / name), size_guidance={"tensors": 0})
        accumulator.Reload()
        return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
                for tag in accumulator.Tags()["tensors"]}, accumulator.SummaryMetadata("memory/host/used_mib")

    assert events("batched") == events("eager")
    assert events("batched")[0]["memory/host/used_mib"] == [(10, 822.25), (20, 832.25)]


def test_default_callbacks_get_tensor_logs_without_a_per_step_sync(tmp_path, data_cache):
    import tf_keras
    from hydra.utils import instantiate

    from tfodtrain.callbacks.signals import SignalCheckpoint
    from tfodtrain.callbacks.throughput import ThroughputMeter

    cfg = compose_config(["+experiment=smoke"], run_dir=tmp_path)
    callbacks = [ThroughputMeter(), SignalCheckpoint(), *(instantiate(spec) for spec in cfg.callbacks.values())]
    assert all(callback._supports_tf_logs for callback in callbacks)
    # Keras syncs the logs to numpy before every batch hook unless all callbacks with batch hooks opt out.
    assert tf_keras.callbacks.CallbackList(callbacks, add_history=True)._batch_hooks_support_tf_logs


def test_mixed_float16_gets_loss_scaling(tmp_path, data_cache):
    import tf_keras
    from official.core import task_factory

    from tfodtrain.experiment import build_experiment, resolve_data

    cfg = compose_config(["+experiment=smoke", "trainer.mixed_precision=mixed_float16"], run_dir=tmp_path)
    params = build_experiment(cfg, resolve_data(cfg))
    assert params.runtime.mixed_precision_dtype == "float16" and params.task.train_data.dtype == "float16"
    task = task_factory.get_task(params.task)
    optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
    assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)


def test_alternating_blocks_attribute_each_step_to_its_mode(tmp_path):
    from tfodtrain.callbacks.timing import AlternatingBlocks
    from tfodtrain.benchmarking import overhead_summary

    class Counter(RunCallback):
        def __init__(self):
            super().__init__()
            self.steps = []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(self.run.step_of(batch))

    counter = Counter()
    blocks = AlternatingBlocks([counter], warmup_steps=2, block_steps=3, out=str(tmp_path / "blocks.json"))
    blocks.attach(_run(tmp_path, total_steps=15, steps_per_execution=1))
    blocks.on_train_begin()
    for batch in range(15):
        blocks.on_train_batch_end(batch)
    clock, timed = 0.0, []
    for step, _, _, ran in blocks.marks:  # a step takes 12 ms after a hook that ran the callback, else 10 ms
        timed.append((step, clock, clock / 2, ran))
        clock += 0.012 if ran else 0.010
    blocks.marks = timed
    blocks.on_train_end()
    # warm-up steps 1-2 and "with" blocks (steps 3-5, 12-14, 15-) run the wrapped callback; 6-11 do not
    assert counter.steps == [1, 2, 3, 4, 5, 12, 13, 14, 15]
    saved = json.loads((tmp_path / "blocks.json").read_text())["blocks"]
    assert [(b["block"], b["with"], b["steps"]) for b in saved] == [(0, True, 3), (1, False, 3), (2, False, 3),
                                                                    (3, True, 3)]
    assert overhead_summary(saved)["overhead_ratio"] == pytest.approx(1.2)
    assert overhead_summary(saved)["paired_ratio_median"] == pytest.approx(1.2)
    assert overhead_summary(saved, "cpu_seconds_per_step")["overhead_ratio"] == pytest.approx(1.2)


@pytest.mark.slow
def test_steps_per_execution_run_reads_and_saves_at_the_expected_steps(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    result = run_cli(SPE_RUN, run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 7 and metrics["steps_trained"] == 7
    readings = [json.loads(line)["step"] for line in (run_dir / "memory_readings.jsonl").read_text().splitlines()]
    assert readings == [4, 6]  # executions end at 2, 4, 6, 7; readings past each multiple of 3
    trace_steps = [int(line.split(",")[0]) for line in (run_dir / "memory_trace_host.csv").read_text().splitlines()[1:]]
    assert trace_steps == [4, 6]
    saved = sorted(int(p.name.split("-")[1].split(".")[0]) for p in (run_dir / "checkpoints").glob("ckpt-*.index"))
    assert saved == [4, 6, 7]  # every 3 steps at execution ends, and the final step


def test_window_rates_start_at_the_first_mark_past_start_step():
    from tfodtrain.callbacks.timing import window_rates

    # (step, wall s, CPU s): a slow tracing step, a one-time pause at step 10, then 0.5 s / 0.25 CPU-s a step
    marks = [(1, 30.0, 20.0), (10, 36.0, 24.0), (20, 41.0, 26.5), (30, 46.0, 29.0)]
    assert window_rates(marks, start_step=10) == {"steps_per_second": 2.0, "steps_per_cpu_second": 4.0,
                                                  "timed_steps": 20, "first_timed_step": 10}
    assert window_rates(marks, start_step=31)["steps_per_second"] is None
