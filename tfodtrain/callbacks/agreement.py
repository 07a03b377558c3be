"""Workers of a multi-worker run agree, once per step, to stop and to save together (tfodtrain.distribute)."""

from __future__ import annotations

import logging

import tensorflow as tf

from tfodtrain.callbacks.base import AbortRequest, RunCallback
from tfodtrain.checkpointing import INSURANCE_SAVE, REQUIRED_SAVE
from tfodtrain.distribute import is_multi_worker, worker_role

log = logging.getLogger(__name__)


class WorkerAgreement(RunCallback):
    """All workers stop and save together: goes last among the callbacks of a multi-worker run.

    While fit runs, the run's Checkpointer only records save requests (`hold_saves`). After every
    execution (and at the end of training) each worker shares [exit code of its stop request, the save
    it wants (none, insurance only, one that must succeed), its step]; if any worker wants a save, all
    save (an insurance-only save that fails is a warning on every worker); if any must stop, all stop at
    this step, with the exit code of the lowest-indexed worker that stopped (a worker that stopped for
    a reason of its own keeps its own code).

    Example (train.py appends it for MultiWorkerMirroredStrategy, after every other callback):
        >>> callbacks = configured_callbacks + agreement_callbacks(strategy)
    """

    def __init__(self, strategy, role):
        super().__init__()
        self.strategy = strategy
        self.role = role
        replicas = strategy.num_replicas_in_sync

        def one_row_per_replica(row):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return tf.one_hot(replica, replicas, dtype=tf.float32)[:, None] * row[None, :]

        @tf.function
        def share(row):  # SUM of one-hot rows: every worker gets every replica's row (collectives sum only)
            per_replica = strategy.run(one_row_per_replica, args=(row,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self._share = share

    def on_train_begin(self, logs=None):
        self.stopped_at = None
        self.run.checkpointer.hold_saves()

    def on_train_batch_end(self, batch, logs=None):
        self._agree(self.run.step_of(batch))

    def on_train_end(self, logs=None):
        self._agree(int(self.run.checkpointer.step.numpy()))
        self.run.checkpointer.release_saves()

    def _agree(self, step: int) -> None:
        local = self.run.abort.exit_code if self.run.abort is not None else 0
        wants_save = self.run.checkpointer.take_request()  # 0 none, 1 insurance only, 2 a save that must succeed
        row = tf.constant([local, float(wants_save), step, self.role.index], tf.float32)
        table = self._share(row).numpy()
        stopping = [r for r in table if r[0] > 0]
        wanted = int(table[:, 1].max())
        if wanted == REQUIRED_SAVE:
            self.run.checkpointer.release_saves()
            self.run.checkpointer.save(force=True)
            self.run.checkpointer.hold_saves()
        elif wanted == INSURANCE_SAVE:  # a worker's leak guard warned: all save, a failure is only a warning
            self.run.checkpointer.release_saves()
            try:
                path = self.run.checkpointer.save(force=True, insurance=True)
                log.warning("Workers agreed: insurance checkpoint %s at step %d", path, step)
            except Exception as error:  # noqa: BLE001 - insurance is best effort
                log.warning("The agreed insurance checkpoint at step %d failed (%s: %s); training goes on",
                            step, type(error).__name__, error)
            self.run.checkpointer.hold_saves()
        if not stopping or self.stopped_at is not None:
            return
        first = min(stopping, key=lambda r: r[3])  # the lowest worker index wins; all workers pick the same
        code, worker = int(first[0]), int(first[3])
        if self.run.abort is None:
            self.run.request_abort(AbortRequest(
                code, f"worker {worker} stopped at step {step} (exit {code}); every worker stops with it"))
        log.warning("Workers agreed: stop at step %d with exit %d (worker %d asked)", step, code, worker)
        self.stopped_at = step
        self.model.stop_training = True


def agreement_callbacks(strategy) -> list:
    """[WorkerAgreement] for a multi-worker run, else []: one process decides alone."""
    if not is_multi_worker(strategy):
        return []
    return [WorkerAgreement(strategy, worker_role())]
