"""The one owner of a run's checkpoints: model, optimizer and step through tf.train.CheckpointManager.

Every saver (the periodic callback, the leak guard's abort, the signal handler, the OOM handler) goes
through the same `Checkpointer`, so there is one numbering, one retention policy and one directory.

Example:
    >>> ckpt = Checkpointer(run_dir / "checkpoints", model=detector, optimizer=optimizer, keep=3)
    >>> ckpt.restore_latest()        # None on a fresh run dir, else the restored step
    >>> ckpt.save()                  # -> ".../checkpoints/ckpt-600"
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from tfodtrain.exit_codes import UserError

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: Path, model, optimizer, keep: int = 3):
        self.directory = Path(directory)
        self.step = optimizer.iterations  # the global step is the optimizer's iteration count
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, global_step=self.step)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.directory), max_to_keep=keep, step_counter=self.step
        )
        self._last_saved_step: int | None = None

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore_latest(self) -> int | None:
        """Restore the newest complete checkpoint; returns its step, or None if there is none."""
        path = self.manager.latest_checkpoint
        if path is None:
            return None
        try:
            status = self.checkpoint.restore(path)
            # Objects that exist now (the built model, the optimizer's step) must all match; the
            # optimizer's slots are created later and restored then.
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as error:
            first_line = str(error).strip().splitlines()[0][:300]
            raise UserError(
                f"the checkpoint {path} does not fit this configuration (another model or other classes?): "
                f"{first_line}. Use a new run dir (hydra.run.dir=...) or the configuration it was trained with"
            ) from None
        step = int(self.step.numpy())
        self._last_saved_step = step
        return step

    def save(self, force: bool = False) -> str | None:
        """Save at the current step (once per step; `force` re-saves a step already saved)."""
        step = int(self.step.numpy())
        if not force and step == self._last_saved_step:
            return self.manager.latest_checkpoint
        path = self.manager.save(checkpoint_number=step)
        self._last_saved_step = step
        log.info("Saved checkpoint %s (step %d)", path, step)
        return path
