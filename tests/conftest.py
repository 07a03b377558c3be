"""Fixtures: the shapes-data cache, one trained smoke run per session, a TensorBoard server over it, and the
leaking leak_demo runs (helpers/leak_runs.py), started side by side and shared.

Helpers the tests import live in tests/helpers/ (`from helpers.cli import run_cli`). Every test that
trains is marked `slow`; a test that asks for a training fixture without the mark stops collection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.background import Background
from helpers.cli import run_cli
from helpers.leak_runs import LEAK_RUNS

TRAINING_FIXTURES = ("smoke_run", "tensorboard_url", "leak_runs", *LEAK_RUNS)


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if set(TRAINING_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests train (through a training fixture) and are not marked slow: " + ", ".join(unmarked))


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


@pytest.fixture(scope="session")
def leak_runs(request, tmp_path_factory, data_cache):
    """Starts at once every leak_demo run of LEAK_RUNS that the selected tests ask for; they run side by side
    (mostly waiting on their leak's pace) while the first test waits for its own. (run dirs, Background)."""
    wanted = sorted({name for item in request.session.items for name in getattr(item, "fixturenames", ())
                     if name in LEAK_RUNS})
    runs, run_dirs = Background(), {}
    for name in wanted:
        run_dirs[name] = tmp_path_factory.mktemp(name) / "run"
        runs.start_cli(name, LEAK_RUNS[name](), run_dirs[name], timeout=900)
    yield run_dirs, runs
    runs.stop()


def _leak_run(leak_runs, name: str):
    run_dirs, runs = leak_runs
    result = runs.result(name)
    (run_dirs[name].parent / "console.txt").write_text(result.stdout + result.stderr)
    return run_dirs[name], result


@pytest.fixture(scope="session")
def leak_demo_aborted(leak_runs):
    """(run dir, CompletedProcess) of `+experiment=leak_demo` as the product runs it (shared: read-only!)."""
    return _leak_run(leak_runs, "leak_demo_aborted")


@pytest.fixture(scope="session")
def leak_demo_unguarded(leak_runs):
    """(run dir, CompletedProcess) of leak_demo with guard=off: the OOM-killer stand-in's kill."""
    return _leak_run(leak_runs, "leak_demo_unguarded")


@pytest.fixture(scope="session")
def leak_demo_warned(leak_runs):
    """(run dir, CompletedProcess) of leak_demo with guard=warn, killed after its warning (one test resumes it)."""
    return _leak_run(leak_runs, "leak_demo_warned")
