"""Memory telemetry in training: the shared sampler, TensorBoard tags, and the trace files."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator

from helpers.repo import REPO, SHARED_TRACES
from tfodtrain.callbacks.monitor import MemorySampler
from tfodtrain.memory.probes import GpuReading, HostProbe
from tfodtrain.memory.traces import HEADER_LINE, read_trace

GIB = 1 << 30


class FakeNvml:
    """NVML stand-in: this machine has no GPU, so the card's answers are scripted (mocked)."""

    def __init__(self, process_bytes=2 * GIB, fail=False):
        self.process_bytes = process_bytes
        self.fail = fail

    def read(self):
        if self.fail:
            return [GpuReading(0, 0, "Fake H100", "GPU-fake", error="NVMLError_Unknown")]
        return [GpuReading(0, 0, "Fake H100", "GPU-fake", used_bytes=self.process_bytes + 3 * GIB, total_bytes=80 * GIB,
                           free_bytes=80 * GIB - self.process_bytes - 3 * GIB, process_bytes=self.process_bytes,
                           other_processes_bytes=2 * GIB, utilization_gpu_percent=55)]

    def status(self):
        return {"available": True}


def test_sampler_reads_every_pool_once_per_due_step(tmp_path):
    sampler = MemorySampler(interval_steps=10, run_dir=tmp_path, host_probe=HostProbe(), nvml_probe=FakeNvml())
    assert sampler.sample_if_due(5) is None
    sample = sampler.sample_if_due(10)
    assert sample is not None and sampler.sample_if_due(10) is sample  # monitor and guard share it
    gpu = sample.pools["gpu0"]
    # No TensorFlow GPU here: NVML's per-process bytes against what the card leaves us (80 - 5 + 2 GiB).
    assert gpu.used_bytes == 2 * GIB and gpu.limit_bytes == 77 * GIB
    host = sample.pools["host"]
    assert host.used_bytes > 50 << 20 and host.limit_bytes > host.used_bytes
    assert {r[0] for r in sample.guard_readings()} == {"gpu0", "host"}
    assert any(part.startswith("gpu0 2.00/77.0 GiB") for part in sampler.describe_pools())


def test_steps_per_execution_rounds_the_interval_up(tmp_path):
    sampler = MemorySampler(interval_steps=10, run_dir=tmp_path, nvml_probe=FakeNvml())
    due = [step for step in range(4, 41, 4) if sampler.is_due(step, steps_per_execution=4)]
    assert due == [12, 20, 32, 40]  # one reading per crossed multiple of 10


def test_budget_caps_every_limit(tmp_path):
    sampler = MemorySampler(interval_steps=1, run_dir=tmp_path, budget_bytes=4 * GIB, nvml_probe=FakeNvml())
    sample = sampler.sample(1)
    assert sample.pools["gpu0"].limit_bytes == 4 * GIB and sample.pools["host"].limit_bytes == 4 * GIB


def test_nvml_error_mid_run_leaves_the_host_watched(tmp_path):
    nvml = FakeNvml()
    sampler = MemorySampler(interval_steps=1, run_dir=tmp_path, nvml_probe=nvml)
    assert "gpu0" in sampler.sample(1).pools
    nvml.fail = True
    sample = sampler.sample(2)
    assert "gpu0" not in sample.pools and "host" in sample.pools
    nvml.fail = False
    assert "gpu0" in sampler.sample(3).pools


def test_resumed_run_continues_the_trace_time_axis(tmp_path):
    (tmp_path / "memory_trace_host.csv").write_text(HEADER_LINE + "\n10,120.50,1000,2000\n")
    sampler = MemorySampler(interval_steps=1, run_dir=tmp_path, nvml_probe=FakeNvml())
    assert sampler.sample(11).time_s >= 120.5


def _scalars(run_dir):
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_tensorboard_tags_read_back(smoke_run):
    events = _scalars(smoke_run)
    tags = set(events.Tags()["scalars"]) | set(events.Tags().get("tensors", []))
    for tag in ("memory/host/used_mib", "memory/host/limit_mib", "memory/host/rss_mib", "memory/host/available_mib",
                "train/loss", "eval/AP50"):
        assert tag in tags, (tag, sorted(tags))
    from tensorboard.util import tensor_util

    used = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("memory/host/used_mib")}
    # one reading a step in smoke (in MiB), and background ones at the last ended step when a step took over 5 s
    assert set(range(1, 7)) <= set(used) <= set(range(0, 7)) and all(100 < v < 64 * 1024 for v in used.values())
    assert "custom_scalars" in events.PluginAssets("custom_scalars") or events.PluginTagToContent("custom_scalars")


@pytest.mark.slow
def test_trace_files_follow_the_shared_format(smoke_run):
    path = smoke_run / "memory_trace_host.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER_LINE
    rows = list(read_trace(path))
    full = [json.loads(line) for line in (smoke_run / "memory_readings.jsonl").read_text().splitlines()]
    assert len(rows) == len(full)  # one row per reading, step-end or background
    # Step ends read every step in smoke; a step over memory.interval_s (the first: tracing) adds background
    # readings, stamped with the last step that had ended. Steps and times never go back.
    assert [r["step"] for r in full if not r.get("background")] == [1, 2, 3, 4, 5, 6]
    assert [r.step for r in rows] == sorted(r.step for r in rows)
    assert [r.time_s for r in rows] == sorted(r.time_s for r in rows)
    assert all(r.used_bytes < r.limit_bytes for r in rows)
    if SHARED_TRACES.exists():  # the same columns and number formats as the shared sample
        assert (SHARED_TRACES / "plateau.csv").read_text().splitlines()[0] == lines[0]
    assert {"host", "gpus", "pools", "tf_allocator"} <= set(full[0])
    replay = subprocess.run([sys.executable, "-m", "tfodtrain.memory.replay", str(path)], capture_output=True,
                            text=True, cwd=REPO)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == {"trace": "memory_trace_host.csv", "abort_step": None, "reason": None}


