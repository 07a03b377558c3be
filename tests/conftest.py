"""Fixtures: the shapes-data cache, one trained smoke run per session, a TensorBoard server over it.

Helpers the tests import live in tests/helpers/ (`from helpers.cli import run_cli`). Every test that
trains is marked `slow`; a test that asks for `smoke_run` (it trains) without the mark stops collection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.cli import run_cli

TRAINING_FIXTURES = ("smoke_run", "tensorboard_url")


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if set(TRAINING_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests train (through smoke_run) and are not marked slow: " + ", ".join(unmarked))


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
