"""`python -m tfodtrain.watch -- CMD`: the leak guard from outside, on real child processes.

The children are tests/watch_child.py (a flat phase, then a host-memory leak of R MiB/s; periodic saves,
a save on SIGTERM or SIGTERM ignored). The guard runs with the product's defaults: runs are shortened by
the budget (--budget-mb with --kill-over-budget, the OOM killer's stand-in) and the leak's pace only.
Tests marked "real signals" send SIGTERM / SIGINT / SIGKILL to real processes. NVML is mocked (no GPU
here) where its bytes are needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from helpers.background import Background
from tfodtrain import watch
from tfodtrain.memory.traces import read_trace

REPO = Path(__file__).resolve().parent.parent
CHILD = [sys.executable, str(REPO / "tests" / "watch_child.py")]
MIB = 1 << 20
GIB = 1 << 30

# The leak: flat for 20 s (the start-up discount ends), then 30 MiB/s; the budget of 2500 MiB is reached
# about 100 s after the start. Measured here: the guard aborts ~35 s into the leak at ~1.1 GiB.
LEAK = ["--flat-s", "20", "--leak-mib-s", "30"]
BUDGET = ["--budget-mb", "2500", "--kill-over-budget"]


def run_watch(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "tfodtrain.watch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def saves(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("ckpt_*.bin"))


def started_grandchild(proc: subprocess.Popen, pidfile: Path, timeout: float) -> psutil.Process:
    """Wait for tests/watch_child.py's grandchild pid file. The child writes it after it has set its SIGTERM
    handling, and the watch forwards signals before it starts the child: signals sent now reach both."""
    deadline = time.monotonic() + timeout
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    return psutil.Process(int(pidfile.read_text()))


def assert_gone(process: psutil.Process) -> None:
    time.sleep(0.2)
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


# ------------------------------------------------------------------------------------------
# Fast: options, import, exit codes, signals, the process tree
# ------------------------------------------------------------------------------------------


def test_import_loads_neither_tensorflow_nor_hydra():
    code = ("import sys, tfodtrain.watch; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'hydra', 'keras', 'tf_keras')]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("args, words", [
    ([], "no command to watch"),
    (["--"], "no command to watch"),
    (["--", "no-such-command-xyz"], "command not found: no-such-command-xyz"),
    (["--", "./no/such/script.py"], "command not found or not executable"),
    (["--interval-s", "0", "--", "true"], "--interval-s: must be > 0"),
    (["--interval-s", "fast", "--", "true"], "--interval-s: must be a number"),
    (["--budget-mb", "-5", "--", "true"], "--budget-mb"),
    (["--guard-mode", "off", "--", "true"], "--guard-mode"),
    (["--set", "horizon_s=soon", "--", "true"], "--set: horizon_s must be a number"),
    (["--set", "nosuch=1", "--", "true"], "--set: unknown setting 'nosuch'"),
    (["--set", "mode=warn", "--", "true"], "use --guard-mode"),
    (["--signal", "NOPE", "--", "true"], "unknown signal 'NOPE'"),
    (["--grace-s", "-1", "--", "true"], "--grace-s"),
    (["--restarts", "two", "--", "true"], "--restarts"),
    (["--restarts", "1", "--", "true"], "--restarts needs --checkpoint-dir"),
    (["--kill-over-budget", "--", "true"], "--kill-over-budget needs --budget-mb"),
    (["--bogus", "--", "true"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    done = run_watch(["--run-dir", str(tmp_path / "run"), *args], timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfodtrain.watch: error: "), done.stderr
    assert words in lines[0]
    assert "Traceback" not in done.stderr


def test_healthy_child_ends_with_its_own_exit_code(tmp_path):
    run = tmp_path / "run"
    done = run_watch(["--run-dir", str(run), "--interval-s", "0.5", "--", *CHILD, "--run-s", "5", "--exit-code", "3"])
    assert done.returncode == 3, done.stderr[-2000:]
    assert not (run / "abort_report.json").exists()
    rows = list(read_trace(run / "memory_trace_host.csv"))
    assert len(rows) >= 3  # 10 due in 5 s; a loaded CI machine has read only 2 of 6 in 3 s
    assert [r.step for r in rows] == list(range(1, len(rows) + 1))  # the step column counts readings
    assert all(0 < r.used_bytes < r.limit_bytes for r in rows)
    readings = [json.loads(line) for line in (run / "memory_readings.jsonl").read_text().splitlines()]
    assert readings[0]["tree"]["root_pid"] in readings[0]["tree"]["pids"]
    assert readings[-1]["pools"]["host"]["used_bytes"] == rows[-1].used_bytes
    record = json.loads((run / "restarts.jsonl").read_text().splitlines()[-1])
    assert record["exit_code"] == 3 and record["restart"] is False


def test_sparse_readings_are_warned_once_and_the_default_is_not(tmp_path):
    sparse = run_watch(["--run-dir", str(tmp_path / "sparse"), "--interval-s", "12", "--", *CHILD, "--run-s", "1"])
    assert sparse.returncode == 0, sparse.stderr[-2000:]
    assert sparse.stderr.count("--interval-s=12: memory may be read only every 12 s") == 1
    dense = run_watch(["--run-dir", str(tmp_path / "dense"), "--", *CHILD, "--run-s", "1"])
    assert dense.returncode == 0, dense.stderr[-2000:]
    assert "memory may be read only every" not in dense.stderr


def test_tensorboard_scalars_carry_the_callbacks_tags(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    done = run_watch(["--run-dir", str(run), "--interval-s", "0.5", "--budget-mb", "4000", "--",
                      *CHILD, "--run-s", "2"])
    assert done.returncode == 0, done.stderr[-2000:]
    tags, limits = set(), []
    for event in _events(next((run / "tensorboard").glob("events.out.tfevents.*"))):
        for value in event.summary.value:
            tags.add(value.tag)
            if value.tag == "memory/host/limit_mib":
                limits.append(value.tensor.float_val[0])
    assert {"memory/host/used_mib", "memory/host/limit_mib"} <= tags
    assert limits[-1] == pytest.approx(4000.0)  # the budget caps the limit


def _events(path: Path):
    """The events of a TensorBoard event file (TFRecord framing), read without TensorFlow."""
    import struct

    from tensorboard.compat.proto import event_pb2

    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4


def test_death_by_signal_is_128_plus_n(tmp_path):
    """Real signals: the child SIGKILLs itself."""
    done = run_watch(["--run-dir", str(tmp_path / "run"), "--", sys.executable, "-c",
                      "import os, signal, time; time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)"])
    assert done.returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigint_and_sigterm_are_forwarded_and_the_tree_is_taken_down(tmp_path, signum, code):
    """Real signals: SIGTERM / SIGINT to the watch reach the child (exit 143 / 130, its own code); the
    child's grandchild, which outlives it, is killed."""
    ckpt, pidfile = tmp_path / "ckpt", tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, "-m", "tfodtrain.watch", "--run-dir", str(tmp_path / "run"), "--",
                             *CHILD, "--ckpt-dir", str(ckpt), "--on-term", "save", "--grandchild", str(pidfile)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        grandchild = started_grandchild(proc, pidfile, timeout=30)
        time.sleep(0.5)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if signum == signal.SIGTERM:
        assert proc.returncode == code, out
        assert saves(ckpt) == ["ckpt_0001.bin"]  # the child saved on the forwarded SIGTERM
    else:  # Python ends an uncaught KeyboardInterrupt by dying of SIGINT: 130, the child's own code
        assert proc.returncode == code, out
    assert "stopped by" in out or "forwarding" in out
    assert_gone(grandchild)