def test_memory_cli_prints_json():
    result = subprocess.run([sys.executable, "-m", "tfodtrain.memory"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    readings = json.loads(result.stdout)
    assert readings["host"]["rss_bytes"] > 0 and isinstance(readings["gpus"], list)


def test_a_slow_step_still_gives_a_reading_every_interval_s(tmp_path):
    """Readings by time: while one step runs (a real sleep here), the background thread reads the probes every
    interval_s; the step's end hands them over in time order, stamped with the last completed step (its own
    reading is not due: the last background one is under interval_s old). Nothing mocked but NVML (no GPU here)."""
    import time

    sampler = MemorySampler(interval_steps=100, interval_s=0.2, run_dir=tmp_path, nvml_probe=FakeNvml())
    assert sampler.due_samples(1) == ()  # neither interval passed since the sampler was made
    sampler.start_background()
    try:
        time.sleep(1.1)  # one slow step: 5 intervals
        samples = sampler.due_samples(2)
        assert sampler.due_samples(2) is samples  # monitor and guard share them
    finally:
        sampler.stop_background()
    assert 4 <= len(samples) <= 6, [s.time_s for s in samples]
    assert all(s.step == 1 and s.raw["background"] for s in samples)  # the last step that had ended
    times = [s.time_s for s in samples]
    assert times == sorted(times) and all(b - a > 0.15 for a, b in zip(times, times[1:]))  # every interval_s
    assert {"gpu0", "host"} <= set(samples[0].pools)  # NVML's GPU: TensorFlow does not report it
    assert sampler.last is samples[-1]
    time.sleep(0.25)
    (own,) = sampler.due_samples(3)  # interval_s since the last reading: the step end reads
    assert own.step == 3 and "background" not in own.raw
    assert not sampler._thread and sampler.drain() == []


def test_fast_steps_need_no_background_reading(tmp_path):
    """Step-end readings closer than interval_s keep the thread idle: no extra readings, no extra cost."""
    import time

    sampler = MemorySampler(interval_steps=2, interval_s=0.5, run_dir=tmp_path, nvml_probe=FakeNvml())
    sampler.start_background()
    try:
        taken = []
        for step in range(1, 31):
            time.sleep(0.04)
            taken.extend(sampler.due_samples(step))
    finally:
        sampler.stop_background()
    assert [s.step for s in taken] == list(range(2, 31, 2))
    assert not any(s.raw.get("background") for s in taken)


def test_background_readings_leave_tensorflow_gpus_to_the_step_end(tmp_path):
    """A GPU that TensorFlow's allocator reports is not read by the thread (no TensorFlow call there, and
    NVML's bytes are not the allocator's): its samples hold the host only."""
    sampler = MemorySampler(interval_steps=1, interval_s=1, run_dir=tmp_path, nvml_probe=FakeNvml(),
                            tf_gpus=["GPU:0"])
    with sampler._lock:
        sample = sampler._read(7, background=True)
    assert set(sample.pools) == {"host"} and sample.raw["background"] and sample.step == 7


def test_tensorboard_shows_each_steps_highest_reading(tmp_path):
    """TensorBoard keeps one point per tag and step (a later event at a step replaces the earlier): of the
    readings of one slow step, the last event each pool writes at that step is its highest. NVML mocked."""
    import types

    import tensorflow as tf

    from tfodtrain.callbacks.monitor import MemoryMonitor

    nvml = FakeNvml()
    sampler = MemorySampler(interval_steps=1, run_dir=tmp_path, nvml_probe=nvml)  # no thread: readings made here
    monitor = MemoryMonitor(write_traces=True)
    monitor.run = types.SimpleNamespace(summary_writer=tf.summary.create_file_writer(str(tmp_path / "tb")),
                                        run_dir=tmp_path, memory=sampler)
    monitor.on_train_begin()
    written = []  # (step, GPU process GiB) of every reading
    for step, gib in [(3, 2.0), (3, 2.5), (3, 2.2), (4, 1.0), (4, 1.5)]:
        nvml.process_bytes = int(gib * GIB)
        with sampler._lock:
            monitor.record(sampler._read(step, background=True))
        written.append((step, gib))
    monitor.on_train_end()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    events = [(e.step, float(tf.make_ndarray(e.tensor_proto)) / 1024) for e in acc.Tensors("memory/gpu0/used_mib")]
    last = {step: gib for step, gib in events}  # what TensorBoard serves: the last event at each step
    assert last == {3: pytest.approx(2.5), 4: pytest.approx(1.5)}, events
    assert [round(g, 3) for _, g in events] == [2.0, 2.5, 1.0, 1.5]  # the lower 2.2 was not written over 2.5
    trace = [(r.step, r.used_bytes / GIB) for r in read_trace(tmp_path / "memory_trace_gpu0.csv")]
    assert trace == [(s, pytest.approx(g)) for s, g in written]  # the trace keeps every reading
