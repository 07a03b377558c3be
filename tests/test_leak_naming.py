"""The abort of a real leaking training run names the leak: `KeepDetections.kept` (leak_demo's callback),
its items and bytes, and the line of tfodtrain/callbacks/leak_demo.py that appends to it.

`+experiment=leak_demo` runs on the product's default guard settings (its leak fills the budget in
minutes); this drives the same callback on `+experiment=smoke` with a faster leak and guard settings
scaled to a run of a minute or two, so that warnings come before the abort: the first starts tracemalloc,
the next reads it (the line's source is `tracemalloc`), the abort's census names the holder again.
The run is conftest's shared `leak_named` (helpers/shared_runs.py), started with the session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

def append_line() -> int:
    source = (REPO / "tfodtrain/callbacks/leak_demo.py").read_text().splitlines()
    return next(i for i, text in enumerate(source, 1) if "self.kept.append(" in text)


def test_the_abort_names_keep_detections_kept_its_size_and_the_line(leak_named, tmp_path):
    run_dir, result = leak_named
    assert result.returncode == 75, result.stderr[-3000:]
    line = f"tfodtrain/callbacks/leak_demo.py:{append_line()} in KeepDetections.on_train_batch_end"
    report = json.loads((run_dir / "abort_report.json").read_text())
    clues = report["leak_clues"]
    holder = clues["holders"][0]
    assert holder["path"] == "KeepDetections.kept" and holder["kind"] == "list" and holder["anchor"] == "attribute"
    # ~5 MiB of detections kept a step; the abort's step varies with the machine's load (197 MiB seen on a slow CI)
    assert holder["items"] > 1000 and holder["bytes"] > 100 << 20
    assert holder["growth_per_100_steps"] > 1000 and holder["bytes_per_100_steps"] > 100 << 20
    assert holder["added_at"] == line and holder["added_at_source"] == "tracemalloc"
    assert line in holder["added_by"]
    assert clues["python_objects"]["growing"]  # kept, as before
    assert clues["tensors"]["devices"]["CPU:0"]["variables"] > 100
    assert clues["retracing"]["functions"] == [] and clues["retracing"]["retraces"] == 0
    assert clues["top_lines"]["lines"][0]["at"] == line  # tracemalloc's largest growth, between two warnings
    assert 0 < clues["census"]["seconds"] < 20 and clues["census"]["census_bytes"] > 0
    console = result.stdout + result.stderr
    assert "held by KeepDetections.kept (list, " in console and f"added at {line}" in console  # the warning line
    # the report: report.md and the PNG's line
    from tfodtrain.report import make_report

    image, page = make_report(run_dir, tmp_path)  # written to tmp_path: the shared run dir stays as it ended
    text = page.read_text()
    assert "## Leak clues" in text and "`KeepDetections.kept`" in text and line in text
    assert image.stat().st_size > 10_000
