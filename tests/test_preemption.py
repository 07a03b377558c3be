"""stop_on_signals: a signal outside fit ends the run with 128 + signum even where library code
swallows or wraps the exception its handler raises (AutoGraph's fallback, tf.data's StagingError).

Real signals sent to this process; no TensorFlow needed, the library behaviour is reproduced by plain
`except Exception` blocks.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tfodtrain.preemption import Preempted, raise_if_received, stop_on_signals


def _signal_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the handler runs in the main thread at the next bytecode; this sleep is interrupted


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_handler_raises_preempted_with_the_exit_code(signum, code):
    with pytest.raises(Preempted) as caught:
        with stop_on_signals():
            _signal_self(signum)
    assert caught.value.exit_code == code
    assert f"{signal.Signals(signum).name} received outside the training loop" in str(caught.value)


def test_library_code_that_catches_exception_does_not_swallow_it():
    ran_on = []  # asserted outside the block: inside it, a failure would itself be turned into Preempted
    with pytest.raises(Preempted):
        with stop_on_signals():
            try:
                _signal_self(signal.SIGTERM)
            except Exception:  # what AutoGraph does before falling back to the unconverted function
                pass
            ran_on.append(True)
    assert not ran_on, "an `except Exception` swallowed the signal's exception"


def test_a_swallowed_signal_still_ends_the_run_with_its_code():
    with pytest.raises(Preempted) as caught:
        with stop_on_signals():
            try:
                _signal_self(signal.SIGTERM)
            except BaseException:  # the worst case: a bare except
                pass
            with pytest.raises(Preempted):
                raise_if_received()  # what train() checks between phases and at fit's start
    assert caught.value.exit_code == 143


def test_a_wrapped_signal_still_ends_the_run_with_its_code():
    with pytest.raises(Preempted) as caught:
        with stop_on_signals():
            try:
                _signal_self(signal.SIGINT)
            except BaseException as error:  # tf.data re-raises it as a StagingError
                raise RuntimeError("in user code: ...") from error
    assert caught.value.exit_code == 130
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_without_a_signal_exceptions_pass_through_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError):
        with stop_on_signals():
            raise ValueError("a real bug")
    assert signal.getsignal(signal.SIGTERM) is before
    raise_if_received()  # nothing latched


def _in_a_fresh_interpreter(before: str, block: str) -> subprocess.CompletedProcess:
    """Run `before`, then `block` inside stop_on_signals, in a new Python that exits with Preempted's code."""
    code = ("import os, signal, sys, time\n"
            "from tfodtrain.preemption import Preempted, install_for_process, raise_if_received, stop_on_signals\n"
            + before + "try:\n    with stop_on_signals():\n" + textwrap.indent(block, " " * 8)
            + "except Preempted as stop:\n    sys.exit(stop.exit_code)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_signal_inside_a_garbage_collector_callback_is_latched_without_a_printed_traceback():
    """Python cannot raise out of __del__ and prints "Exception ignored" instead (pytest would turn that
    print into a warning, hence a fresh interpreter)."""
    result = _in_a_fresh_interpreter(
        "class SignalsWhenCollected:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(1)\n",
        "SignalsWhenCollected()  # collected at once\n"
        "raise_if_received()\n"
        "print('ran on past the phase boundary')\n")
    assert result.returncode == 143, result.stdout + result.stderr
    assert "ran on past" not in result.stdout
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_signal_swallowed_before_training_stops_the_run_when_it_starts():
    """The entry point's process-wide policy: a Ctrl-C during the imports that a library swallows
    (seen: SIGINT 0.4 s after start, and the run then trained to its end) stops the run at train()'s
    stop_on_signals. In a fresh interpreter, since the policy lasts to the process's end."""
    result = _in_a_fresh_interpreter(
        "install_for_process()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(1)\n"
        "except BaseException:\n"
        "    pass  # a library's bare except during the imports\n",
        "print('the block ran'); sys.exit(3)\n")
    assert result.returncode == 130, result.stdout + result.stderr
    assert "the block ran" not in result.stdout
