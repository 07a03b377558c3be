"""SIGTERM / SIGINT during `fit`: finish the step, checkpoint, stop (exit 143 / 130).

Outside `fit` the process-wide handler of `tfodtrain.preemption` stops the run; see docs/preemption.md.
"""

from __future__ import annotations

import signal

from tfodtrain.callbacks.base import AbortRequest, RunCallback
from tfodtrain.preemption import raise_if_received


class SignalCheckpoint(RunCallback):
    """SIGTERM / SIGINT: finish the current step, checkpoint, stop; the process exits 143 / 130."""

    def __init__(self):
        super().__init__()
        self.received = None
        self._previous = {}

    def on_train_begin(self, logs=None):
        raise_if_received()  # a signal before fit whose exception a library swallowed
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        # Only record it: the step's end acts (and, with several workers, all workers agree first).
        self.received = signum

    def on_train_batch_end(self, batch, logs=None):
        self._checkpoint_and_stop()

    def _checkpoint_and_stop(self):
        if self.received is not None and self.run.abort is None:
            name = signal.Signals(self.received).name
            path = self.run.checkpointer.save()
            self.run.request_abort(AbortRequest(128 + self.received, f"{name} received; checkpoint {path}"))
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._checkpoint_and_stop()  # a signal that came after the last step's check
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
