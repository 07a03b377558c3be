"""Commands that run side by side: started together, waited for one by one.

The long tests here mostly wait: a leak paced to a few steps a second, a watch that sleeps between readings.
Started at once, they share those waits (each keeps its own process, run dir and output); each test then
waits for its own command and checks what it checks.

Example:
    runs = Background()
    runs.start("a", [sys.executable, "-m", "tfodtrain", "+experiment=smoke"], timeout=600)
    result = runs.result("a")  # a subprocess.CompletedProcess, as subprocess.run gives
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from helpers.repo import REPO


class Background:
    """Named subprocesses; `result(name)` waits for one (killing it past its timeout) and returns its
    CompletedProcess (stdout and stderr as text); `stop()` kills what still runs."""

    def __init__(self):
        self._runs: dict[str, tuple] = {}
        self._results: dict[str, subprocess.CompletedProcess] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._runs

    def start(self, name: str, args: list[str], timeout: float, env: dict | None = None) -> None:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe to fill up meanwhile
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=REPO, env=full_env)
        self._runs[name] = (proc, out, err, time.monotonic() + timeout, args)

    def start_cli(self, name: str, args: list[str], run_dir, timeout: float = 900, env: dict | None = None) -> None:
        """`python -m tfodtrain ARGS hydra.run.dir=RUN_DIR`, as helpers.cli.run_cli runs it."""
        self.start(name, [sys.executable, "-m", "tfodtrain", *args, f"hydra.run.dir={run_dir}"], timeout, env)

    def result(self, name: str) -> subprocess.CompletedProcess:
        """Wait for `name`; past its timeout it is killed and subprocess.TimeoutExpired raised (then and later)."""
        if name not in self._results:
            proc, out, err, deadline, args = self._runs[name]
            timed_out = False
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                proc.wait()
            texts = []
            for stream in (out, err):
                stream.seek(0)
                texts.append(stream.read())
                stream.close()
            self._results[name] = subprocess.CompletedProcess(args, None if timed_out else proc.returncode, *texts)
        done = self._results[name]
        if done.returncode is None:
            raise subprocess.TimeoutExpired(done.args, 0, output=done.stdout, stderr=done.stderr)
        return done

    def stop(self) -> None:
        for name, (proc, out, err, *_) in self._runs.items():
            if name not in self._results and proc.poll() is None:
                proc.kill()
                proc.wait()
