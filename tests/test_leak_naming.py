"""The abort of a real leaking training run names the leak: `KeepDetections.kept` (leak_demo's callback),
its items and bytes, and the line of tfodtrain/callbacks/leak_demo.py that appends to it.

It reads conftest's shared `leak_demo_aborted`: `+experiment=leak_demo` as the product runs it, on the default
guard settings. Its leak (leak_demo.yaml: it starts after a settled start and fills the budget in about 4.5
minutes) is first seen about 3.5-4.5 minutes before the budget would run out: a warning (its census starts
tracemalloc), then the abort within the 3-minute horizon, whose census reads tracemalloc (the line's source)
and names the holder again. That order depends on the guard's timing; the first assertion says when it changed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def append_line() -> int:
    source = (REPO / "tfodtrain/callbacks/leak_demo.py").read_text().splitlines()
    return next(i for i, text in enumerate(source, 1) if "self.kept.append(" in text)


def test_the_abort_names_keep_detections_kept_its_size_and_the_line(leak_demo_aborted, tmp_path):
    run_dir, result = leak_demo_aborted
    assert result.returncode == 75, result.stderr[-3000:]
    console = result.stdout + result.stderr
    warned = [int(step) for step in re.findall(r"Leak guard at step (\d+): host", console)]
    report = json.loads((run_dir / "abort_report.json").read_text())
    assert warned and warned[0] < report["step"], ("no warning before the abort: the guard's timing changed; "
                                                  "leak_demo's leak must be slower for tracemalloc", console[-3000:])
    line = f"tfodtrain/callbacks/leak_demo.py:{append_line()} in KeepDetections.on_train_batch_end"
    clues = report["leak_clues"]
    holder = clues["holders"][0]
    assert holder["path"] == "KeepDetections.kept" and holder["kind"] == "list" and holder["anchor"] == "attribute"
    assert holder["items"] > 1000 and holder["bytes"] > 200 << 20  # ~2.5 MiB of detections kept a step
    assert holder["growth_per_100_steps"] > 1000 and holder["bytes_per_100_steps"] > 100 << 20
    assert holder["added_at"] == line and holder["added_at_source"] == "tracemalloc"
    assert line in holder["added_by"]
    assert clues["python_objects"]["growing"]  # kept, as before
    assert clues["tensors"]["devices"]["CPU:0"]["variables"] > 100
    assert clues["retracing"]["functions"] == [] and clues["retracing"]["retraces"] == 0
    assert clues["top_lines"]["lines"][0]["at"] == line  # tracemalloc's largest growth, from the warning to the abort
    assert 0 < clues["census"]["seconds"] < 20 and clues["census"]["census_bytes"] > 0
    assert f"held by KeepDetections.kept (list, " in console and f"added at {line}" in console  # the warning line
    # the report: report.md and the PNG's line (written to tmp_path: the shared run dir stays as the run left it)
    from tfodtrain.report import make_report

    image, page = make_report(run_dir, tmp_path)
    text = page.read_text()
    assert "## Leak clues" in text and "`KeepDetections.kept`" in text and line in text
    assert image.stat().st_size > 10_000
