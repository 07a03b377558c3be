"""Measuring the training loop: tfodtrain against Model Garden's own trainer, and the monitor+guard overhead.

The two benchmark scripts are thin command lines over this module:

- `scripts/bench_throughput.py` trains one experiment config through tfodtrain (`python -m tfodtrain`,
  default callbacks) and through Model Garden's `train_lib.run_experiment` (orbit), each run in a fresh
  process. `train_model_garden` is the Model Garden side: the same `build_experiment` params, timed by
  a `LoopTimer` orbit action, with two one-step loops first (`single_step_loops_controller`) so the
  tracing step and the checkpoint orbit saves after a fresh run's first loop are left out, as the
  tracing step and other one-time work are left out of tfodtrain's rate (`StepClock`).
- `scripts/bench_overhead.py` runs one smoke-sized training in one process; the callback
  `tfodtrain.callbacks.timing.AlternatingBlocks` switches the memory monitor and leak guard on and off
  in blocks of steps and times every step; `overhead_summary` reduces its blocks.

Nothing here imports TensorFlow at module level (the scripts' parent processes stay light).

Example:
    >>> cfg = compose_run_config(["+experiment=smoke", "trainer.steps=22"], run_dir="/tmp/mg")
    >>> train_model_garden(cfg, steps_per_loop=10)["steps_per_second"]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def compose_run_config(overrides: list[str], run_dir: str | Path) -> DictConfig:
    """The config `python -m tfodtrain OVERRIDES hydra.run.dir=RUN_DIR` runs (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    from tfodtrain.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="bench"):
        return compose(config_name="config", overrides=[*overrides, f"run_dir={run_dir}"])


def default_value(group: str, key: str):
    """A value of a config group's default file, e.g. `default_value("memory", "interval_steps")` -> 10."""
    from tfodtrain.paths import config_dir

    return OmegaConf.load(config_dir() / group / "default.yaml")[key]


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)


# --------------------------------------------------------------------------------------------------
# Model Garden's trainer, configured like the tfodtrain run it is compared with


class LoopTimer:
    """Orbit train action: global step, monotonic and process CPU time after every Model Garden train loop.

    Orbit calls train actions right after `trainer.train(n)` returns, before it logs, writes summaries
    and checkpoints; consecutive marks therefore bracket whole loop cycles, like consecutive
    `on_train_batch_end` calls in Keras (tfodtrain.callbacks.timing.StepClock, the same `window_rates`).
    """

    def __init__(self, global_step):
        self.global_step = global_step
        self.marks: list[tuple[int, float, float]] = []

    def __call__(self, train_output) -> None:
        self.marks.append((int(self.global_step.numpy()), time.monotonic(), time.process_time()))


def single_step_loops_controller(first_loops: int = 2):
    """An orbit.Controller whose first `first_loops` train loops are one step each, then `steps_per_loop`.

    Loop 1 traces the train function. A fresh run's CheckpointManager has no previous save step, so
    orbit saves a checkpoint after loop 1 whatever `checkpoint_interval` says: a one-off tfodtrain does
    not have. With two one-step loops, timing from the end of loop 2 leaves out both and only one real
    step with them. Everything else is orbit's own Controller.
    """
    import orbit

    class SingleStepLoopsController(orbit.Controller):
        def __init__(self, *args, steps_per_loop: int, **kwargs):
            loop = int(steps_per_loop)
            super().__init__(*args, steps_per_loop=lambda step: 1 if step < first_loops else loop, **kwargs)

    return SingleStepLoopsController


def model_garden_params(cfg: DictConfig, steps_per_loop: int):
    """`build_experiment`'s params with Model Garden's trainer intervals matched to tfodtrain's run.

    Loops of `steps_per_loop` steps (orbit fetches the loss, logs a line and writes its summaries once
    per loop); summaries every `trainer.log_every` steps and checkpoints every `trainer.checkpoint_every`
    steps (rounded up to whole loops, as orbit requires), `trainer.keep_checkpoints` kept; no evaluation.
    """
    from tfodtrain.train import build_experiment, resolve_data

    params = build_experiment(cfg, resolve_data(cfg))
    trainer = params.trainer
    trainer.steps_per_loop = int(steps_per_loop)
    trainer.summary_interval = round_up(cfg.trainer.log_every, steps_per_loop)
    trainer.checkpoint_interval = round_up(cfg.trainer.checkpoint_every, steps_per_loop)
    trainer.max_to_keep = int(cfg.trainer.keep_checkpoints)
    return params


def train_model_garden(cfg: DictConfig, steps_per_loop: int, start_step: int = 2) -> dict:
    """Train `cfg` with Model Garden's `train_lib.run_experiment` in `cfg.run_dir`; returns the timing
    from the first loop end at or past `start_step` (at least 2: loop 1 traces and is followed by
    orbit's first-loop checkpoint) to the last.

    Same seed, device setup, mixed-precision policy and (through `build_experiment`) the same task, data
    and optimizer config as `tfodtrain.train.train`; the default distribution strategy, as tfodtrain uses.
    """
    import tensorflow as tf
    import tf_keras
    from official.core import task_factory, train_lib, train_utils

    from tfodtrain.callbacks.timing import window_rates
    from tfodtrain.train import configure_devices

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tf_keras.utils.set_random_seed(int(cfg.seed))
    configure_devices(cfg.memory)
    params = model_garden_params(cfg, steps_per_loop)
    if cfg.trainer.mixed_precision:
        tf_keras.mixed_precision.set_global_policy(cfg.trainer.mixed_precision)
    task = task_factory.get_task(params.task, logging_dir=str(run_dir))
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        trainer = train_utils.create_trainer(params, task, train=True, evaluate=False)
    timer = LoopTimer(trainer.global_step)
    train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train", params=params,
                             model_dir=str(run_dir), trainer=trainer, train_actions=[timer],
                             controller_cls=single_step_loops_controller(first_loops=2))
    return {**window_rates(timer.marks, max(2, int(start_step))), "steps": int(trainer.global_step.numpy()),
            "loop_ends": [mark[0] for mark in timer.marks]}


# --------------------------------------------------------------------------------------------------
# Monitor + guard overhead (the callback that switches them: tfodtrain.callbacks.timing)


def overhead_summary(blocks: list[dict], key: str = "seconds_per_step") -> dict:
    """Median per-step time (`key`: wall `seconds_per_step` or `cpu_seconds_per_step`) with and without,
    their ratio, and the median with/without ratio within each pair of blocks (2i, 2i+1)."""
    with_times = [b[key] for b in blocks if b["with"]]
    without_times = [b[key] for b in blocks if not b["with"]]
    by_index = {b["block"]: b for b in blocks}
    pairs = []
    for first in range(0, max(by_index, default=0), 2):
        pair = [by_index.get(first), by_index.get(first + 1)]
        if None not in pair and pair[0]["with"] != pair[1]["with"]:
            with_block, without_block = sorted(pair, key=lambda b: not b["with"])
            pairs.append(with_block[key] / without_block[key])
    with_median, without_median = statistics.median(with_times), statistics.median(without_times)
    return {"with_blocks": len(with_times), "without_blocks": len(without_times),
            "median_with": with_median, "median_without": without_median,
            "overhead_ratio": with_median / without_median,
            "paired_ratio_median": statistics.median(pairs) if pairs else None}
