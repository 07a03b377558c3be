"""Compose configs like the CLI does, and run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.repo import REPO


def compose_config(overrides: list[str], run_dir: Path | None = None):
    """The config `python -m tfodtrain OVERRIDES` would run, with run_dir set (no Hydra runtime here)."""
    from hydra import compose, initialize_config_dir

    from tfodtrain.paths import config_dir

    extra = [f"run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="test"):
        return compose(config_name="config", overrides=list(overrides) + extra)


def run_cli(args: list[str], run_dir: Path | None = None, timeout: float = 600, env: dict | None = None,
            module: str = "tfodtrain") -> subprocess.CompletedProcess:
    """`python -m tfodtrain ARGS [hydra.run.dir=RUN_DIR]` in a subprocess; output captured as text.

    The console is as a user sees it (tfodtrain.console); `env` adds or overrides variables."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    extra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run([sys.executable, "-m", module, *args, *extra], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
