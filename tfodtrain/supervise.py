"""Supervised runs (`trainer.max_restarts>0`): train in a child process, restart it from the checkpoint.

The supervisor never imports TensorFlow: it outlives whatever kills the trainer. It runs
`python -m tfodtrain <the same overrides> hydra.run.dir=<this run dir>` with TFODTRAIN_SUPERVISED=1 and
restarts it, after `trainer.restart_backoff_s` seconds doubling each time, up to `trainer.max_restarts`
times, when it ends with

    75  the leak guard checkpointed and stopped it       76  an out-of-memory error
    SIGKILL  (the kernel's OOM killer)   SIGSEGV / SIGABRT / SIGBUS  (a crash in native code)

and never after 0 (done), 1 (a bug), 2 (bad input), 74 (checkpoint not written), 130 or 143 (stopped
by a signal; the supervisor forwards SIGINT / SIGTERM to the child and stops with it). A restart that
makes no progress (its newest checkpoint's step did not move) stops the loop. The exit code is the last
child's (death by signal N: 128+N). A crash's Python traceback (faulthandler, enabled in the child) goes
to RUN_DIR/faults.log; each child's end is a line of RUN_DIR/restarts.jsonl:

    {"time": "...", "attempt": 1, "exit_code": 137, "signal": "SIGKILL", "cause": "killed by SIGKILL ...",
     "started_step": 300, "step": 400, "restart": true, "delay_s": 5.0, "note": "restarting ..."}

Example:
    python -m tfodtrain +experiment=ssd trainer.max_restarts=5 trainer.restart_backoff_s=30
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tfodtrain import exit_codes
from tfodtrain.checkpoint_files import latest_step

log = logging.getLogger("tfodtrain.supervise")

CHILD_ENV = "TFODTRAIN_SUPERVISED"
FAULT_LOG_ENV = "TFODTRAIN_FAULT_LOG"
RESTARTS_FILE = "restarts.jsonl"
FAULT_LOG = "faults.log"

RESTART_SIGNALS = {signal.SIGKILL: "killed by SIGKILL (the kernel's OOM killer, or kill -9)",
                   signal.SIGSEGV: "segmentation fault (SIGSEGV)",
                   signal.SIGABRT: "aborted (SIGABRT)",
                   signal.SIGBUS: "bus error (SIGBUS)"}
EXIT_CAUSES = {exit_codes.OK: "finished",
               exit_codes.BUG: "an unexpected error (exit 1)",
               exit_codes.BAD_INPUT: "bad configuration or input (exit 2)",
               exit_codes.CHECKPOINT_WRITE_FAILED: "a checkpoint could not be written (exit 74)",
               exit_codes.GUARD_ABORT: "leak guard abort (exit 75)",
               exit_codes.OUT_OF_MEMORY: "out-of-memory error (exit 76)",
               exit_codes.INTERRUPTED: "stopped by SIGINT (exit 130)",
               exit_codes.TERMINATED: "stopped by SIGTERM (exit 143)"}


def exit_code_of(returncode: int) -> int:
    """A shell's exit code: death by signal N (Popen's -N) is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_end(returncode: int) -> tuple[str, str | None, bool]:
    """(cause, signal name or None, restartable) of a child's Popen return code."""
    if returncode < 0:
        signum = signal.Signals(-returncode)
        return RESTART_SIGNALS.get(signum, f"killed by {signum.name}"), signum.name, signum in RESTART_SIGNALS
    cause = EXIT_CAUSES.get(returncode, f"exit {returncode}")
    return cause, None, returncode in exit_codes.RESTARTABLE