@pytest.mark.slow
def test_a_second_signal_kills_the_tree(tmp_path):
    """Real signals: a child that ignores SIGTERM is SIGKILLed by the second one."""
    pidfile = tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, "-m", "tfodtrain.watch", "--run-dir", str(tmp_path / "run"), "--",
                             *CHILD, "--on-term", "ignore", "--grandchild", str(pidfile)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Not a fixed sleep: on a loaded CI machine the watch died of a SIGTERM sent before it forwarded signals.
        grandchild = started_grandchild(proc, pidfile, timeout=60)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None  # ignored by the child: the watch waits
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, out
    assert_gone(grandchild)


# ------------------------------------------------------------------------------------------
# Fast: saves, the wait plan, NVML of the tree (mocked)
# ------------------------------------------------------------------------------------------


def test_save_follower_takes_settled_files_and_learns_the_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "SAVE_SETTLE_S", 0.0)
    base = time.time() - 1000
    (tmp_path / "ckpt_0001.pt").write_bytes(b"x")
    os.utime(tmp_path / "ckpt_0001.pt", (base, base))
    follower = watch.SaveFollower(tmp_path)
    assert follower.latest.path.name == "ckpt_0001.pt" and follower.saves == []
    for n, mtime in ((2, 100.0), (3, 110.0), (4, 120.0)):
        path = tmp_path / f"ckpt_000{n}.pt"
        path.write_bytes(b"x" * n)
        os.utime(path, (base + mtime, base + mtime))
        assert follower.scan() is None  # first seen: not settled across two scans yet
        assert follower.scan().path == path
    (tmp_path / "ckpt_0005.pt.tmp").write_bytes(b"partial")
    (tmp_path / ".hidden").write_bytes(b"x")
    follower.scan()
    assert follower.scan() is None and follower.latest.path.name == "ckpt_0004.pt"
    assert follower.interval_s() == pytest.approx(10.0)


