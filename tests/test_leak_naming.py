"""The abort of a real leaking training run names the leak: `KeepDetections.kept` (leak_demo's callback),
its items and bytes, and the line of tfodtrain/callbacks/leak_demo.py that appends to it.

`+experiment=leak_demo` runs on the product's default guard settings (its leak fills the budget in
minutes); this drives the same callback on `+experiment=smoke` with a faster leak and guard settings
scaled to a run of a minute or two, so that warnings come before the abort: the first starts tracemalloc,
the next reads it (the line's source is `tracemalloc`), the abort's census names the holder again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

FAST_GUARD = ["+guard.settings.startup_s=5", "+guard.settings.warmup_s=5", "+guard.settings.warmup_steps=10",
              "+guard.settings.min_readings=10", "+guard.settings.chunk_seconds=[1,4]",
              "+guard.settings.fast_chunk_seconds=[1,4]", "+guard.settings.window_chunks=8",
              "+guard.settings.horizon_s=30", "+guard.settings.long_horizon_s=30",
              "+guard.settings.warn_horizon_s=60", "+guard.settings.warn_every_s=10"]


def append_line() -> int:
    source = (REPO / "tfodtrain/callbacks/leak_demo.py").read_text().splitlines()
    return next(i for i, text in enumerate(source, 1) if "self.kept.append(" in text)


def test_the_abort_names_keep_detections_kept_its_size_and_the_line(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    args = ["+experiment=smoke", "trainer.steps=2000", "trainer.checkpoint_every=5000", "trainer.log_every=100",
            "memory.interval_steps=2", "memory.budget_mb=1800", "memory.kill_over_budget=true",
            "+callbacks.keep_detections={_target_:tfodtrain.callbacks.leak_demo.KeepDetections,"
            "mib_per_step:2,max_steps_per_s:5,image_size:128}", *FAST_GUARD, f"hydra.run.dir={run_dir}"]
    result = subprocess.run([sys.executable, "-m", "tfodtrain", *args], capture_output=True, text=True, timeout=600,
                            cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 75, result.stderr[-3000:]
    line = f"tfodtrain/callbacks/leak_demo.py:{append_line()} in KeepDetections.on_train_batch_end"
    report = json.loads((run_dir / "abort_report.json").read_text())
    clues = report["leak_clues"]
    holder = clues["holders"][0]
    assert holder["path"] == "KeepDetections.kept" and holder["kind"] == "list" and holder["anchor"] == "attribute"
    assert holder["items"] > 1000 and holder["bytes"] > 200 << 20  # ~2 MiB of detections kept a step
    assert holder["growth_per_100_steps"] > 1000 and holder["bytes_per_100_steps"] > 100 << 20
    assert holder["added_at"] == line and holder["added_at_source"] == "tracemalloc"
    assert line in holder["added_by"]
    assert clues["python_objects"]["growing"]  # kept, as before
    assert clues["tensors"]["devices"]["CPU:0"]["variables"] > 100
    assert clues["retracing"]["functions"] == [] and clues["retracing"]["retraces"] == 0
    assert clues["top_lines"]["lines"][0]["at"] == line  # tracemalloc's largest growth, between two warnings
    assert 0 < clues["census"]["seconds"] < 20 and clues["census"]["census_bytes"] > 0
    console = result.stdout + result.stderr
    assert f"held by KeepDetections.kept (list, " in console and f"added at {line}" in console  # the warning line
    # the report: report.md and the PNG's line
    from tfodtrain.report import make_report

    image, page = make_report(run_dir)
    text = page.read_text()
    assert "## Leak clues" in text and "`KeepDetections.kept`" in text and line in text
    assert image.stat().st_size > 10_000
