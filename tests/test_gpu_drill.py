"""scripts/gpu_leak_drill.py in --dry-run: a fake card and a fake clock stand in for the GPU.

This machine has no GPU; the real drill runs on a GPU machine. The guard is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DRILL = REPO / "scripts" / "gpu_leak_drill.py"

pytest.importorskip("tfodtrain.memory.guard")


def run_drill(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(DRILL), "--dry-run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_guard_names_the_leaking_gpu_before_oom(tmp_path):
    done = run_drill("--runs", "2", "--dry-run-gpus", "2", "--device", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("drill: 2/2 runs aborted before OOM; median lead ")
    assert "NOT the product defaults" in done.stdout  # the scaled settings are said out loud

    summary = json.loads((tmp_path / "drill_summary.json").read_text())
    for run in summary["runs"]:
        assert run["caught"] and run["abort_pool"] == "gpu1"
        assert run["abort_step"] < run["oom_step"]
        assert run["lead_s"] > 0 and run["bytes_left_at_abort"] > 0
    for pool in ("gpu0", "gpu1"):
        header = (tmp_path / "run1" / f"memory_trace_{pool}.csv").read_text().splitlines()[0]
        assert header == "step,time_s,used_bytes,limit_bytes"


def test_dry_run_records_the_oom_when_the_guard_never_fires():
    # A leak that fills the card within 2 minutes of the start falls in the product's start-up discount.
    done = run_drill("--runs", "1", "--product-settings")
    assert done.returncode == 1
    assert "MISS: CUDA OOM at step" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "drill: 0/1 runs aborted before OOM"
