"""Commands that run side by side: started together, waited for one by one.

The long tests here mostly wait: a leak paced to a few steps a second, a watch that sleeps between readings.
Started at once, they share those waits (each keeps its own process, run dir and output); each test then
waits for its own command and checks what it checks.

A command can also start when another ends (`then`), with arguments made from what that one left.

Example:
    runs = Background()
    runs.start("a", [sys.executable, "-m", "tfodtrain", "+experiment=smoke"], timeout=600)
    runs.then("b", after="a", make_args=lambda: [...], timeout=600)  # starts when "a" has ended
    result = runs.result("a")  # a subprocess.CompletedProcess, as subprocess.run gives
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from helpers.repo import REPO


class Background:
    """Named subprocesses; `result(name)` waits for one (killing it past its timeout) and returns its
    CompletedProcess (stdout and stderr as text); `stop()` kills what still runs."""

    def __init__(self):
        self._runs: dict[str, tuple] = {}
        self._results: dict[str, subprocess.CompletedProcess] = {}
        self._chained: dict[str, threading.Thread] = {}  # commands started by `then`, once their first has ended
        self._errors: dict[str, BaseException] = {}  # a `then` whose arguments could not be made
        self._stopping = False

    def start(self, name: str, args: list[str], timeout: float, env: dict | None = None) -> None:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe to fill up meanwhile
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=REPO, env=full_env)
        self._runs[name] = (proc, out, err, time.monotonic() + timeout, args)

    def start_cli(self, name: str, args: list[str], run_dir, timeout: float = 900, env: dict | None = None) -> None:
        """`python -m tfodtrain ARGS hydra.run.dir=RUN_DIR`, as helpers.cli.run_cli runs it."""
        self.start(name, [sys.executable, "-m", "tfodtrain", *args, f"hydra.run.dir={run_dir}"], timeout, env)

    def then(self, name: str, after: str, make_args, timeout: float, env: dict | None = None) -> None:
        """Start `name` when `after` has ended, with the arguments `make_args()` gives then (it may read and copy
        what `after` left); its timeout counts from its own start."""
        first = self._runs[after][0]

        def start_when_done():
            first.wait()
            if self._stopping:
                return
            try:
                args = make_args()
            except Exception as error:  # noqa: BLE001 - re-raised by result(name), in the test that asks
                self._errors[name] = error
                return
            self.start(name, args, timeout, env)

        self._chained[name] = threading.Thread(target=start_when_done, name=f"then {name}", daemon=True)
        self._chained[name].start()

    def result(self, name: str) -> subprocess.CompletedProcess:
        """Wait for `name`; past its timeout it is killed and subprocess.TimeoutExpired raised (then and later)."""
        if name in self._chained:
            self._chained[name].join()
            if name in self._errors:
                raise RuntimeError(f"{name} could not start: {self._errors[name]!r}") from self._errors[name]
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
        self._stopping = True
        self._kill_unfinished()  # a `then` waits for its first run: ending those lets its thread end
        for thread in self._chained.values():
            thread.join()
        self._kill_unfinished()  # a `then` that started just before `_stopping` was set

    def _kill_unfinished(self) -> None:
        for name, (proc, *_) in list(self._runs.items()):
            if name not in self._results and proc.poll() is None:
                proc.kill()
                proc.wait()
