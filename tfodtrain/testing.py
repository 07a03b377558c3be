"""Test aids: make a training process fail on purpose, at a chosen step, the way real runs fail.

Used by the supervisor, checkpoint and multi-worker tests through the command line (the child process
builds it from its config like any callback); harmless unless configured.

Example:
    python -m tfodtrain +experiment=smoke trainer.max_restarts=3 \
        '+callbacks.crash={_target_:tfodtrain.testing.CrashAt,plan:"1:abort,2:kill,3:segv,4:term"}'
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

from tfodtrain import exit_codes
from tfodtrain.callbacks.base import AbortRequest, RunCallback

log = logging.getLogger(__name__)

ACTIONS = ("abort", "oom", "kill", "segv", "abrt", "bus", "term", "int")


class CrashAt(RunCallback):
    """At the end of step S, fail as `plan` says ("S:action,S2:action2"), once per run dir.

    abort: the leak guard's path (checkpoint, exit 75); oom: a ResourceExhaustedError (exit 76);
    kill / segv / abrt / bus: death by SIGKILL, a real segmentation fault, SIGABRT, SIGBUS;
    term / int: SIGTERM / SIGINT sent to itself (preemption, Ctrl-C). `worker`: only that worker of a
    multi-worker run fails. Each step's failure fires once: a marker file in the run dir remembers it,
    so a restarted process (which may redo the step) goes on.
    """

    def __init__(self, plan: str, worker: int | None = None):
        super().__init__()
        self.plan = {}
        for item in str(plan).split(","):
            step, _, action = item.strip().partition(":")
            if action not in ACTIONS:
                raise ValueError(f"CrashAt plan item {item!r}: action must be one of {', '.join(ACTIONS)}")
            self.plan[int(step)] = action
        self.worker = worker

    def on_train_batch_end(self, batch, logs=None):
        step = self.run.step_of(batch)
        action = self.plan.get(step)
        if action is None or (self.worker is not None and self._worker_index() != int(self.worker)):
            return
        marker = self.run.run_dir / f"crash_at_{step}_{action}.done"
        if marker.exists():
            return
        marker.write_text(f"{os.getpid()}\n")
        log.warning("CrashAt: %s at step %d (test aid)", action, step)
        getattr(self, f"_{action}")(step)

    @staticmethod
    def _worker_index() -> int:
        from tfodtrain.distribute import worker_role

        return worker_role().index

    def _abort(self, step: int) -> None:
        path = self.run.checkpointer.save(force=True)
        self.run.request_abort(AbortRequest(exit_codes.GUARD_ABORT, f"CrashAt abort at step {step}; checkpoint {path}"))
        self.model.stop_training = True

    def _oom(self, step: int) -> None:
        import tensorflow as tf

        raise tf.errors.ResourceExhaustedError(None, None, f"CrashAt out of memory at step {step}")

    def _kill(self, step: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def _segv(self, step: int) -> None:
        ctypes.string_at(0)  # reads address 0: a real segmentation fault

    def _abrt(self, step: int) -> None:
        os.abort()

    def _bus(self, step: int) -> None:
        os.kill(os.getpid(), signal.SIGBUS)

    def _term(self, step: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def _int(self, step: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)