def test_save_follower_reads_a_tensorflow_checkpoint_dir(tmp_path):
    for step in (100, 200):
        (tmp_path / f"ckpt-{step}.index").write_bytes(b"i")
        (tmp_path / f"ckpt-{step}.data-00000-of-00001").write_bytes(b"d")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-200"\nall_model_checkpoint_paths: "ckpt-100"\n'
                                         'all_model_checkpoint_paths: "ckpt-200"\n')
    assert watch.newest_save(tmp_path).identity == "ckpt-200"
    assert watch.progress_of(tmp_path) == "ckpt-200"


def test_plan_waits_for_the_next_save_only_when_it_fits(tmp_path):
    follower = SimpleNamespace(directory=tmp_path, saves=[1, 2, 3], latest=SimpleNamespace(mtime=1000.0),
                               interval_s=lambda: 10.0)
    until, note = watch.plan_wait(1004.0, time_left=60.0, follower=follower, grace_s=5.0)
    assert until == pytest.approx(1004.0 + 6.0 + 2.5) and "waiting" in note  # due in 6 s, slack 2.5 s
    until, note = watch.plan_wait(1004.0, time_left=20.0, follower=follower, grace_s=5.0)
    assert until is None and "too close" in note
    few = SimpleNamespace(directory=tmp_path, saves=[1], latest=SimpleNamespace(mtime=1000.0), interval_s=lambda: None)
    assert watch.plan_wait(1004.0, 600.0, few, 5.0)[0] is None
    assert watch.plan_wait(1004.0, 600.0, None, 5.0)[0] is None


pynvml = pytest.importorskip("pynvml")


class FakeNvml:
    """NVML's device calls over one 80 GiB card, its compute processes given per test (no GPU here)."""

    def __init__(self, monkeypatch, processes: dict):
        self.processes = processes
        fakes = {
            "nvmlInit": lambda: None, "nvmlDeviceGetCount": lambda: 1, "nvmlSystemGetDriverVersion": lambda: "580",
            "nvmlDeviceGetHandleByIndex": lambda i: i, "nvmlDeviceGetName": lambda h: "H200",
            "nvmlDeviceGetUUID": lambda h: "GPU-0",
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
                total=80 * GIB, used=GIB // 2 + sum(self.processes.values()),
                free=80 * GIB - GIB // 2 - sum(self.processes.values())),
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [
                SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in self.processes.items()],
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=90, memory=30),
        }
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        for name, fake in fakes.items():
            monkeypatch.setattr(pynvml, name, fake)


