"""A progress line every N steps: step, rate, ETA, loss, and memory used / limit of every pool."""

from __future__ import annotations

import logging
import time

from tfodtrain.callbacks.base import RunCallback

log = logging.getLogger("tfodtrain.progress")


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLogger(RunCallback):
    """Logs `step 300/600 | 1.21 steps/s | ETA 4m08s | loss 0.812 | host 2.1/23.5 GiB` lines.

    The rate is measured since the previous line, so the first (tracing) step only slows the first line.
    Loss and learning rate also go to TensorBoard (`train/loss`, `train/learning_rate`).

    Example:
        python -m tfodtrain +experiment=ssd trainer.log_every=20
    """

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self._last_time = None
        self._last_step = None

    def on_train_begin(self, logs=None):
        self._last_time = time.monotonic()
        self._last_step = self.run.initial_step

    def on_train_batch_end(self, batch, logs=None):
        step = self.run.step_of(batch)
        if not (self.is_due(step, self.every_n_steps) or step == self.run.total_steps):
            return
        import tensorflow as tf

        now = time.monotonic()
        elapsed = now - self._last_time - self.run.eval_seconds_since(self._last_time)
        rate = (step - self._last_step) / elapsed if elapsed > 0 else float("nan")
        self._last_time, self._last_step = now, step
        eta = (self.run.total_steps - step) / rate if rate > 0 else float("nan")
        loss = float(logs["loss"]) if logs and "loss" in logs else float("nan")
        parts = [f"step {step}/{self.run.total_steps}", f"{rate:.2f} steps/s", f"ETA {_fmt_duration(eta)}",
                 f"loss {loss:.4f}"]
        if self.run.memory is not None:
            parts.extend(self.run.memory.describe_pools())
        log.info(" | ".join(parts))
        optimizer = self.model.optimizer
        with self.run.summary_writer.as_default(step=step):
            tf.summary.scalar("train/loss", loss)
            tf.summary.scalar("train/steps_per_second", rate)
            lr = getattr(optimizer, "learning_rate", None)
            if callable(lr):
                lr = lr(optimizer.iterations)
            if lr is not None:
                tf.summary.scalar("train/learning_rate", float(tf.convert_to_tensor(lr)))
