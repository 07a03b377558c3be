"""What tfodtrain's callbacks share: the run they belong to, and the global step.

Call order in one training run (train.py):
    1. every callback configured under `callbacks:` is instantiated from its `_target_`;
    2. `attach(run)` is called on each `RunCallback` (stock tf_keras callbacks skip it);
    3. `model.fit(...)` drives the usual Keras hooks: on_train_begin, then on_train_batch_end after
       every execution (every `steps_per_execution` steps), then on_train_end;
    4. after fit, train.py runs the final evaluation and writes metrics.json.
Callbacks run in the order of the config; the memory monitor comes before the leak guard, so the guard
sees the readings the monitor just recorded (`run.memory.due_samples(step)` hands every caller at a step
the same samples: background readings queued during the step, then the step's own when due).

Example:
    >>> class EveryHundred(RunCallback):
    ...     def on_train_batch_end(self, batch, logs=None):
    ...         if self.run.step_of(batch) % 100 == 0:
    ...             print("step", self.run.step_of(batch))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import tf_keras


@dataclasses.dataclass
class AbortRequest:
    """Why a callback asked the run to stop; train.py turns it into the process exit code."""

    exit_code: int
    reason: str
    report: dict | None = None


@dataclasses.dataclass
class RunContext:
    run_dir: Path
    config: dict  # the resolved Hydra config as plain containers
    checkpointer: Any  # tfodtrain.checkpointing.Checkpointer
    summary_writer: Any  # tf.summary writer of RUN_DIR/tensorboard
    initial_step: int  # the step training (re)started from
    total_steps: int
    steps_per_execution: int = 1
    memory: Any = None  # tfodtrain.callbacks.monitor.MemorySampler, shared by monitor and guard
    abort: AbortRequest | None = None
    evaluations: list = dataclasses.field(default_factory=list)  # metrics dicts, in order
    eval_spans: list = dataclasses.field(default_factory=list)  # (start, end) monotonic s of evals in fit

    def step_of(self, batch: int) -> int:
        """The global step after Keras batch index `batch` of this fit (0-based, per execution end)."""
        return self.initial_step + batch + 1

    def execution_steps(self, step: int) -> int:
        """Steps run by the execution that ended at global step `step`: `steps_per_execution`, except a
        shorter last one (Keras ends executions every `steps_per_execution` steps from `initial_step`)."""
        done_before = (step - self.initial_step - 1) // self.steps_per_execution * self.steps_per_execution
        return step - self.initial_step - done_before

    def eval_seconds_since(self, since: float) -> float:
        """Seconds spent evaluating inside fit after monotonic time `since` (excluded from step rates)."""
        return sum(end - max(start, since) for start, end in self.eval_spans if end > since)

    def request_abort(self, request: AbortRequest) -> None:
        if self.abort is None:  # the first reason wins
            self.abort = request


class RunCallback(tf_keras.callbacks.Callback):
    """A tf_keras callback bound to the run (checkpointer, run dir, step, shared memory sampler)."""

    run: RunContext

    def __init__(self):
        super().__init__()
        # Keras then hands batch hooks the raw tensors instead of syncing them to numpy every batch (a
        # device sync per step). Set here: tf_keras' Callback.__init__ sets it False on the instance.
        self._supports_tf_logs = True

    def attach(self, run: RunContext) -> None:
        self.run = run

    def is_due(self, step: int, every_n_steps: int) -> bool:
        """True when a multiple of `every_n_steps` was crossed in the execution that ended at `step`."""
        if every_n_steps <= 0:
            return False
        return step // every_n_steps != (step - self.run.execution_steps(step)) // every_n_steps
