"""Model Garden's own trainer (orbit), configured like the tfodtrain run it is compared with.

The Model Garden side of `scripts/bench_throughput.py`: the same `tfodtrain.experiment.build` (seed,
devices, params, precision, task) as `tfodtrain.train`, timed by a `LoopTimer` orbit action. Imports
TensorFlow and orbit: the script's parent process does not import this module.

Example:
    >>> cfg = compose_run_config(["+experiment=smoke", "trainer.steps=22"], run_dir="/tmp/mg")
    >>> train_model_garden(cfg, steps_per_loop=10)["steps_per_second"]
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import orbit
from official.core import train_lib, train_utils
from omegaconf import DictConfig

from tfodtrain import experiment
from tfodtrain.benchmarking import round_up
from tfodtrain.callbacks.timing import window_rates


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


class SingleStepLoopsController(orbit.Controller):
    """An orbit.Controller whose first `first_loops` train loops are one step each, then `steps_per_loop`.

    Loop 1 traces the train function. A fresh run's CheckpointManager has no previous save step, so
    orbit saves a checkpoint after loop 1 whatever `checkpoint_interval` says: a one-off tfodtrain does
    not have. With two one-step loops, timing from the end of loop 2 leaves out both and only one real
    step with them. Everything else is orbit's own Controller.
    """

    def __init__(self, *args, steps_per_loop: int, first_loops: int = 2, **kwargs):
        loop = int(steps_per_loop)
        super().__init__(*args, steps_per_loop=lambda step: 1 if step < first_loops else loop, **kwargs)


def match_trainer_intervals(params, cfg: DictConfig, steps_per_loop: int):
    """`params` (from `tfodtrain.experiment.build`) with Model Garden's trainer intervals matched to tfodtrain's run.

    Loops of `steps_per_loop` steps (orbit fetches the loss, logs a line and writes its summaries once
    per loop); summaries every `trainer.log_every` steps and checkpoints every `trainer.checkpoint_every`
    steps (rounded up to whole loops, as orbit requires), `trainer.keep_checkpoints` kept; no evaluation.
    """
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
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = experiment.build(cfg, experiment.resolve_data(cfg), logging_dir=str(run_dir))
    params = match_trainer_intervals(exp.params, cfg, steps_per_loop)
    task, strategy = exp.task, exp.strategy
    with strategy.scope():
        trainer = train_utils.create_trainer(params, task, train=True, evaluate=False)
    timer = LoopTimer(trainer.global_step)
    train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train", params=params,
                             model_dir=str(run_dir), trainer=trainer, train_actions=[timer],
                             controller_cls=functools.partial(SingleStepLoopsController, first_loops=2))
    return {**window_rates(timer.marks, max(2, int(start_step))), "steps": int(trainer.global_step.numpy()),
            "loop_ends": [mark[0] for mark in timer.marks]}
