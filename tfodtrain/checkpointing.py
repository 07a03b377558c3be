"""The one owner of a run's checkpoints: model, optimizer and step through tf.train.CheckpointManager;
and the other ways a checkpoint is read: a warm start (`warm_start`), a model for evaluation or export
(`restore_detector`), finding one from a path (`find_checkpoint`).

Every saver (the periodic callback, the leak guard's abort, the signal handler, the OOM handler) goes
through the same `Checkpointer`, so there is one numbering, one retention policy and one directory.

Survives a kill at any moment: TensorFlow names a checkpoint in the `checkpoint` state file only once
its files are complete, and a restore falls back to the previous one if the newest is damaged
(tfodtrain.checkpoint_files). A checkpoint once written is never rewritten in place; a save that fails
(a full disk) removes its partial files and raises `CheckpointWriteError` (exit 74), the previous
checkpoint intact. Non-chief workers of a multi-worker run write to a scratch dir (`write_directory`),
deleted after each save: every worker must take part in a save, only the chief's files are kept.

Example:
    >>> ckpt = Checkpointer(run_dir / "checkpoints", model=detector, optimizer=optimizer, keep=3)
    >>> ckpt.restore_latest()        # None on a fresh run dir, else the restored step
    >>> ckpt.save()                  # -> ".../checkpoints/ckpt-600"
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import tensorflow as tf

from tfodtrain import checkpoint_files, exit_codes
from tfodtrain.checkpoint_files import find_checkpoint  # noqa: F401  (part of this module's interface)
from tfodtrain.exit_codes import TrainingStopped, UserError, first_line
from tfodtrain.units import MIB

log = logging.getLogger(__name__)
# What `take_request()` returns: nothing requested, only insurance saves (best effort: a failure is a
# warning), or a save that must succeed (periodic, abort, signal, end of training).
NO_SAVE, INSURANCE_SAVE, REQUIRED_SAVE = 0, 1, 2

# A restore that fails with one of these read a damaged checkpoint (truncated data, missing file): the
# previous one is tried. Shape or structure mismatches (ValueError, AssertionError) mean another model.
_DAMAGED = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError, IndexError, OSError)


class CheckpointWriteError(TrainingStopped):
    """A checkpoint could not be written (full disk, quota, I/O error); the previous one is intact."""

    def __init__(self, reason: str):
        super().__init__(exit_codes.CHECKPOINT_WRITE_FAILED, reason)


class Checkpointer:
    def __init__(self, directory: Path, model, optimizer, keep: int = 3, write_directory: Path | None = None):
        self.directory = Path(directory)  # where checkpoints are restored from
        self.write_directory = Path(write_directory or directory)  # scratch (deleted after saves) if not `directory`
        self.step = optimizer.iterations  # the global step is the optimizer's iteration count
        # Model Garden's trainer layout: the model's modules (backbone, decoder, head) also at the root,
        # so the task's `init_checkpoint(_modules)` can warm-start another model from these checkpoints.
        items = dict(getattr(model, "checkpoint_items", {}))
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, global_step=self.step, **items)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.write_directory), max_to_keep=keep, step_counter=self.step
        )
        self._last_saved_step: int | None = None
        self._latest: str | None = self.manager.latest_checkpoint if self.is_writer else None
        self._holding = False  # multi-worker: saves are requested, then made by all workers together
        self._requested = NO_SAVE
        if self.is_writer and self.directory.is_dir():
            for leftover in checkpoint_files.remove_partial_saves(self.directory):
                log.warning("Removed %s, left by a save that was killed midway", leftover)

    @property
    def is_writer(self) -> bool:
        """False on a non-chief worker, whose saves go to a scratch dir."""
        return self.write_directory == self.directory

    @property
    def latest(self) -> str | None:
        return self._latest

    @property
    def holding(self) -> bool:
        """True while saves are only requested (several workers, inside fit)."""
        return self._holding

    def hold_saves(self) -> None:
        """From now on `save()` only records a request (see tfodtrain.distribute.WorkerAgreement)."""
        self._holding, self._requested = True, NO_SAVE

    def take_request(self) -> int:
        """The save requested since the last call (while holding): NO_SAVE, INSURANCE_SAVE (only insurance
        saves asked) or REQUIRED_SAVE; clears the request."""
        requested, self._requested = self._requested, NO_SAVE
        return requested

    def release_saves(self) -> None:
        self._holding = False

    def restore_latest(self) -> int | None:
        """Restore the newest complete checkpoint; returns its step, or None if there is none.

        A damaged checkpoint (killed mid-write outside TensorFlow's protocol, truncated, deleted) is
        skipped with a warning for the one before it; one that does not fit the built model is a
        UserError (exit 2) and nothing is written. The model must be built (all variables created).
        """
        for candidate in checkpoint_files.candidates(self.directory):
            path = str(candidate.prefix)
            try:
                status = self.checkpoint.restore(path)
                # Objects that exist now (the built model, the optimizer's step) must all match; the
                # optimizer's slots are created later and restored then.
                status.assert_existing_objects_matched()
            except _DAMAGED as error:
                log.warning("Checkpoint %s is damaged (%s: %s); trying the one before it", path,
                            type(error).__name__, first_line(error))
                continue
            except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as error:
                raise UserError(
                    f"the checkpoint {path} does not fit this configuration (another model or other classes?): "
                    f"{first_line(error)}. Use a new run dir (hydra.run.dir=...) or the configuration it "
                    "was trained with"
                ) from None
            step = int(self.step.numpy())
            self._last_saved_step, self._latest = step, path
            return step
        return None

    def save(self, force: bool = False, insurance: bool = False) -> str | None:
        """Save at the current step; returns the checkpoint's path.

        A step is saved once, `force` or not: rewriting the newest checkpoint in place would break it
        if the process were killed or the disk filled mid-write. (`force` marks callers that need a
        checkpoint now: guard abort, OOM.) `insurance` marks the leak guard's save at a warning, whose
        failure its caller only logs: an ordinary numbered checkpoint all the same, under the same
        keep-N policy. While `hold_saves()` is on, the save is only requested.
        """
        step = int(self.step.numpy())
        if step == self._last_saved_step:
            return self._latest
        path = str(self.directory / f"{checkpoint_files.PREFIX}-{step}")
        if self._holding:
            self._requested = max(self._requested, INSURANCE_SAVE if insurance else REQUIRED_SAVE)
            return path
        try:
            self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as error:
            checkpoint_files.remove_unlisted(self.write_directory, step)
            free_mib = shutil.disk_usage(self.write_directory).free // MIB
            raise CheckpointWriteError(
                f"cannot write checkpoint {path} ({first_line(error)}; {free_mib} MiB free on its disk); "
                f"the previous checkpoint {self._latest} is intact. Free space (or lower "
                "trainer.keep_checkpoints), then rerun the same command to resume") from None
        if not self.is_writer:
            shutil.rmtree(self.write_directory, ignore_errors=True)
        self._last_saved_step, self._latest = step, path
        log.info("Saved checkpoint %s (step %d)", path, step)
        return path


# --------------------------------------------------------------------------------------------------
# Reading a checkpoint into a model: warm start, evaluation, export


def build_variables(detector, input_size) -> None:
    """Create every variable now (the head's are made on first call), so a checkpoint restores, or
    fails to match, at once instead of silently at the first training or evaluation step."""
    height, width = int(input_size[0]), int(input_size[1])
    images = tf.zeros([1, height, width, 3])
    if hasattr(detector, "rpn_head"):
        # Faster/Mask R-CNN: the second stage's heads are built on the ROI features of a whole call. `call`,
        # not `__call__`, as Model Garden's serving module does: Keras would keep this call's input spec and
        # trace a training call from it when the model is saved (a SavedModel export), without groundtruths.
        shape = tf.constant([[height, width]], tf.float32)
        tf.function(lambda: detector.call(images, image_shape=shape, training=False))()
        return
    # RetinaNetModel.call without its post-processing, which has no variables (and NMS is slow eagerly).
    features = detector.backbone(images, training=False)
    if detector.decoder is not None:
        features = detector.decoder(features, training=False)
    detector.head(features, training=False)


def warm_start(task, detector) -> str | None:
    """The task's `initialize` (its `init_checkpoint` / `init_checkpoint_modules`), with one clear line
    when the checkpoint does not fit. Returns the checkpoint used, or None without one.

    Example:
        >>> warm_start(task, detector)   # in strategy scope, after task.build_model()
        '/runs/ssd1/checkpoints/ckpt-600'
    """
    config = task.task_config
    if not config.init_checkpoint:
        return None
    config.init_checkpoint = find_checkpoint(config.init_checkpoint, "model.init_checkpoint")
    modules = config.init_checkpoint_modules
    build_variables(detector, config.model.input_size)
    try:
        task.initialize(detector)
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        hint = ("; with another head or class count take only model.init_checkpoint_modules=backbone"
                if modules == "all" else "")
        raise UserError(f"model.init_checkpoint={config.init_checkpoint} does not match this model "
                        f"(modules: {modules}): {first_line(error)}{hint}") from None
    log.info("Warm start: %s restored from %s", modules, config.init_checkpoint)
    return config.init_checkpoint


def restore_detector(detector, params, checkpoint: str) -> int:
    """Load the model weights of a run's checkpoint into `detector` (read-only); returns its step.

    Training resumes through `Checkpointer`; using a model needs no optimizer, so this reads the
    checkpoint's `model` and `global_step` only, as Model Garden's export does (`expect_partial`).
    """
    build_variables(detector, params.task.model.input_size)
    step = tf.Variable(0, dtype=tf.int64)
    try:
        tf.train.Checkpoint(model=detector, global_step=step).read(checkpoint).expect_partial() \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise UserError(f"the checkpoint {checkpoint} does not fit this configuration (another model or other "
                        f"classes?): {first_line(error)}. Give the overrides it was trained with") from None
    return int(step.numpy())


def checkpoint_to_use(cfg) -> str:
    """mode=eval / mode=export: `checkpoint=PATH`, else the newest in the run dir's checkpoints/."""
    if cfg.get("checkpoint"):
        return find_checkpoint(cfg.checkpoint, "checkpoint")
    try:
        return find_checkpoint(Path(cfg.run_dir) / "checkpoints", "checkpoint")
    except UserError:
        raise UserError(f"no checkpoint in {Path(cfg.run_dir) / 'checkpoints'}: train this run first "
                        "(mode=train), point hydra.run.dir at a trained run, or give checkpoint=PATH") from None
