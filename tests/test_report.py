"""`python -m tfodtrain.report RUN_DIR`: the picture and the page, on a finished, an aborted and a restarted run.

The aborted and restarted run dirs come from one real run (tests/data/leak_demo_restarted, see its README):
`+experiment=leak_demo trainer.max_restarts=1`, aborted twice by the leak guard (exit 75) with a supervised restart
between, then resumed with `leak_demo.leak=false` to the end. The aborted run dir is that run cut back to its first
training process: the files as they were at the first exit 75.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.repo import REPO
from tfodtrain.exit_codes import UserError
from tfodtrain.memory.replay import replay_rows
from tfodtrain.memory.traces import HEADER_LINE, read_trace
from tfodtrain.report import load_run, make_report

RESTARTED = Path(__file__).parent / "data" / "leak_demo_restarted"
GIB = float(1 << 30)
USED_BLUE = (0x15, 0x65, 0xC0)  # the report's "used" line


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfodtrain.report", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=180)


def first_process_only(source: Path, target: Path) -> Path:
    """The run dir as it was when its first training process exited: rows and events before the restart."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("metrics.json", "restarts.jsonl"))
    readings = [json.loads(line) for line in (target / "memory_readings.jsonl").read_text().splitlines()]
    kept = [r for r in readings if r["host"]["pid"] == readings[0]["host"]["pid"]]
    (target / "memory_readings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for trace in target.glob("memory_trace_*.csv"):
        rows = [line for line in trace.read_text().splitlines()[1:]
                if float(line.split(",")[1]) <= kept[-1]["time_s"] + 0.01]
        trace.write_text("\n".join([HEADER_LINE, *rows]) + "\n")
    for later in sorted((target / "tensorboard").glob("events.out.tfevents.*"))[1:]:
        later.unlink()  # every training process writes its own event file
    # abort_report.json holds the newest abort; at the first exit 75 it held the one the first process logged.
    (target / "abort_report.json").write_text(_abort_texts(target)[0] + "\n")
    return target


def _abort_texts(run_dir: Path) -> list[str]:
    """The JSON of every `guard/abort` text summary, read with TensorBoard's event reader."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return [tensor_util.make_ndarray(e.tensor_proto).item().decode().strip().strip("`")
            for e in events.Tensors("guard/abort")]


def has_color(png: Path, rgb: tuple, tolerance: int = 12) -> bool:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return bool((np.abs(pixels - np.array(rgb)).max(axis=2) <= tolerance).any())


@pytest.fixture(scope="module")
def aborted_run(tmp_path_factory) -> Path:
    return first_process_only(RESTARTED, tmp_path_factory.mktemp("aborted") / "run")


@pytest.mark.slow
def test_report_of_the_finished_smoke_run(smoke_run, tmp_path):
    make_report(smoke_run, tmp_path)  # in this process (the CLI runs in the aborted-run test)
    assert not (smoke_run / "report.md").exists()  # an out dir leaves the (shared, read-only) run dir untouched

    page = (tmp_path / "report.md").read_text()
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert f"| outcome | finished at step {metrics['steps']} |" in page
    assert f"| AP / AP50 / AP75 | {metrics['AP']:.3f} / {metrics['AP50']:.3f} / {metrics['AP75']:.3f} |" in page
    assert f"| steps/s | {metrics['steps_per_second']:.2f} (metrics.json) |" in page
    rows = list(read_trace(smoke_run / "memory_trace_host.csv"))
    peak = max(r.used_bytes for r in rows) / GIB
    assert re.search(rf"\| host \| {peak:.2f} GiB \| {rows[-1].limit_bytes / GIB:.2f} GiB \|", page), page
    # The guard's last word on the pool, whatever this detector version says of six readings.
    from tfodtrain.report import assessment_text

    record = load_run(smoke_run)
    host_row = next(line for line in page.splitlines() if line.startswith("| host |"))
    assert host_row.endswith(f"| {assessment_text(record.pools['host'].last, record.settings)} |"), host_row

    image = Image.open(tmp_path / "memory_report.png")
    assert image.size[0] >= 900 and image.size[1] >= 300
    assert has_color(tmp_path / "memory_report.png", USED_BLUE)


def test_report_of_a_run_the_guard_aborted(aborted_run):
    result = run_report(str(aborted_run))  # the CLI; by default the report goes into the run dir
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wrote", str(aborted_run / "memory_report.png"),
                                     "wrote", str(aborted_run / "report.md")]
    report = json.loads((aborted_run / "abort_report.json").read_text())
    page = (aborted_run / "report.md").read_text()
    assert f"| outcome | aborted by the leak guard at step {report['step']} (exit 75) |" in page
    assert f"| {report['step']} | {report['pool']} | {report['reason']} |" in page
    assert "(no final evaluation)" in page
    assert has_color(aborted_run / "memory_report.png", (0xC6, 0x28, 0x28))  # the abort marker


def replay_per_process(run_dir: Path, settings, pool: str = "host") -> list[int]:
    """Abort steps of tfodtrain.memory.replay run on each training process's rows apart (a fresh guard each)."""
    readings = [json.loads(line) for line in (run_dir / "memory_readings.jsonl").read_text().splitlines()]
    starts = [b["time_s"] for a, b in zip(readings, readings[1:]) if a["host"]["pid"] != b["host"]["pid"]]
    rows = list(read_trace(run_dir / f"memory_trace_{pool}.csv"))
    bounds = [float("-inf"), *(t - 0.005 for t in starts), float("inf")]
    steps = []
    for low, high in zip(bounds, bounds[1:]):
        result = replay_rows([r for r in rows if low <= r.time_s < high], settings, pool)
        steps += [result["abort_step"]] if result["abort_step"] is not None else []
    return steps


def test_picture_shows_the_guards_own_trend_and_the_replay_is_the_detectors(aborted_run):
    record = load_run(aborted_run)
    report = json.loads((aborted_run / "abort_report.json").read_text())
    view = record.pools[report["pool"]]
    # What the guard saw when it aborted, from its report: drawn whatever version of the detector reads it now.
    (recorded,) = view.recorded
    assert recorded in view.drawn_assessments()
    assert (recorded.step, recorded.projected_exhaustion_step) == (report["step"], report["projected_exhaustion_step"])
    assert [m.step for m in record.of_kind("abort")] == [report["step"]]
    # The replay is this version's MemoryGuard with the run's settings from config.yaml, as `replay` runs it.
    assert record.settings.horizon_s == 30 and record.settings.warmup_steps == 10  # leak_demo's, not the defaults
    assert [step for step, _ in view.replayed_aborts] == replay_per_process(aborted_run, record.settings)
    assert view.last is not None and view.last.step == view.rows[-1].step


def test_report_of_a_run_that_was_restarted_and_finished(tmp_path):
    run_dir = shutil.copytree(RESTARTED, tmp_path / "run")
    make_report(run_dir)
    page = (run_dir / "report.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    aborts = [json.loads(text) for text in _abort_texts(run_dir)]
    assert [a["step"] for a in aborts] == [50, 100]
    assert (f"| outcome | finished at step {metrics['steps']} after 2 guard aborts, 1 restart and 1 resume |"
            in page), page
    for abort in aborts:
        assert f"| {abort['step']} | {abort['pool']} | {abort['reason']} |" in page
    # One guard per training process, as in training (one guard over all rows would abort again after a restart).
    record = load_run(run_dir)
    replayed = replay_per_process(run_dir, record.settings)
    assert [step for step, _ in record.pools["host"].replayed_aborts] == replayed
    if replayed:
        assert "aborts at: " + ", ".join(f"step {step} (host)" for step in replayed) + "." in page
    assert [a.step for a in record.pools["host"].recorded] == [50, 100]
    restarts = re.findall(r"^\| (\d+) \| [\d.]+ s \| (restart|resume) \| (.*) \|$", page, flags=re.M)
    assert [(kind, 50 < int(step) <= 52 if kind == "restart" else 100 < int(step) <= 102)
            for step, kind, _ in restarts] == [("restart", True), ("resume", True)], page
    assert "leak guard abort (exit 75)" in restarts[0][2] and "restart limit reached" in restarts[1][2]
    assert f"| AP / AP50 / AP75 | {metrics['AP']:.3f} / {metrics['AP50']:.3f} / {metrics['AP75']:.3f} |" in page


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "missing"):
        result = run_report(str(target))
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("report: ") and str(target) in result.stderr


@pytest.mark.parametrize("content, words", [
    ("step,time,used\n1,2,3\n", "expected header"),
    (HEADER_LINE + "\n1,2.0,lots,4\n", "used_bytes must be an integer"),
])
def test_damaged_trace_is_named_in_one_line(tmp_path, content, words):
    (tmp_path / "memory_trace_gpu0.csv").write_text(content)
    with pytest.raises(UserError, match=words):
        load_run(tmp_path)


def test_run_dir_without_readings_says_so(tmp_path):
    (tmp_path / "config.yaml").write_text("experiment_name: smoke\n")
    with pytest.raises(UserError, match="no memory readings"):
        load_run(tmp_path)


def test_gpu_pool_peak_is_the_allocators(tmp_path):
    """A GPU pool's peak comes from TensorFlow's allocator peaks in memory_readings.jsonl. No GPU on this
    machine, so the run dir is written by hand in the monitor's formats (a trace row and a reading per step)."""
    gib = 1 << 30
    (tmp_path / "config.yaml").write_text("experiment_name: ssd\ntrainer: {steps: 40}\nguard: {mode: abort}\n")
    trace, readings = [HEADER_LINE], []
    for step in range(10, 41, 10):
        used, peak = 3 * gib + step * (1 << 20), 5 * gib + step * (1 << 20)  # evaluation-sized peaks between readings
        trace.append(f"{step},{step * 1.5:.2f},{used},{16 * gib}")
        readings.append({"step": step, "time_s": step * 1.5, "host": {"pid": 7}, "gpus": [],
                         "tf_allocator": {"gpu0": {"current_bytes": used, "peak_bytes": peak}},
                         "pools": {"gpu0": {"used_bytes": used, "limit_bytes": 16 * gib}}})
    (tmp_path / "memory_trace_gpu0.csv").write_text("\n".join(trace) + "\n")
    (tmp_path / "memory_readings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in readings))
    make_report(tmp_path)
    page = (tmp_path / "report.md").read_text()
    assert "| gpu0 | 5.04 GiB | 16.00 GiB | 31% | 3.04 GiB |" in page, page  # peak 5 GiB + 40 MiB, not the 3.04 used
    assert "no end recorded: last reading at step 40" in page
    assert has_color(tmp_path / "memory_report.png", (0xFF, 0x8F, 0x00))  # the allocator-peak line


def test_the_last_assessment_of_a_pool_that_does_not_grow_is_a_real_one():
    from tfodtrain.memory.detector import Assessment
    from tfodtrain.memory.policy import GuardSettings
    from tfodtrain.report import assessment_text

    flat = Assessment(pool="host", step=600, time_s=480.0, used_bytes=3 << 30, limit_bytes=16 << 30, ready=True,
                      floor_bytes=int(2.5 * GIB), slope_bytes_per_second=1024.0, trend_confidence=0.42)
    assert assessment_text(flat, GuardSettings()) == (
        "flat: floor 2.50 GiB, no sustained growth (trend +0.06 MiB/min, confidence of growth 0.42)")
    waiting = Assessment(pool="host", step=3, time_s=2.0, used_bytes=1, limit_bytes=2, note="3 readings so far")
    assert assessment_text(waiting, GuardSettings()) == "3 readings so far"
    assert assessment_text(None, GuardSettings()) == "not watched"


def test_guard_settings_of_another_version_are_left_out_with_a_note():
    from tfodtrain.report import guard_settings_of

    settings, note = guard_settings_of({"guard": {"mode": "warn", "settings": {"a_setting_of_long_ago": 5}}})
    assert settings.mode == "warn" and note == "guard mode warn; settings of another version ignored: a_setting_of_long_ago"
