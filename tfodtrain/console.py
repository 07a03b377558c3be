"""A quiet console: the run's own lines, warnings and errors; the libraries' chatter stays out.

By default, before TensorFlow is imported, `TF_CPP_MIN_LOG_LEVEL=2` hides TensorFlow's C++ INFO and
WARNING lines (errors stay), and on the console INFO lines of other loggers than tfodtrain's (absl's
from Model Garden's builders: `round_filter`, `stochastic_depth_drop_rate`, ...) are dropped; Hydra's
log file (RUN_DIR/<job>.log) keeps them. Warnings and errors of every logger stay on the console.

Some native lines TensorFlow logs are no error nor anything to act on, and the entry drops them from the
console (`relay_native_stderr`; every other line passes, in order):

* `failed call to cuInit: ... (303)` on a machine without an NVIDIA driver: a CUDA build of TensorFlow
  probes for a GPU through its stub of libcuda, which finds no driver library (error 303); TensorFlow
  then runs on the CPU, as it must. With an NVIDIA driver installed (/proc/driver/nvidia), the line stays.
* `oneDNN supports DT_INT32 (or DT_BOOL) only on platforms with AVX-512. Falling back to the default
  Eigen-based implementation`: TensorFlow's oneDNN graph rewrite (on by default on x86 CPUs) met an int32
  (a two-stage detector's: bool) op of the model's graph, which oneDNN does not take; the op runs on
  TensorFlow's own kernel. Once per process and type.
* `Error in PredictCost() for the op: op: "CropAndResize" ...` (absl WARNING, `op_level_cost_estimator.cc`),
  and absl's `WARNING: All log messages before absl::InitializeLog() ...` before it: Grappler's cost model
  cannot price the ROI crops of Faster/Mask R-CNN, whose sizes are known only at run time; the graph is
  optimised without that estimate and runs as written. A few times per traced function.

`TFODTRAIN_VERBOSE=1` brings everything back. A `TF_CPP_MIN_LOG_LEVEL` of the user's own always wins
(and then nothing is dropped).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import signal
import subprocess
import sys

VERBOSE_ENV = "TFODTRAIN_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def quiet_native_logs() -> bool:
    """Call before TensorFlow is imported (its C++ logging reads the variable once); child processes inherit it.

    True when the level is the quiet console's own (not verbose, no level of the user's)."""
    if verbose() or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return True


_NATIVE_LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: E \S+"
NO_DRIVER_CUINIT = re.compile(_NATIVE_LINE + r"/cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)\s*$")
ONEDNN_INT32 = re.compile(_NATIVE_LINE + r"/util\.cc:\d+\] oneDNN supports DT_(INT32|BOOL) only on platforms with "
                          r"AVX-512\. Falling back to the default Eigen-based implementation if present\.\s*$")
ROI_CROP_COST = re.compile(r"^W\d{4} [\d:.]+\s+\d+ op_level_cost_estimator\.cc:\d+\] Error in PredictCost\(\) for the "
                           r'op: op: "CropAndResize" ')
ABSL_PREFACE = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
                          r"STDERR\s*$")


def native_noise(nvidia_driver: bool) -> list[re.Pattern]:
    """The native ERROR lines that are no error on this machine (see the module's docstring)."""
    common = [ONEDNN_INT32, ROI_CROP_COST, ABSL_PREFACE]
    return common if nvidia_driver else [NO_DRIVER_CUINIT, *common]


def relay(source: int, sink: int, noise: list[re.Pattern], wait_s: float = 0.2) -> None:
    """Copy `source` to `sink` until end of file, line by line, leaving out the lines `noise` matches.

    A line still without its end is written after `wait_s` of silence (a prompt, a progress bar)."""
    pending = b""
    while True:
        ready, _, _ = select.select([source], [], [], wait_s if pending else None)
        chunk = os.read(source, 65536) if ready else b""
        if ready and not chunk:  # end of file: every writer has closed
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = [line + b"\n" for line in lines
               if not any(p.match(line.decode("utf-8", "replace")) for p in noise)]
        if not ready and pending:
            out.append(pending)
            pending = b""
        if out:
            os.write(sink, b"".join(out))
    if pending:
        os.write(sink, pending)


def relay_native_stderr() -> None:
    """From now on, this process's stderr (fd 2, TensorFlow's C++ logging included) and its children's go
    through a small relay process that leaves out `native_noise`. Call once, early, in the entry only.

    The relay runs in a session of its own and ignores SIGINT/SIGTERM: it ends when every writer has
    closed its end, so what a crashing or killed run writes last still reaches the console."""
    try:
        console = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no stderr to relay (closed), or no descriptors left: the console stays as it is
        return
    code = "from tfodtrain.console import _relay_main; _relay_main()"
    try:
        relay_process = subprocess.Popen([sys.executable, "-c", code], stdin=read_end, stdout=2, stderr=2,
                                         close_fds=True, start_new_session=True)
    except OSError:
        for fd in (console, read_end, write_end):
            os.close(fd)
        return
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    atexit.register(_end_relay, relay_process, console)


def _end_relay(relay_process: subprocess.Popen, console: int) -> None:
    """At exit: close this process's end of the pipe, so the relay writes the last lines before the shell's
    prompt comes back (it waits longer only for a child that still holds the pipe)."""
    sys.stderr.flush()
    os.dup2(console, 2)
    try:
        relay_process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def _relay_main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        relay(0, 1, native_noise(os.path.exists("/proc/driver/nvidia/version")))
    except BrokenPipeError:  # the console went away (`... 2>&1 | head`): as for the run without a relay
        pass


class _OwnLinesOnly(logging.Filter):
    """Console filter: tfodtrain's lines at any level; other loggers' warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == "tfodtrain" or record.name.startswith("tfodtrain.")


def quiet_console() -> None:
    """Filter the root logger's console handlers (call after Hydra configured logging)."""
    if verbose():
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _OwnLinesOnly) for f in handler.filters):
                handler.addFilter(_OwnLinesOnly())
