"""Periodic checkpoints through the run's one Checkpointer."""

from __future__ import annotations

from tfodtrain.callbacks.base import RunCallback


class PeriodicCheckpoint(RunCallback):
    """Save model, optimizer and step every `every_n_steps` steps and when training ends.

    Example (configs/callbacks/checkpoint.yaml):
        checkpoint:
          _target_: tfodtrain.callbacks.checkpoint.PeriodicCheckpoint
          every_n_steps: 100
    """

    def __init__(self, every_n_steps: int = 100):
        super().__init__()
        self.every_n_steps = int(every_n_steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.is_due(self.run.step_of(batch), self.every_n_steps):
            self.run.checkpointer.save()

    def on_train_end(self, logs=None):
        # An abort saves through its own path (with its report); a normal end saves the final state.
        if self.run.abort is None:
            self.run.checkpointer.save()