def test_gpu_pool_sums_nvml_bytes_over_the_tree(tmp_path, monkeypatch):
    child = subprocess.Popen([*CHILD, "--grandchild", str(tmp_path / "g.pid"), "--run-s", "30"],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "g.pid").exists() or not (tmp_path / "g.pid").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        grandchild = int((tmp_path / "g.pid").read_text())
        other = os.getpid()  # a process outside the tree
        FakeNvml(monkeypatch, {child.pid: 3 * GIB, grandchild: GIB, other: 5 * GIB})
        tree = watch.ProcessTree(child.pid)
        assert {child.pid, grandchild} <= tree.pids() and other not in tree.pids()
        memory = watch.TreeMemory(tree, budget_bytes=None)
        pools, raw = memory.read()
        assert pools["gpu0"] == (4 * GIB, 80 * GIB - (GIB // 2 + 5 * GIB))  # ours; the card minus the rest
        assert raw["gpu_modes"] == {"gpu0": "process"}
        assert watch.TreeMemory(tree, budget_bytes=2 * GIB).read()[0]["gpu0"] == (4 * GIB, 2 * GIB)
    finally:
        grandchild_pid = int((tmp_path / "g.pid").read_text() or 0) if (tmp_path / "g.pid").exists() else 0
        child.kill()
        child.wait()
        if grandchild_pid:
            os.kill(grandchild_pid, signal.SIGKILL)


def test_nvml_pids_of_another_namespace_are_said_once_and_the_card_is_watched(tmp_path, monkeypatch, caplog):
    child = subprocess.Popen([*CHILD, "--run-s", "30"], start_new_session=True)
    try:
        unknown = 4_000_000  # above pid_max: no such PID here
        FakeNvml(monkeypatch, {unknown: 6 * GIB})
        memory = watch.TreeMemory(watch.ProcessTree(child.pid), budget_bytes=None)
        with caplog.at_level("WARNING", logger="tfodtrain.watch"):
            for _ in range(3):
                pools, raw = memory.read()
        said = [r for r in caplog.records if "another PID namespace" in r.getMessage()]
        assert len(said) == 1
        assert pools["gpu0"] == (GIB // 2 + 6 * GIB, 80 * GIB)  # the card's used bytes against its total
        assert raw["gpu_modes"] == {"gpu0": "card"}
    finally:
        child.kill()
        child.wait()


def test_no_gpu_pool_while_the_tree_holds_nothing_on_the_card(monkeypatch):
    child = subprocess.Popen([*CHILD, "--run-s", "30"], start_new_session=True)
    try:
        FakeNvml(monkeypatch, {os.getpid(): GIB})  # someone else's process, in our namespace
        pools, _ = watch.TreeMemory(watch.ProcessTree(child.pid), budget_bytes=None).read()
        assert sorted(pools) == ["host"]
    finally:
        child.kill()
        child.wait()


def test_no_reading_once_the_command_has_ended():
    """The command can end between the watch's poll and its reading: a tree with no live process is not
    read (its 0 bytes would go into the trace as a reading), whether the child is a zombie or reaped."""
    child = subprocess.Popen([*CHILD, "--run-s", "30"], start_new_session=True)
    try:
        memory = watch.TreeMemory(watch.ProcessTree(child.pid), budget_bytes=None)
        pools, _ = memory.read()
        assert 0 < pools["host"][0] < pools["host"][1]
        child.kill()  # not yet reaped: a zombie
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert memory.read() is None
        child.wait()
        assert memory.read() is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# ------------------------------------------------------------------------------------------
# Slow: real leaks under the product's default guard settings
# ------------------------------------------------------------------------------------------


def _report(run: Path) -> dict:
    return json.loads((run / "abort_report.json").read_text())


# The three watched leaks below mostly wait (a flat phase, a paced leak, the guard's readings): they run side by
# side, started when the module starts (if selected), each in its own dirs; each test waits for its own.
SLOW_WATCHES = {
    "test_leaking_child_is_stopped_with_its_checkpoint_before_the_budget_kill": (lambda run, ckpt: [
        "--run-dir", str(run), *BUDGET, "--grace-s", "20", "--",
        *CHILD, *LEAK, "--ckpt-dir", str(ckpt), "--on-term", "save"], 300),
    "test_child_ignoring_sigterm_is_stopped_right_after_its_next_periodic_save": (lambda run, ckpt: [
        "--run-dir", str(run), *BUDGET, "--grace-s", "3", "--checkpoint-dir", str(ckpt), "--",
        *CHILD, *LEAK, "--ckpt-dir", str(ckpt), "--save-every", "8", "--on-term", "ignore"], 300),
    "test_restarts_after_an_abort_and_the_resumed_child_finishes": (lambda run, ckpt: [
        "--run-dir", str(run), *BUDGET, "--grace-s", "20", "--checkpoint-dir", str(ckpt),
        "--restarts", "1", "--backoff-s", "1", "--",
        *CHILD, *LEAK, "--ckpt-dir", str(ckpt), "--on-term", "save", "--leak-unless-resumed",
        "--resumed-run-s", "3"], 400),
}


@pytest.fixture(scope="module", autouse=True)
def slow_watches(request, tmp_path_factory):
    """Starts the selected tests' SLOW_WATCHES at once; `slow_watches(name)` -> (run, ckpt, CompletedProcess)."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    runs, dirs = Background(), {}
    for name, (args, timeout) in SLOW_WATCHES.items():
        if name in selected:
            base = tmp_path_factory.mktemp("watch")
            dirs[name] = base / "run", base / "ckpt"
            runs.start(name, [sys.executable, "-m", "tfodtrain.watch", *args(*dirs[name])], timeout)
    yield lambda name: (*dirs[name], runs.result(name))
    runs.stop()


@pytest.mark.slow
def test_leaking_child_is_stopped_with_its_checkpoint_before_the_budget_kill(slow_watches, request):
    """Real signals: the watch SIGTERMs a leaking child, which saves and exits, before the budget's SIGKILL."""
    run, ckpt, done = slow_watches(request.node.name)
    assert done.returncode == 75, done.stderr[-3000:]
    assert "memory budget exceeded" not in done.stderr
    assert saves(ckpt) == ["ckpt_0001.bin"]  # written on SIGTERM
    report = _report(run)
    assert report["pool"] == "host" and report["exit_code"] == 75
    assert report["child_exit"]["exit_code"] == 143 and not report["child_exit"]["killed_over_budget"]
    assert report["new_checkpoint_seen"] is None  # no --checkpoint-dir given
    assert "leak_clues" not in report
    assert report["used_bytes"] < report["limit_bytes"] == 2500 * MIB
    rows = list(read_trace(run / "memory_trace_host.csv"))
    assert max(r.used_bytes for r in rows) < 2500 * MIB


@pytest.mark.slow
def test_child_ignoring_sigterm_is_stopped_right_after_its_next_periodic_save(slow_watches, request):
    """Real signals: the child ignores SIGTERM and saves every 8 s; the watch waits for the next save,
    then SIGTERM (ignored), then SIGKILL after the grace: nothing is lost, the budget is never reached."""
    run, ckpt, done = slow_watches(request.node.name)
    assert done.returncode == 75, done.stderr[-3000:]
    assert "memory budget exceeded" not in done.stderr
    report = _report(run)
    assert report["new_checkpoint_seen"] is True, report["notes"]
    new = report["new_checkpoint"]
    assert new["path"].endswith(saves(ckpt)[-1])  # the last save the child made is the one waited for
    assert new["identity"] != report["checkpoint_before"]  # not the save the abort decision had seen
    # written within a save interval of the abort; a save due at the decision may land within milliseconds of
    # it, either side (0.0 s in one CI run), and is taken once settled (SAVE_SETTLE_S)
    assert -watch.SAVE_SETTLE_S <= new["mtime_s_after_abort"] <= 8 + 1
    stop = report["stop"]
    assert stop["signal"] == "SIGTERM"
    assert stop["signalled_s_after_abort"] <= new["seen_s_after_abort"] + 1.0  # right after the save
    assert stop["sigkill_s_after_abort"] == pytest.approx(stop["signalled_s_after_abort"] + 3, abs=1.0)
    assert report["child_exit"]["exit_code"] == 128 + signal.SIGKILL
    assert report["save_interval_s"] == pytest.approx(8, abs=1.5)
    assert any("waiting up to" in n for n in report["notes"])


@pytest.mark.slow
def test_restarts_after_an_abort_and_the_resumed_child_finishes(slow_watches, request):
    """Real signals: attempt 1 leaks and is stopped (saving on SIGTERM); attempt 2 resumes, does not leak,
    and exits 0, so the watch does."""
    run, ckpt, done = slow_watches(request.node.name)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "restarts.jsonl").read_text().splitlines()]
    assert [r["exit_code"] for r in records] == [75, 0]
    assert records[0]["restart"] is True and records[0]["delay_s"] == 1.0
    assert records[0]["step"].startswith("ckpt_0001.bin")  # progress: the save made on SIGTERM
    assert "resumed=True" in done.stdout
    assert _report(run)["attempt"] == 1