class Supervisor:
    """Runs `command` until it succeeds, fails for good, or the restart budget is spent.

    Example:
        >>> Supervisor([sys.executable, "-m", "tfodtrain", "+experiment=smoke", "hydra.run.dir=/tmp/r"],
        ...            run_dir=Path("/tmp/r"), max_restarts=3, backoff_s=5).run()
        0
    """

    def __init__(self, command: list[str], run_dir: Path, max_restarts: int, backoff_s: float = 5.0,
                 env: dict | None = None, checkpoint_dir: Path | None = None, progress=None):
        self.command = list(command)
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = Path(checkpoint_dir or self.run_dir / "checkpoints")
        # progress(checkpoint_dir): the newest checkpoint's step, or any value that changes with each new
        # save (tfodtrain.watch follows other trainers' save files); a restart that leaves it unchanged stops
        self.progress = progress or latest_step
        self.max_restarts = int(max_restarts)
        self.backoff_s = float(backoff_s)
        self.env = dict(os.environ if env is None else env)
        self.child: subprocess.Popen | None = None
        self.stop_signal: int | None = None

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _forward(self, signum, frame) -> None:
        self.stop_signal = signum
        if self.child is not None and self.child.poll() is None:
            log.warning("Supervisor: %s received; forwarding it to the trainer (pid %d), no restart",
                        signal.Signals(signum).name, self.child.pid)
            self.child.send_signal(signum)

    def _loop(self) -> int:
        restarts = 0
        while True:
            if self.stop_signal is not None:  # came between two attempts
                return 128 + self.stop_signal
            attempt = restarts + 1
            started_step = self.progress(self.checkpoint_dir)
            returncode = self._run_child(attempt, started_step)
            code = exit_code_of(returncode)
            step = self.progress(self.checkpoint_dir)
            cause, signame, restartable = describe_end(returncode)
            record = {"time": _now(), "attempt": attempt, "exit_code": code, "signal": signame, "cause": cause,
                      "started_step": started_step, "step": step, "restart": False, "delay_s": None}
            if signame and signame != "SIGKILL":
                record["fault_log"] = str(self.run_dir / FAULT_LOG)
                self._show_fault_log(attempt)
            if self.stop_signal is not None:
                note = f"stopped by {signal.Signals(self.stop_signal).name}; not restarting"
            elif not restartable:
                note = "done" if code == exit_codes.OK else "not a restartable failure; not restarting"
            elif attempt > 1 and step == started_step:
                note = (f"no progress: the restart ended at checkpoint step {step}, where it started; not "
                        "restarting again (look at the cause above and RUN_DIR/faults.log)")
            elif restarts >= self.max_restarts:
                note = f"restart limit reached (trainer.max_restarts={self.max_restarts}); not restarting"
            else:
                delay = self.backoff_s * 2 ** restarts
                note = f"restarting from checkpoint step {step} in {delay:g} s (restart {restarts + 1} of {self.max_restarts})"
                record.update(restart=True, delay_s=delay)
            record["note"] = note
            self._record(record)
            level = logging.INFO if code == exit_codes.OK else logging.WARNING
            log.log(level, "Supervisor: trainer attempt %d ended: %s; checkpoint step %s; %s",
                    attempt, cause, step, note)
            if not record["restart"]:
                return code
            if not self._sleep(record["delay_s"]):
                return 128 + self.stop_signal
            restarts += 1

    def _run_child(self, attempt: int, started_step: int | None) -> int:
        fault_log = self.run_dir / FAULT_LOG
        with fault_log.open("a") as out:
            out.write(f"=== attempt {attempt}, started {_now()} from checkpoint step {started_step}\n")
        env = dict(self.env, **{CHILD_ENV: "1", FAULT_LOG_ENV: str(fault_log)})
        log.info("Supervisor: starting trainer attempt %d (checkpoint step %s): %s", attempt, started_step,
                 " ".join(self.command))
        self.child = subprocess.Popen(self.command, env=env, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        try:
            return self.child.wait()
        finally:
            self.child = None

    def _sleep(self, seconds: float) -> bool:
        """Back off; False if SIGTERM / SIGINT came meanwhile."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return self.stop_signal is None

    def _show_fault_log(self, attempt: int) -> None:
        try:
            text = (self.run_dir / FAULT_LOG).read_text(errors="replace")
        except OSError:
            return
        section = text.rsplit(f"=== attempt {attempt},", 1)[-1].split("\n", 1)[-1].strip()
        if section:
            log.warning("Supervisor: the crashed trainer's traceback (%s):\n%s", self.run_dir / FAULT_LOG,
                        "\n".join(section.splitlines()[-40:]))

    def _record(self, record: dict) -> None:
        with (self.run_dir / RESTARTS_FILE).open("a") as out:
            out.write(json.dumps(record) + "\n")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM (checkpoint, exit 143) if the supervisor dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_command(cfg) -> list[str]:
    """`python -m tfodtrain` with this job's overrides, pinned to its run dir (works under -m sweeps too)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", "tfodtrain"]
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line":
            command += ["--config-dir", source.path.removeprefix("file://")]
    if hydra_cfg.job.config_name not in (None, "config"):
        command += ["--config-name", hydra_cfg.job.config_name]
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(_NOT_FOR_THE_CHILD)]
    return command + list(hydra_cfg.overrides.task) + hydra_overrides + [f"hydra.run.dir={Path(cfg.run_dir).resolve()}"]


# Hydra settings of the supervisor's own launch (run dir, sweep, launcher): the child is a single run.
_NOT_FOR_THE_CHILD = ("hydra.run.", "hydra.sweep.", "hydra.mode", "hydra.launcher", "hydra/launcher",
                      "hydra.sweeper", "hydra/sweeper", "hydra.job.num", "hydra.job.id")


def supervise(cfg) -> int:
    """Entry point of `python -m tfodtrain ... trainer.max_restarts=N` (N>0): returns the exit code."""
    run_dir = Path(cfg.run_dir).resolve()
    supervisor = Supervisor(child_command(cfg), run_dir, max_restarts=int(cfg.trainer.max_restarts),
                            backoff_s=float(cfg.trainer.get("restart_backoff_s", 5)))
    return supervisor.run()


def enable_fault_log() -> None:
    """In a supervised child: write a crash's Python traceback (SIGSEGV, SIGABRT, ...) to the fault log."""
    path = os.environ.get(FAULT_LOG_ENV)
    if os.environ.get(CHILD_ENV) == "1" and path:
        faulthandler.enable(open(path, "a"), all_threads=True)  # kept open for the process's life
