"""Errors and process exit codes, the same everywhere in tfodtrain (training, supervisor, tools).

The lowest layer: it imports nothing of tfodtrain.

A scheduler or the supervisor reads these to decide whether to restart a run.
"""

OK = 0  # training finished
BUG = 1  # unexpected error: a traceback was printed
BAD_INPUT = 2  # bad configuration or input: one line says what to fix; nothing was written
CHECKPOINT_WRITE_FAILED = 74  # a checkpoint could not be written (disk full?); the previous one is intact
GUARD_ABORT = 75  # the leak guard saved a checkpoint and stopped the run before memory ran out
OUT_OF_MEMORY = 76  # an out-of-memory error was raised; an emergency checkpoint was attempted
INTERRUPTED = 130  # SIGINT: checkpoint saved, then exit (128 + 2)
TERMINATED = 143  # SIGTERM (preemption): checkpoint saved, then exit (128 + 15)

# Exit codes after which a supervisor restarts from the last checkpoint. Deaths by a signal
# (SIGKILL from the OOM killer, SIGSEGV, SIGABRT, SIGBUS) are restartable too; see supervise.py.
RESTARTABLE = frozenset({GUARD_ABORT, OUT_OF_MEMORY})


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type when it has none), for a one-line message."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


class TrainingStopped(Exception):
    """Training stopped early on purpose (guard abort, signal, OOM, a failed checkpoint write); carries
    the exit code the entry point returns."""

    def __init__(self, exit_code: int, reason: str):
        super().__init__(reason)
        self.exit_code = exit_code


class UserError(Exception):
    """A mistake in the user's configuration or input.

    The entry point prints ``str(error)`` as one line and exits with ``BAD_INPUT``; no traceback.
    Say what is wrong and how to fix it.
    """
