"""The suite's own machinery: a training run shared by the session's processes (xdist's two workers) is started
once, read by each, and killed at the session's end when nobody waited for it (helpers/session_runs.py)."""

from __future__ import annotations

import os
import threading
import time

import psutil

from helpers.session_runs import SessionRuns


def test_a_run_asked_for_by_two_workers_at_once_starts_once_and_both_read_it(tmp_path):
    # Two SessionRuns on one dir stand for the two workers; a bad experiment is a real run that ends in a second.
    workers = [SessionRuns(tmp_path), SessionRuns(tmp_path)]
    started, barrier = [], threading.Barrier(2)

    def ask(runs):
        barrier.wait()
        started.append(runs.start("bad", ["+experiment=no_such_experiment"], timeout=120))

    threads = [threading.Thread(target=ask, args=(runs,)) for runs in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(started) == [False, True]
    results = [runs.result("bad", patience=120) for runs in workers]
    assert [r.returncode for r in results] == [2, 2]
    assert results[0].stderr == results[1].stderr and "no_such_experiment" in results[0].stderr
    assert "Traceback" not in results[0].stderr
    assert workers[0].run_dir("bad") == tmp_path / "bad" / "run"


def test_a_run_nobody_waited_for_is_killed_with_its_children(tmp_path):
    runs = SessionRuns(tmp_path)
    assert runs.start("smoke", ["+experiment=smoke"], timeout=600)
    pid = int((tmp_path / "smoke" / "pid").read_text())
    deadline = time.monotonic() + 30
    while not (tmp_path / "smoke" / "stderr.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the runner has started its trainer
    assert _alive_in_group(pid)  # the runner and its trainer
    runs.kill_unfinished()
    deadline = time.monotonic() + 10
    while _alive_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive_in_group(pid)
    assert not (tmp_path / "smoke" / "result.json").exists()


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run (the runner stays a zombie of this process until it exits)."""
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive
