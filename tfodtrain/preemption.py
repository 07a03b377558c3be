"""SIGTERM / SIGINT outside the training loop: stop cleanly with exit 143 / 130.

Inside `fit`, train.py's SignalCheckpoint callback turns a signal into "finish the step, checkpoint,
stop". Before fit starts (imports, model build, restore) and after it ends (final evaluation) there is
nothing new to save, so the signal simply stops the run with the same exit code instead of killing it
mid-way (SIGTERM's default) or printing a KeyboardInterrupt traceback (SIGINT's).

Example:
    >>> with stop_on_signals():
    ...     train(cfg)        # SIGTERM during model build -> TrainingStopped(143, "SIGTERM received ...")
"""

from __future__ import annotations

import contextlib
import signal

from tfodtrain.train import TrainingStopped


class Preempted(TrainingStopped):
    """A SIGTERM / SIGINT outside the training loop; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum, f"{signal.Signals(signum).name} received outside the training loop; "
                         "the newest checkpoint stands, rerun the same command to resume")


@contextlib.contextmanager
def stop_on_signals():
    def handler(signum, frame):
        raise Preempted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
