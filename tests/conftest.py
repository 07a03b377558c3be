"""Fixtures: the shapes-data cache, one trained smoke run per session, a TensorBoard server over it, and the
long runs of helpers/shared_runs.py (leak_demo's leaks, the supervised smoke run), started side by side when
the session starts and shared; the tests that read them run after the others of their file.

The suite runs on two pytest-xdist workers (`-n 2` in pyproject's addopts; `-n 0`: one process). The training
runs that tests share are started once for the whole session, whichever process asks first
(helpers/session_runs.py), and read by both workers; the tests of a file with module fixtures stay on one worker
(helpers/xdist_groups.py), so those are built once.

Helpers the tests import live in tests/helpers/ (`from helpers.cli import run_cli`). Every test that
trains is marked `slow`; a test that asks for a training fixture without the mark stops collection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.resident_pages import NAME as RESIDENT_PAGES, keep_resident
from helpers.session_runs import SessionRuns
from helpers.shared_runs import RESUMES, RUNS
from helpers.xdist_groups import GroupScheduling, write_groups

SMOKE = "smoke_run"
TRAINING_FIXTURES = (SMOKE, "tensorboard_url", *RUNS, *RESUMES)
SHARED_DIR_VARIABLE = "TFODTRAIN_TEST_SESSION_DIR"  # set by the main process; xdist's workers inherit it
MAIN_PID_VARIABLE = "TFODTRAIN_TEST_MAIN_PID"  # likewise: the session's main process
GROUPS_FILE = "xdist-groups.json"


@pytest.hookimpl(trylast=True)  # after pytest's own tmp_path plugin has set up the base temp dir
def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the main process (xdist's controller, or the only one)
        os.environ[SHARED_DIR_VARIABLE] = str(config._tmp_path_factory.getbasetemp() / "session-runs")
        os.environ[MAIN_PID_VARIABLE] = str(os.getpid())


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # after every worker: a run nobody waited for is not left behind
        SessionRuns(Path(os.environ[SHARED_DIR_VARIABLE])).kill_unfinished()


def pytest_xdist_make_scheduler(config, log):
    return GroupScheduling(config, log, _session_dir() / GROUPS_FILE)


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if set(TRAINING_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests train (through a training fixture) and are not marked slow: " + ", ".join(unmarked))
    # The tests that read a shared run come last in their file: the runs start with the session and mostly wait
    # on a leak's pace, so the other tests use that time instead of waiting for them (stable: file order kept).
    shared = set(RUNS) | set(RESUMES)
    items.sort(key=lambda item: bool(shared & set(getattr(item, "fixturenames", ()))))
    if hasattr(config, "workerinput"):  # for the scheduler: a file with module fixtures stays on one worker
        write_groups(items, _session_dir() / GROUPS_FILE)


def _session_dir() -> Path:
    return Path(os.environ[SHARED_DIR_VARIABLE])


@pytest.fixture(scope="session")
def data_cache() -> Path:
    """One shapes-dataset cache for the whole session, both workers (generated on first use; its writers stage
    and rename, so two at once do no harm)."""
    path = Path(os.environ.get("TFODTRAIN_TEST_CACHE") or _session_dir() / "tfodtrain-cache")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TFODTRAIN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_runs(request):
    """Starts, when the session starts, every session run that a selected test asks for (none under -m "not
    slow"): the smoke run and those of helpers/shared_runs.py, and with slow tests helpers/resident_pages.py.
    They run side by side, mostly waiting on a leak's pace, while the session goes on; whichever process asks
    first starts each, once. Yields SessionRuns."""
    asked = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    runs = SessionRuns(_session_dir())
    if any(item.get_closest_marker("slow") for item in request.session.items):
        # the slow tests start dozens of processes that import TensorFlow: its files stay in memory for them
        keep_resident(runs.root / RESIDENT_PAGES, int(os.environ[MAIN_PID_VARIABLE]))
    resumes = sorted(asked & set(RESUMES))
    wanted = sorted((asked & set(RUNS)) | {RESUMES[name][0] for name in resumes})
    smoke = bool(asked & {SMOKE, "tensorboard_url"}) and not os.environ.get("TFODTRAIN_TEST_SMOKE_RUN")
    if wanted or smoke:
        request.getfixturevalue("data_cache")  # the runs' shapes data cache (TFODTRAIN_CACHE)
    if smoke:
        runs.start(SMOKE, ["+experiment=smoke"], timeout=900)
    for name in wanted:
        runs.start(name, RUNS[name](), timeout=1200)
    for name in resumes:
        runs.start(name, None, timeout=600, after=RESUMES[name][0])
    yield runs


def _shared_run(shared_runs, name: str, patience: float = 2400):
    """(run dir, CompletedProcess) of a session run; its console beside the run dir, in ../console.txt."""
    result = shared_runs.result(name, patience)
    console = shared_runs.run_dir(name).parent / "console.txt"
    if not console.exists():
        console.write_text(result.stdout + result.stderr)
    return shared_runs.run_dir(name), result


@pytest.fixture(scope="session")
def smoke_run(shared_runs) -> Path:
    """A finished `+experiment=smoke` run dir, trained once per session and shared (read-only!).

    Its console output is kept beside it, in ../console.txt. TFODTRAIN_TEST_SMOKE_RUN=DIR reuses a
    finished smoke run dir instead (for quick local iterations).
    """
    reuse = os.environ.get("TFODTRAIN_TEST_SMOKE_RUN")
    if reuse:
        return Path(reuse)
    run_dir, result = _shared_run(shared_runs, SMOKE)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tensorboard_url(smoke_run) -> str:
    """A real `tensorboard --logdir SMOKE_RUN` on a free localhost port, shared by the HTTP and browser tests."""
    from tensorboard_server import serve  # tests/tensorboard_server.py

    with serve(smoke_run) as url:
        yield url


@pytest.fixture(scope="session")
def leak_demo_aborted(shared_runs):
    """(run dir, CompletedProcess) of `+experiment=leak_demo` as the product runs it (shared: read-only!)."""
    return _shared_run(shared_runs, "leak_demo_aborted")


@pytest.fixture(scope="session")
def leak_demo_unguarded(shared_runs):
    """(run dir, CompletedProcess) of leak_demo with guard=off: the OOM-killer stand-in's kill."""
    return _shared_run(shared_runs, "leak_demo_unguarded")


@pytest.fixture(scope="session")
def leak_demo_warned(shared_runs):
    """(run dir, CompletedProcess) of leak_demo with guard=warn, killed after its warning."""
    return _shared_run(shared_runs, "leak_demo_warned")


@pytest.fixture(scope="session")
def leak_demo_aborted_resumed(shared_runs):
    """(run dir, CompletedProcess) of a copy of leak_demo_aborted resumed with the leak off, 6 steps past the abort."""
    return _shared_run(shared_runs, "leak_demo_aborted_resumed")


@pytest.fixture(scope="session")
def leak_demo_warned_resumed(shared_runs):
    """(run dir, CompletedProcess) of a copy of leak_demo_warned resumed with the leak off, 6 steps past its
    latest checkpoint."""
    return _shared_run(shared_runs, "leak_demo_warned_resumed")


@pytest.fixture(scope="session")
def leak_named(shared_runs):
    """(run dir, CompletedProcess) of smoke with leak_demo's leak and FAST_GUARD: warnings, then exit 75."""
    return _shared_run(shared_runs, "leak_named")


@pytest.fixture(scope="session")
def supervised_smoke(shared_runs):
    """(run dir, CompletedProcess) of the smoke run under the supervisor, crashing as SUPERVISED_PLAN says."""
    return _shared_run(shared_runs, "supervised_smoke")
