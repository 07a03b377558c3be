"""Steps/s of a run, the figure metrics.json and the hparams table report."""

from __future__ import annotations

import time

from tfodtrain.callbacks.base import RunCallback


class ThroughputMeter(RunCallback):
    """Steps/s from the end of the first (tracing) execution to the end of the last, evals excluded.

    It is the first callback: its marks bracket whole executions (step and every callback's hooks);
    what follows the last step (final checkpoint, final evaluation) is not training time."""

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()
        self.first_end = None
        self.last_step = self.run.initial_step
        self.last_end = self.start

    def on_train_batch_end(self, batch, logs=None):
        self.last_step = self.run.step_of(batch)
        self.last_end = time.monotonic()
        if self.first_end is None:
            self.first_end = (self.last_end, self.last_step)

    def summary(self) -> dict:
        end = self.last_end
        train_seconds = end - self.start - self.run.eval_seconds_since(self.start)
        rate = None
        if self.first_end is not None and self.last_step > self.first_end[1]:
            seconds = end - self.first_end[0] - self.run.eval_seconds_since(self.first_end[0])
            rate = (self.last_step - self.first_end[1]) / seconds
        return {"train_seconds": round(train_seconds, 2),
                "steps_per_second": round(rate, 4) if rate else None,
                "steps_trained": self.last_step - self.run.initial_step}
