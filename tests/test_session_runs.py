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


def test_the_tests_of_a_file_with_a_module_fixture_share_a_worker(tmp_path):
    """Two workers, a file whose module fixture four tests use and a file of independent tests: the four run on
    one worker, which builds the fixture once (xdist's own loadgroup split them under pytest 9)."""
    import re
    import subprocess
    import sys

    from helpers.repo import REPO

    (tmp_path / "conftest.py").write_text(
        f"import os, sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from helpers.xdist_groups import GroupScheduling, write_groups\n"
        "from pathlib import Path\n"
        "GROUPS = Path(os.environ['GROUPS_FILE'])\n"
        "def pytest_xdist_make_scheduler(config, log):\n    return GroupScheduling(config, log, GROUPS)\n"
        "def pytest_collection_modifyitems(config, items):\n"
        "    if hasattr(config, 'workerinput'):\n        write_groups(items, GROUPS)\n")
    (tmp_path / "test_shared.py").write_text(
        "import os, time, pytest\n"
        "@pytest.fixture(scope='module')\ndef built():\n"
        "    with open(os.environ['BUILT_FILE'], 'a') as out:\n        out.write(f'{os.getpid()}\\n')\n"
        + "".join(f"def test_uses_{i}(built):\n    time.sleep(0.2)\n" for i in range(4))
        + "def test_alone():\n    time.sleep(0.2)\n")
    (tmp_path / "test_other.py").write_text(
        "import time\n" + "".join(f"def test_other_{i}():\n    time.sleep(0.2)\n" for i in range(6)))
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider",
                           "-o", "addopts=", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GROUPS_FILE": str(tmp_path / "groups.json"),
                                                    "BUILT_FILE": str(tmp_path / "built.txt")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    workers = {name: worker for worker, name in re.findall(r"\[(gw\d)\].*PASSED \S*::(test_\w+)", done.stdout)}
    assert len(workers) == 11, done.stdout[-3000:]
    assert len({workers[f"test_uses_{i}"] for i in range(4)}) == 1, workers
    assert len(set(workers.values())) == 2, workers  # the other tests still spread over both
    assert len((tmp_path / "built.txt").read_text().split()) == 1  # built once
