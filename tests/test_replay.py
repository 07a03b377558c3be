"""The replay CLI (`python -m tfodtrain.memory.replay`) and the trace CSV format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfodtrain.memory.replay import main as replay_main, pool_name, replay_rows
from tfodtrain.memory.traces import HEADER_LINE, TraceFormatError, TraceRow, TraceWriter, read_trace

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "leak_traces"


def _shared_traces() -> Path:
    if not (SHARED / "labels.json").exists():
        pytest.skip(f"shared leak traces not found at {SHARED} (expected <repo>/../shared/leak_traces)")
    return SHARED


def _replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfodtrain.memory.replay", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.mark.slow
def test_shared_traces_every_leak_caught_a_minute_ahead_no_healthy_aborted():
    folder = _shared_traces()
    labels = json.loads((folder / "labels.json").read_text())
    files = [str(folder / name) for name in sorted(labels)]
    done = _replay(*files)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["trace"] for r in results] == sorted(labels)  # one line per file, in order
    for result in results:
        label = labels[result["trace"]]
        if not label["leak"]:
            assert result["abort_step"] is None and result["reason"] is None, result
            continue
        rows = {row.step: row.time_s for row in read_trace(folder / result["trace"])}
        assert result["abort_step"] is not None, result
        lead_s = rows[label["oom_step"]] - rows[result["abort_step"]]
        assert lead_s >= 60, (result, lead_s)
        assert result["reason"].startswith(result["trace"][:-4] + ": memory grows")
    score = subprocess.run([sys.executable, str(folder / "score.py"), str(folder / "labels.json"), "60"],
                           input=done.stdout, capture_output=True, text=True, timeout=60)
    assert score.returncode == 0, score.stdout
    assert score.stdout.strip().splitlines()[-1].startswith(f"caught={sum(l['leak'] for l in labels.values())}/")


@pytest.mark.parametrize("folder", ["gpu_traces", "gpu_traces_seed61", "gpu_traces_seed62", "gpu_traces_seed63",
                                    "gpu_traces_seed64", "gpu_traces_seed65"])
def test_real_gpu_traces_every_leak_caught_a_minute_ahead_no_healthy_aborted(folder):
    # Real PyTorch trainings on an H200 (each folder's README); gpu_traces_seed61 to _seed65 were each
    # recorded after a change of the guard and replayed once before they were added here.
    folder = REPO / "tests" / "data" / folder
    labels = json.loads((folder / "labels.json").read_text())
    assert sorted(labels) == sorted(p.name for p in folder.glob("*.csv"))
    assert sum(label["leak"] for label in labels.values()) == 8
    for name, label in sorted(labels.items()):
        rows = list(read_trace(folder / name))
        result = replay_rows(rows)
        if not label["leak"]:
            assert result["abort_step"] is None, (name, result)
            continue
        time_at = {row.step: row.time_s for row in rows}
        assert result["abort_step"] is not None, (name, result)
        lead_s = time_at[label["oom_step"]] - time_at[result["abort_step"]]
        assert lead_s >= 60, (name, result, lead_s)


@pytest.mark.parametrize("content, words", [
    ("step,time,used,limit\n1,1.0,5,10\n", "row 1: expected header"),
    (f"{HEADER_LINE}\n5,1.00,100,1000\n10,x,100,1000\n", "row 3: time_s must be a number, found 'x'"),
    (f"{HEADER_LINE}\n5,1.00,100\n", "row 2: expected 4 values"),
    (f"{HEADER_LINE}\n5,1.00,lots,1000\n", "row 2: used_bytes must be an integer byte count"),
    ("", "expected header"),
])
def test_bad_csv_exits_2_with_one_line(tmp_path, content, words):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    done = _replay(str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_missing_file_and_bad_setting_exit_2(tmp_path, capsys):
    assert replay_main([str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err
    good = tmp_path / "memory_trace_gpu0.csv"
    good.write_text(f"{HEADER_LINE}\n5,1.00,100,1000\n")
    assert replay_main([str(good), "--set", "horizon=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown setting 'horizon'" in err and len(err.splitlines()) == 1


def test_set_overrides_and_pool_name(tmp_path, capsys):
    path = tmp_path / "memory_trace_gpu3.csv"
    path.write_text(f"{HEADER_LINE}\n5,1.00,100,1000\n")
    assert replay_main([str(path), "--set", "horizon_s=1200", "--set", "mode=warn"]) == 0
    assert json.loads(capsys.readouterr().out) == {"trace": path.name, "abort_step": None, "reason": None}
    assert pool_name("runs/x/memory_trace_gpu3.csv") == "gpu3"
    assert pool_name("linear_leak.csv") == "linear_leak"


def test_trace_writer_appends_without_a_second_header(tmp_path):
    path = tmp_path / "run" / "memory_trace_gpu0.csv"
    with TraceWriter(path) as writer:
        writer.append(10, 12.345, 5 * 2**30, 80 * 2**30)
    with TraceWriter(path) as writer:  # the resumed run
        writer.write(TraceRow(20, 30.0, 6 * 2**30, 80 * 2**30))
    text = path.read_text()
    assert text.splitlines() == [HEADER_LINE, "10,12.35,5368709120,85899345920", "20,30.00,6442450944,85899345920"]
    assert list(read_trace(path)) == [TraceRow(10, 12.35, 5 * 2**30, 80 * 2**30), TraceRow(20, 30.0, 6 * 2**30, 80 * 2**30)]


def test_trace_writer_after_a_killed_run_drops_the_torn_row(tmp_path):
    path = tmp_path / "memory_trace_host.csv"
    path.write_text(f"{HEADER_LINE}\n10,1.00,5,80\n20,2.0")  # killed mid-row
    with pytest.raises(TraceFormatError, match="row 3"):
        list(read_trace(path))  # as it is, the torn row is reported, naming file and row
    with TraceWriter(path) as writer:
        writer.append(30, 3.0, 7, 80)
    assert path.read_text().splitlines() == [HEADER_LINE, "10,1.00,5,80", "30,3.00,7,80"]
    assert [row.step for row in read_trace(path)] == [10, 30]
