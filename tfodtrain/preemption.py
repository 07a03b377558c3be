"""SIGTERM / SIGINT outside the training loop: stop cleanly with exit 143 / 130.

Inside `fit`, train.py's SignalCheckpoint callback turns a signal into "finish the step, checkpoint,
stop". Before fit starts (imports, model build, restore) and after it ends (final evaluation) there is
nothing new to save, so the signal simply stops the run with the same exit code instead of killing it
mid-way (SIGTERM's default) or printing a KeyboardInterrupt traceback (SIGINT's).

The handler raises `Preempted` wherever the main thread happens to be, which is often library code:
AutoGraph catches what a converted function raises and falls back to running it unconverted, tf.data
wraps it in a StagingError. So `Preempted` is a BaseException (as KeyboardInterrupt is, for the same
reason), and the signal is also latched: whatever the body then raises or returns, the outcome is the
signal's exit code. When the exception cannot propagate at all (the handler ran inside a garbage
collector callback, where Python only prints "Exception ignored"), the print is dropped and the run
stops at its next phase boundary (`raise_if_received`: after the model build, after the pre-flight,
at fit's start).

`python -m tfodtrain` calls `install_for_process()` first thing, so a signal during the imports and
Hydra's composition is handled the same way (a KeyboardInterrupt there was seen swallowed by a library,
and the run then trained to its end); `stop_on_signals()` inside it shares that latch.

Example:
    >>> with stop_on_signals():
    ...     train(cfg)        # SIGTERM during model build -> Preempted (exit_code 143)
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys

_received: int | None = None  # the signal the handler latched since it was installed, if one came


class Preempted(BaseException):
    """A SIGTERM / SIGINT outside the training loop; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received outside the training loop; "
                         "the newest checkpoint stands, rerun the same command to resume")
        self.exit_code = 128 + signum


def raise_if_received() -> None:
    """Raise Preempted if a signal came since the handler was installed and its exception was swallowed."""
    if _received is not None:
        raise Preempted(_received)


def _drop_preempted(unraisable, fallback):
    # A signal handled inside a weakref / __del__ callback cannot raise; the latch keeps it.
    if not issubclass(unraisable.exc_type, Preempted):
        fallback(unraisable)


def _handler(signum, frame):
    global _received
    _received = signum
    raise Preempted(signum)


def _install() -> dict:
    """Point SIGTERM / SIGINT at the handler; returns what to restore (handlers and the unraisable hook)."""
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    previous["hook"] = sys.unraisablehook
    sys.unraisablehook = functools.partial(_drop_preempted, fallback=previous["hook"])
    return previous


def install_for_process() -> None:
    """From here to the process's end, SIGTERM / SIGINT raise Preempted (the entry point, first thing:
    a Ctrl-C during the imports must not become a KeyboardInterrupt that a library swallows)."""
    global _received
    _received = None
    _install()


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM / SIGINT inside the block raise Preempted; nested in install_for_process it keeps its latch."""
    global _received
    installed_here = signal.getsignal(signal.SIGTERM) is not _handler
    if installed_here:
        _received = None
        previous = _install()
    try:
        raise_if_received()  # latched before the block, and swallowed
        yield
    except Preempted:
        raise
    except BaseException as error:
        if _received is None:
            raise
        raise Preempted(_received) from error  # a library wrapped the handler's exception in its own
    else:
        raise_if_received()  # a library swallowed it and the body ran on to its end
    finally:
        if installed_here:
            _received = None
            sys.unraisablehook = previous.pop("hook")
            for signum, old in previous.items():
                signal.signal(signum, old)
