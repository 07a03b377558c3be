"""Fast tests of the framework-free memory probes (tfodtrain.memory.probes).

The host probe runs for real. This machine has no GPU and no NVML library, so NVML is mocked
only where it cannot run here: the device calls of the real `pynvml` module are replaced by a
fake card; the "library missing" path runs for real. The GPU side is checked on a real card by
scripts/gpu_probe_check.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.run_if import needs_gpu
from tfodtrain.memory import probes
from tfodtrain.memory.probes import (
    GpuReading,
    HostProbe,
    NvmlProbe,
    find_cgroup_memory_files,
    gpu_limit_bytes,
    host_limit_bytes,
    pools,
    read_all,
)

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30
MB = 1_000_000


# ------------------------------------------------------------------------------------------
# Host
# ------------------------------------------------------------------------------------------


def test_host_probe_reads_this_process():
    reading = HostProbe().read()
    assert reading.pid == os.getpid()
    assert reading.rss_bytes > 0
    assert 0 < reading.system_available_bytes <= reading.system_total_bytes
    assert host_limit_bytes(reading) > 0


def test_host_rss_grows_by_a_touched_200_mb_bytearray():
    probe = HostProbe(include_children=False)
    before = probe.read().rss_bytes
    block = bytearray(200 * MB)
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # touch every page: make it resident
    grown = probe.read().rss_bytes - before
    del block
    assert 180 * MB <= grown <= 230 * MB, f"RSS grew by {grown / MB:.0f} MB, expected about 200"


def test_host_probe_counts_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        reading = HostProbe(include_children=True).read()
        assert reading.children_count >= 1
        assert reading.children_rss_bytes > 0
        assert reading.process_tree_rss_bytes == reading.rss_bytes + reading.children_rss_bytes
    finally:
        child.kill()
        child.wait()


def test_full_read_is_cheap():
    host, nvml = HostProbe(), NvmlProbe()
    read_all(host, nvml)  # first read finds cgroup files and tries NVML once
    start = time.perf_counter()
    for _ in range(50):
        read_all(host, nvml)
    per_read_ms = (time.perf_counter() - start) / 50 * 1000
    assert per_read_ms < 5, f"a full read took {per_read_ms:.2f} ms"


# ------------------------------------------------------------------------------------------
# cgroups, with fake files
# ------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _host_probe(root: Path, proc_cgroup_text: str) -> HostProbe:
    proc = root.parent / "proc_self_cgroup"
    proc.write_text(proc_cgroup_text)
    return HostProbe(include_children=False, cgroup_root=root, proc_self_cgroup=proc)


def test_cgroup_v2_limit_and_usage(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory.max", "4294967296\n")
    _write(root / "memory.current", "123456789\n")
    reading = _host_probe(root, "0::/\n").read()
    assert (reading.cgroup_version, reading.cgroup_limit_bytes, reading.cgroup_usage_bytes) == (2, 4 * GiB, 123456789)
    assert host_limit_bytes(reading) == 4 * GiB


def test_cgroup_v2_max_means_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory.max", "max\n")
    _write(root / "memory.current", "1000\n")
    reading = _host_probe(root, "0::/\n").read()
    assert reading.cgroup_version == 2
    assert reading.cgroup_limit_bytes is None
    assert reading.cgroup_usage_bytes == 1000
    assert host_limit_bytes(reading) == reading.system_total_bytes


def test_cgroup_v2_nested_takes_the_tightest_ancestor_limit(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "kubepods" / "memory.max", str(2 * GiB))
    _write(root / "kubepods" / "pod1" / "memory.max", "max")
    _write(root / "kubepods" / "pod1" / "memory.current", "777")
    reading = _host_probe(root, "0::/kubepods/pod1\n").read()
    assert reading.cgroup_limit_bytes == 2 * GiB
    assert reading.cgroup_usage_bytes == 777


def test_cgroup_v1_limit_and_usage(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory" / "memory.limit_in_bytes", str(3 * GiB))
    _write(root / "memory" / "memory.usage_in_bytes", "2048")
    reading = _host_probe(root, "4:memory:/\n0::/\n").read()
    assert (reading.cgroup_version, reading.cgroup_limit_bytes, reading.cgroup_usage_bytes) == (1, 3 * GiB, 2048)
    assert host_limit_bytes(reading) == 3 * GiB


def test_cgroup_v1_absurdly_large_limit_means_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(root / "memory" / "memory.usage_in_bytes", "4096\n")
    reading = _host_probe(root, "4:memory:/docker/abc\n").read()  # own dir absent: the root counts
    assert reading.cgroup_version == 1
    assert reading.cgroup_limit_bytes is None
    assert reading.cgroup_usage_bytes == 4096


def test_no_cgroup_files_means_no_cgroup(tmp_path):
    reading = _host_probe(tmp_path / "empty", "0::/\n").read()
    assert (reading.cgroup_version, reading.cgroup_limit_bytes, reading.cgroup_usage_bytes) == (None, None, None)
    assert find_cgroup_memory_files(tmp_path / "nowhere") is None


def test_cgroup_paths_are_found_once(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory.max", str(GiB))
    probe = _host_probe(root, "0::/\n")
    probe.read()
    _write(root / "memory.max", str(2 * GiB))  # the value is read every time ...
    assert probe.read().cgroup_limit_bytes == 2 * GiB
    (root / "memory.max").unlink()  # ... from the path found on the first read
    assert probe.cgroup_files is not None and probe.read().cgroup_limit_bytes is None


# ------------------------------------------------------------------------------------------
# NVML, mocked (no GPU here)
# ------------------------------------------------------------------------------------------

pynvml = pytest.importorskip("pynvml")


class FakeCards:
    """Stands in for the driver behind pynvml's device calls: cards, their processes, failures."""

    def __init__(self, count: int = 1, total: int = 80 * GiB):
        self.total = total
        self.cards = [
            {"uuid": f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd", "processes": {}, "reserve": GiB // 2}
            for i in range(count)
        ]
        self.failing: set[int] = set()
        self.init_calls = 0

    def install(self, monkeypatch) -> None:
        def check(index):
            if index in self.failing:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

        def memory(handle):
            check(handle)
            used = self.cards[handle]["reserve"] + sum(self.cards[handle]["processes"].values())
            return SimpleNamespace(total=self.total, used=used, free=self.total - used)

        def processes(handle):
            check(handle)
            return [SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in self.cards[handle]["processes"].items()]

        def init():
            self.init_calls += 1

        fakes = {
            "nvmlInit": init,
            "nvmlDeviceGetCount": lambda: len(self.cards),
            "nvmlSystemGetDriverVersion": lambda: "580.00",
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetUUID": lambda h: self.cards[h]["uuid"],
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetComputeRunningProcesses": processes,
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=97, memory=40),
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(pynvml, name, fake)


@pytest.fixture
def cards(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeCards(count=2)
    fake.install(monkeypatch)
    return fake


def test_nvml_matches_our_pid_and_sums_other_processes(cards):
    cards.cards[0]["processes"] = {os.getpid(): 3 * GiB, 999_991: GiB, 999_992: 2 * GiB}
    gpu0, gpu1 = NvmlProbe().read()
    assert (gpu0.index, gpu0.cuda_index, gpu0.pool) == (0, 0, "gpu0")
    assert gpu0.process_bytes == 3 * GiB
    assert gpu0.other_processes_bytes == 3 * GiB
    assert gpu0.used_bytes == 6 * GiB + GiB // 2
    assert gpu0.total_bytes - gpu0.free_bytes == gpu0.used_bytes
    # our limit: everything on the card that is not ours is out of reach, the driver's reserve too
    assert gpu_limit_bytes(gpu0) == 80 * GiB - 3 * GiB - GiB // 2
    assert (gpu0.utilization_gpu_percent, gpu0.utilization_memory_percent) == (97, 40)
    assert (gpu1.process_bytes, gpu1.other_processes_bytes) == (0, 0)


def test_nvml_children_pids_count_as_ours_when_asked(cards):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cards.cards[0]["processes"] = {os.getpid(): GiB, child.pid: 2 * GiB}
        assert NvmlProbe(include_children=True).read()[0].process_bytes == 3 * GiB
        assert NvmlProbe(include_children=False).read()[0].process_bytes == GiB
    finally:
        child.kill()
        child.wait()


def test_nvml_error_mid_run_is_logged_and_monitoring_goes_on(cards, caplog):
    cards.cards[1]["processes"] = {os.getpid(): 5 * GiB}
    probe = NvmlProbe()
    assert all(r.ok for r in probe.read())

    cards.failing = {1}
    with caplog.at_level(logging.WARNING, logger=probes.__name__):
        first, second = probe.read(), probe.read()
    assert first[0].ok and first[0].process_bytes == 0  # the healthy card is still read
    assert not first[1].ok and "lost" in first[1].error.lower()
    assert first[1].used_bytes is None and first[1].uuid == cards.cards[1]["uuid"]
    assert not second[1].ok
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # not once per read
    assert "gpu1" not in pools(HostProbe().read(), first)  # the guard skips the failed pool

    cards.failing = set()
    recovered = probe.read()[1]
    assert recovered.ok and recovered.process_bytes == 5 * GiB
    assert cards.init_calls == 1  # NVML was initialised once, lazily


def test_nvml_respects_cuda_visible_devices(cards, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    (only,) = NvmlProbe().read()
    assert (only.index, only.cuda_index, only.pool) == (1, 0, "gpu0")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cards.cards[1]["uuid"][:12] + "," + "0")
    by_uuid = NvmlProbe().read()
    assert [(r.index, r.cuda_index) for r in by_uuid] == [(1, 0), (0, 1)]

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert NvmlProbe().read() == []


def test_nvml_library_missing_warns_once_and_reads_host_only(monkeypatch, caplog):
    """Runs for real on this machine, which has no NVML library."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVML library; the missing-library path cannot run")
    probe = NvmlProbe()
    with caplog.at_level(logging.WARNING, logger=probes.__name__):
        readings = [probe.read() for _ in range(3)]
        snapshot = read_all(HostProbe(), probe)
    assert readings == [[], [], []]
    assert probe.available is False and "NVML" in probe.reason
    assert len(caplog.records) == 1 and "only host memory" in caplog.records[0].getMessage()
    assert snapshot["gpus"] == [] and snapshot["nvml"]["available"] is False
    assert snapshot["host"]["rss_bytes"] > 0


def test_nvidia_ml_py_not_installed(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    probe = NvmlProbe()
    with caplog.at_level(logging.WARNING, logger=probes.__name__):
        assert probe.read() == []
    assert "nvidia-ml-py" in probe.reason and len(caplog.records) == 1


def test_gpu_reading_to_dict_carries_pool_and_limit():
    reading = GpuReading(0, 1, "H100", "GPU-x", used_bytes=10, total_bytes=100, free_bytes=90, process_bytes=4)
    d = reading.to_dict()
    assert d["pool"] == "gpu1" and d["limit_bytes"] == 94 and d["error"] is None
    assert json.loads(json.dumps(d)) == d


# ------------------------------------------------------------------------------------------
# python -m tfodtrain.memory
# ------------------------------------------------------------------------------------------


def _run_python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_module_prints_json_readings():
    done = _run_python("-m", "tfodtrain.memory")
    assert done.returncode == 0, done.stderr
    readings = json.loads(done.stdout)
    assert readings["host"]["rss_bytes"] > 0
    assert isinstance(readings["gpus"], list)
    assert "available" in readings["nvml"]


# Forbids tensorflow and hydra (and records any attempt, even one a try/except would swallow),
# then runs the module as `python -m` would.
_BLOCKED_RUN = r"""
import importlib.abc, runpy, sys
attempts = []
class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "hydra"):
            attempts.append(name)
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Forbid())
try:
    runpy.run_module("tfodtrain.memory", run_name="__main__", alter_sys=True)
except SystemExit as done:
    code = done.code or 0
else:
    code = 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "hydra"))
if attempts or loaded:
    sys.stderr.write("FRAMEWORK IMPORTED: %r %r\n" % (attempts, loaded))
    sys.exit(3)
sys.exit(code)
"""


def test_module_runs_with_tensorflow_and_hydra_blocked():
    done = _run_python("-c", _BLOCKED_RUN)
    assert done.returncode == 0, done.stderr
    assert "host" in json.loads(done.stdout)


def test_blocker_would_catch_a_framework_import():
    """The blocker itself works: importing hydra through it fails the run."""
    done = _run_python("-c", _BLOCKED_RUN.replace('"tfodtrain.memory"', '"hydra"'))
    assert done.returncode != 0
    assert "blocked: hydra" in done.stderr


@needs_gpu
def test_nvml_reads_every_real_gpu_with_its_limit():
    readings = NvmlProbe().read()
    assert readings and all(r.ok and r.total_bytes > 0 for r in readings), readings
    assert all(gpu_limit_bytes(r) is not None and 0 < gpu_limit_bytes(r) <= r.total_bytes for r in readings)
