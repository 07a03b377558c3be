"""Shared fixtures: compose configs like the CLI does, run the CLI, and one trained smoke run per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_TRACES = REPO.parent / "shared" / "leak_traces"


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One shapes-dataset cache for the whole session (generated on first use)."""
    path = Path(os.environ.get("TFODTRAIN_TEST_CACHE") or tmp_path_factory.mktemp("tfodtrain-cache"))
    os.environ["TFODTRAIN_CACHE"] = str(path)
    return path


def compose_config(overrides: list[str], run_dir: Path | None = None):
    """The config `python -m tfodtrain OVERRIDES` would run, with run_dir set (no Hydra runtime here)."""
    from hydra import compose, initialize_config_dir

    from tfodtrain.paths import config_dir

    extra = [f"run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="test"):
        return compose(config_name="config", overrides=list(overrides) + extra)


def run_cli(args: list[str], run_dir: Path | None = None, timeout: float = 600, env: dict | None = None,
            module: str = "tfodtrain") -> subprocess.CompletedProcess:
    """`python -m tfodtrain ARGS [hydra.run.dir=RUN_DIR]` in a subprocess; output captured as text."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    full_env.update(env or {})
    extra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run([sys.executable, "-m", module, *args, *extra], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_cache) -> Path:
    """A finished `+experiment=smoke` run dir, trained once per session and shared (read-only!).

    TFODTRAIN_TEST_SMOKE_RUN=DIR reuses a finished smoke run dir instead (for quick local iterations).
    """
    reuse = os.environ.get("TFODTRAIN_TEST_SMOKE_RUN")
    if reuse:
        return Path(reuse)
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli(["+experiment=smoke"], run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tensorboard_url(smoke_run) -> str:
    """A real `tensorboard --logdir SMOKE_RUN` on a free localhost port, shared by the HTTP and browser tests."""
    from tensorboard_server import serve  # tests/tensorboard_server.py

    with serve(smoke_run) as url:
        yield url
