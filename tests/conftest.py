"""Fixtures: the shapes-data cache, one trained smoke run per session, a TensorBoard server over it, and the
long runs of helpers/shared_runs.py (leak_demo's leaks, the supervised smoke run), started side by side when
the session starts and shared; the tests that read them run after all the others.

Helpers the tests import live in tests/helpers/ (`from helpers.cli import run_cli`). Every test that
trains is marked `slow`; a test that asks for a training fixture without the mark stops collection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers.background import Background
from helpers.cli import run_cli
from helpers.shared_runs import RESUMES, RUNS

TRAINING_FIXTURES = ("smoke_run", "tensorboard_url", *RUNS, *RESUMES)


def pytest_configure(config):
    # Each xdist worker would train its own copy of every session run (the smoke run, the shared runs)
    # on the same cores: -n is for the quick loop, whose tests train nothing.
    if getattr(config.option, "numprocesses", None) and "not slow" not in (config.option.markexpr or ""):
        raise pytest.UsageError("-n (parallel workers) is for the quick loop: python -m pytest -m 'not slow' -n 2; "
                                "the tests that train share runs one process starts: python -m pytest, without -n")


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if set(TRAINING_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests train (through a training fixture) and are not marked slow: " + ", ".join(unmarked))
    # The tests that read a shared run come last: the runs start with the session and mostly wait on a
    # leak's pace, so the other tests use that time instead of waiting for them (stable: file order kept).
    shared = set(RUNS) | set(RESUMES)
    items.sort(key=lambda item: bool(shared & set(getattr(item, "fixturenames", ()))))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One shapes-dataset cache for the whole session (generated on first use)."""
    path = Path(os.environ.get("TFODTRAIN_TEST_CACHE") or tmp_path_factory.mktemp("tfodtrain-cache"))
    os.environ["TFODTRAIN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_cache) -> Path:
    """A finished `+experiment=smoke` run dir, trained once per session and shared (read-only!).

    Its console output is kept beside it, in ../console.txt. TFODTRAIN_TEST_SMOKE_RUN=DIR reuses a
    finished smoke run dir instead (for quick local iterations).
    """
    reuse = os.environ.get("TFODTRAIN_TEST_SMOKE_RUN")
    if reuse:
        return Path(reuse)
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli(["+experiment=smoke"], run_dir=run_dir)
    (run_dir.parent / "console.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tensorboard_url(smoke_run) -> str:
    """A real `tensorboard --logdir SMOKE_RUN` on a free localhost port, shared by the HTTP and browser tests."""
    from tensorboard_server import serve  # tests/tensorboard_server.py

    with serve(smoke_run) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def shared_runs(request, tmp_path_factory):
    """Starts, when the session starts, every run of helpers/shared_runs.py that a selected test asks for (none
    under -m "not slow"); they run side by side, mostly waiting on a leak's pace, while the session goes on.
    Yields (run dirs, Background)."""
    asked = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    resumes = sorted(asked & set(RESUMES))
    wanted = sorted((asked & set(RUNS)) | {RESUMES[name][0] for name in resumes})
    runs, run_dirs = Background(), {}
    if wanted:
        request.getfixturevalue("data_cache")  # the runs' shapes data cache (TFODTRAIN_CACHE)
    for name in wanted:
        run_dirs[name] = tmp_path_factory.mktemp(name) / "run"
        runs.start_cli(name, RUNS[name](), run_dirs[name], timeout=1200)
    for name in resumes:
        first, make_args = RESUMES[name]
        run_dirs[name] = tmp_path_factory.mktemp(name) / "run"
        runs.then(name, after=first, timeout=600, make_args=lambda first=first, name=name, make_args=make_args: [
            sys.executable, "-m", "tfodtrain", *make_args(run_dirs[first], run_dirs[name]),
            f"hydra.run.dir={run_dirs[name]}"])
    yield run_dirs, runs
    runs.stop()


def _shared_run(shared_runs, name: str):
    run_dirs, runs = shared_runs
    result = runs.result(name)
    (run_dirs[name].parent / "console.txt").write_text(result.stdout + result.stderr)
    return run_dirs[name], result


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
