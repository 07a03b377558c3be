"""Commands that every pytest process of a session shares: one process, or pytest-xdist's two workers.

The first process to start a run claims it (an atomic mkdir of `ROOT/NAME`) and launches it detached through
`run_to_files.py`, which writes its output and, at its end, `result.json` there; every process reads the
result from those files. A worker that claimed a run may end before the run does (xdist ends a worker when
its own tests are done), so the run is not the worker's child: the session's main process kills what still
runs at its end (`kill_unfinished`).

A run can also start when another ends (`after`): its arguments are then made by `helpers.shared_runs.RESUMES`
from what that run left.

Example:
    runs = SessionRuns(root)
    runs.start("smoke_run", ["+experiment=smoke"], timeout=600)  # a no-op where another process claimed it
    result = runs.result("smoke_run")  # a subprocess.CompletedProcess, as subprocess.run gives
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.repo import REPO

RUNNER = Path(__file__).with_name("run_to_files.py")


class SessionRuns:
    """Runs of `python -m tfodtrain` kept under `root`, one dir each: `run/` (the run dir), `stdout.txt`,
    `stderr.txt`, `pid` and, once it has ended, `result.json`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, name: str) -> Path:
        return self.root / name / "run"

    def start(self, name: str, args: list[str] | None, timeout: float, after: str | None = None) -> bool:
        """Start `name` (`python -m tfodtrain ARGS hydra.run.dir=...`) unless a process of the session already
        has; with `after`, it starts once that run has ended, its arguments made then. True where this call
        started it."""
        home = self.root / name
        try:
            home.mkdir()
        except FileExistsError:
            return False
        spec = {"name": name, "args": args, "timeout": timeout, "run_dir": str(self.run_dir(name)),
                "after": None if after is None else str(self.root / after)}
        (home / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Its own session: a group the main process can kill whole, and no worker's end takes it down.
        proc = subprocess.Popen([sys.executable, str(RUNNER), str(home)], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        (home / "pid").write_text(str(proc.pid))
        return True

    def result(self, name: str, patience: float) -> subprocess.CompletedProcess:
        """Wait for `name` to end (at most `patience` seconds); its CompletedProcess. A run killed past its
        timeout raises subprocess.TimeoutExpired, one that could not start RuntimeError."""
        home = self.root / name
        done_path = home / "result.json"
        deadline = time.monotonic() + patience
        while not done_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no result after {patience:.0f} s in {home}")
            time.sleep(0.5)
        done = json.loads(done_path.read_text())
        out, err = ((home / f).read_text() if (home / f).exists() else "" for f in ("stdout.txt", "stderr.txt"))
        if done.get("error"):
            raise RuntimeError(f"{name} could not start: {done['error']}")
        if done["returncode"] is None:
            raise subprocess.TimeoutExpired(done["args"], done["timeout"], output=out, stderr=err)
        return subprocess.CompletedProcess(done["args"], done["returncode"], out, err)

    def kill_unfinished(self) -> None:
        """Kill every run of the session that has not ended (its runner's whole process group)."""
        for pid_path in self.root.glob("*/pid"):
            if (pid_path.parent / "result.json").exists():
                continue
            try:
                os.killpg(int(pid_path.read_text()), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
