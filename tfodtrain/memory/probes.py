"""Framework-free memory probes: GPU memory through NVML, host memory through psutil and cgroups.

Nothing here imports TensorFlow or Hydra, so the probes run on any machine, a GPU box without
TensorFlow included. Each read is cheap (no subprocesses, NVML handles and cgroup file paths are
cached), so a callback can take one every training step.

Example:
    >>> from tfodtrain.memory.probes import HostProbe, NvmlProbe, host_limit_bytes, read_all
    >>> host = HostProbe().read()
    >>> host.rss_bytes > 0
    True
    >>> host_limit_bytes(host) >= host.system_total_bytes or host.cgroup_limit_bytes is not None
    True
    >>> sorted(read_all())
    ['gpus', 'host', 'monotonic_s', 'nvml', 'time_unix']

Units: every ``*_bytes`` field is in bytes, ``*_percent`` fields are 0-100, times in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

log = logging.getLogger(__name__)

# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX rounded to pages (9223372036854771712); v2 writes
# "max". Anything from 1 EiB up is no limit a machine could reach.
NO_LIMIT_THRESHOLD_BYTES = 1 << 60

# Children of a training process (data-loader workers) change rarely; listing them walks all of
# /proc, which costs milliseconds on a busy host, so the list is refreshed at most this often.
CHILD_PIDS_REFRESH_S = 5.0


# --------------------------------------------------------------------------------------------
# Readings
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostReading:
    """Host memory of this process tree and of the machine or container it runs in.

    Example:
        >>> r = HostProbe().read()
        >>> r.process_tree_rss_bytes >= r.rss_bytes > 0
        True
    """

    pid: int
    rss_bytes: int  # resident set of this process
    children_rss_bytes: int  # sum over live children (0 when children are not counted)
    children_count: int
    system_total_bytes: int  # physical memory (psutil.virtual_memory().total)
    system_available_bytes: int  # what could be allocated without swapping
    cgroup_version: int | None  # 1, 2, or None when no cgroup memory files were found
    cgroup_limit_bytes: int | None  # tightest limit up the cgroup tree; None: no limit
    cgroup_usage_bytes: int | None  # memory.current / memory.usage_in_bytes (includes page cache)

    @property
    def process_tree_rss_bytes(self) -> int:
        """RSS of this process plus its children: what the host guard compares with the limit.

        Shared pages (fork copy-on-write) are counted once per process, so this overestimates a
        little; proportional set size would be exact but costs a full smaps walk.
        """
        return self.rss_bytes + self.children_rss_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["process_tree_rss_bytes"] = self.process_tree_rss_bytes
        d["limit_bytes"] = host_limit_bytes(self)
        return d


@dataclasses.dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML sees it. Memory fields are None when that part of the read failed.

    ``process_bytes`` is this process's own memory on the card (CUDA context included) as NVML's
    compute-process list reports it; ``other_processes_bytes`` is the sum over every other process
    in that list. ``error`` holds the NVML error text of a failed read; monitoring goes on.

    Example:
        >>> r = GpuReading(index=0, cuda_index=0, name="H100", uuid="GPU-1", used_bytes=6 << 30,
        ...                total_bytes=80 << 30, free_bytes=74 << 30, process_bytes=4 << 30,
        ...                other_processes_bytes=1 << 30)
        >>> r.pool, gpu_limit_bytes(r) == (80 - 2) << 30
        ('gpu0', True)
    """

    index: int  # NVML index (PCI bus order)
    cuda_index: int | None  # ordinal this process's CUDA sees (after CUDA_VISIBLE_DEVICES)
    name: str
    uuid: str
    used_bytes: int | None = None  # whole card, every process and the driver's reserve
    total_bytes: int | None = None
    free_bytes: int | None = None
    process_bytes: int | None = None  # this process (and its children if asked for)
    other_processes_bytes: int | None = None
    utilization_gpu_percent: int | None = None  # share of time a kernel ran, last sample period
    utilization_memory_percent: int | None = None  # share of time memory was read or written
    error: str | None = None

    @property
    def pool(self) -> str:
        """Name of this GPU's memory pool for the guard and traces: ``gpu<cuda ordinal>``."""
        return f"gpu{self.cuda_index if self.cuda_index is not None else self.index}"

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pool"] = self.pool
        d["limit_bytes"] = gpu_limit_bytes(self)
        return d


def host_limit_bytes(reading: HostReading) -> int:
    """The host pool's meaningful limit: the cgroup limit when one is set, else physical memory.

    The guard compares ``reading.process_tree_rss_bytes`` against it. A container is killed at its
    cgroup limit whatever the machine has free, so that limit wins; ``system_available_bytes`` is
    reported next to it for people, but is no limit (page cache counts as available).

    Example:
        >>> r = dataclasses.replace(HostProbe().read(), cgroup_limit_bytes=8 << 30)
        >>> host_limit_bytes(r) == 8 << 30
        True
    """
    if reading.cgroup_limit_bytes is not None:
        return reading.cgroup_limit_bytes
    return reading.system_total_bytes


def gpu_limit_bytes(reading: GpuReading) -> int | None:
    """What this process could hold on the card: total minus everything that is not ours.

    That is ``total - (used - process_bytes)``, i.e. the card's total minus other processes' use
    *and* the driver's reserve, which NVML counts in ``used`` but in no process. Plain
    ``total - other_processes_bytes`` would promise a few hundred MiB that no allocation can get.
    When our own bytes are unknown, fall back to ``total - other_processes_bytes``; None when the
    memory read failed.

    Example:
        >>> r = GpuReading(0, 0, "H100", "GPU-1", used_bytes=10, total_bytes=100, free_bytes=90,
        ...                process_bytes=6, other_processes_bytes=3)
        >>> gpu_limit_bytes(r)   # 100 - (10 - 6): 3 for the other process, 1 for the driver
        96
    """
    if reading.total_bytes is None:
        return None
    if reading.used_bytes is not None and reading.process_bytes is not None:
        return reading.total_bytes - (reading.used_bytes - reading.process_bytes)
    return reading.total_bytes - (reading.other_processes_bytes or 0)


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


class ChildProcesses:
    """This process's descendants, listed at most every ``refresh_s`` seconds.

    Example:
        >>> ChildProcesses().processes()
        []
    """

    def __init__(self, refresh_s: float = CHILD_PIDS_REFRESH_S, clock: Callable[[], float] = time.monotonic):
        self._me = psutil.Process()
        self._refresh_s = refresh_s
        self._clock = clock
        self._listed_at: float | None = None
        self._children: list[psutil.Process] = []

    def processes(self) -> list[psutil.Process]:
        now = self._clock()
        if self._listed_at is None or now - self._listed_at >= self._refresh_s:
            try:
                self._children = self._me.children(recursive=True)
            except psutil.Error:
                self._children = []
            self._listed_at = now
        return self._children

    def pids(self) -> set[int]:
        return {p.pid for p in self.processes()}


# --------------------------------------------------------------------------------------------
# Host
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CgroupMemoryFiles:
    """Where this process's cgroup memory limit and usage live (found once, read every time)."""

    version: int
    limit_paths: tuple[Path, ...]  # own cgroup first, then each ancestor up to the mount root
    usage_path: Path | None


def _own_cgroup_path(proc_self_cgroup: Path, version: int) -> str:
    """The cgroup path of this process from /proc/self/cgroup, '/' when unknown.

    v2 lines read ``0::/path``; v1 lines read ``4:memory:/path`` (controllers comma separated).
    """
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if version == 2 and hierarchy == "0" and controllers == "":
            return path or "/"
        if version == 1 and "memory" in controllers.split(","):
            return path or "/"
    return "/"


def _dirs_up_to(root: Path, own: str) -> list[Path]:
    """``root/own``, its parent, ... up to ``root``: the directories that exist."""
    dirs = []
    current = root / own.strip("/") if own.strip("/") else root
    while True:
        if current.is_dir():
            dirs.append(current)
        if current == root or root not in current.parents:
            break
        current = current.parent
    if root not in dirs and root.is_dir():
        dirs.append(root)
    return dirs


def find_cgroup_memory_files(
    cgroup_root: Path | str = "/sys/fs/cgroup", proc_self_cgroup: Path | str = "/proc/self/cgroup"
) -> CgroupMemoryFiles | None:
    """Locate the memory limit and usage files of this process's cgroup, v2 first, then v1.

    Inside a container the cgroup namespace usually makes the process's cgroup the mount root
    (``/sys/fs/cgroup/memory.max``); on a host it is a sub-directory named in /proc/self/cgroup.
    Every ancestor's limit applies, so all of them are kept and the tightest one wins.

    Example:
        >>> find_cgroup_memory_files("/nonexistent") is None
        True
    """
    root, proc_file = Path(cgroup_root), Path(proc_self_cgroup)
    layouts = (
        (2, root, "memory.max", "memory.current"),
        (1, root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"),
    )
    for version, mount, limit_name, usage_name in layouts:
        dirs = _dirs_up_to(mount, _own_cgroup_path(proc_file, version))
        limit_paths = tuple(d / limit_name for d in dirs if (d / limit_name).is_file())
        usage_path = next((d / usage_name for d in dirs if (d / usage_name).is_file()), None)
        if limit_paths or usage_path:
            return CgroupMemoryFiles(version, limit_paths, usage_path)
    return None


def parse_cgroup_bytes(text: str) -> int | None:
    """A cgroup memory value in bytes; None for "max", absurdly large values, or garbage.

    Example:
        >>> parse_cgroup_bytes("max\\n"), parse_cgroup_bytes("9223372036854771712"), parse_cgroup_bytes("1024")
        (None, None, 1024)
    """
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < NO_LIMIT_THRESHOLD_BYTES else None


def _read_cgroup_bytes(path: Path) -> int | None:
    try:
        return parse_cgroup_bytes(path.read_text())
    except OSError:  # cgroup removed or unreadable: report no value rather than fail the read
        return None


class HostProbe:
    """RSS of this process (and its children), system memory, and the container's cgroup limit.

    ``cgroup_root`` and ``proc_self_cgroup`` are injectable so tests can point them at fake
    files. The cgroup file paths are found once, on the first read.

    Example:
        >>> probe = HostProbe(include_children=False)
        >>> r = probe.read()
        >>> r.children_count, r.rss_bytes > 0
        (0, True)
    """

    def __init__(
        self,
        include_children: bool = True,
        cgroup_root: Path | str = "/sys/fs/cgroup",
        proc_self_cgroup: Path | str = "/proc/self/cgroup",
    ):
        self.include_children = include_children
        self._process = psutil.Process()
        self._children = ChildProcesses() if include_children else None
        self._cgroup_root = Path(cgroup_root)
        self._proc_self_cgroup = Path(proc_self_cgroup)
        self._cgroup_files: CgroupMemoryFiles | None = None
        self._cgroup_searched = False

    @property
    def cgroup_files(self) -> CgroupMemoryFiles | None:
        if not self._cgroup_searched:
            self._cgroup_files = find_cgroup_memory_files(self._cgroup_root, self._proc_self_cgroup)
            self._cgroup_searched = True
        return self._cgroup_files

    def read(self) -> HostReading:
        children_rss, children_count = self._children_rss()
        system = psutil.virtual_memory()
        version, limit, usage = self._read_cgroup()
        return HostReading(
            pid=self._process.pid,
            rss_bytes=self._process.memory_info().rss,
            children_rss_bytes=children_rss,
            children_count=children_count,
            system_total_bytes=system.total,
            system_available_bytes=system.available,
            cgroup_version=version,
            cgroup_limit_bytes=limit,
            cgroup_usage_bytes=usage,
        )

    def _children_rss(self) -> tuple[int, int]:
        if self._children is None:
            return 0, 0
        total, count = 0, 0
        for child in self._children.processes():
            try:
                total += child.memory_info().rss
                count += 1
            except psutil.Error:  # exited since it was listed
                continue
        return total, count

    def _read_cgroup(self) -> tuple[int | None, int | None, int | None]:
        files = self.cgroup_files
        if files is None:
            return None, None, None
        limits = [v for v in (_read_cgroup_bytes(p) for p in files.limit_paths) if v is not None]
        usage = _read_cgroup_bytes(files.usage_path) if files.usage_path else None
        return files.version, (min(limits) if limits else None), usage


# --------------------------------------------------------------------------------------------
# GPU (NVML)
# --------------------------------------------------------------------------------------------


def parse_cuda_visible_devices(value: str | None) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES, or None when it is unset (every GPU visible).

    CUDA stops at the first entry it cannot parse, so do we; an empty string hides every GPU.

    Example:
        >>> parse_cuda_visible_devices("1,GPU-abc, 0"), parse_cuda_visible_devices(""), parse_cuda_visible_devices(None)
        (['1', 'GPU-abc', '0'], [], None)
    """
    if value is None:
        return None
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class NvmlProbe:
    """Per-GPU memory and utilisation from NVML, including this process's own bytes.

    NVML is initialised on the first read, once. Without the library, a driver or a GPU,
    ``available`` is False, ``reason`` says why, one warning is logged and ``read()`` returns [].
    An NVML error while reading a device is logged (a warning the first time, then debug) and
    that device's reading comes back with ``error`` set; the next read tries again.

    CUDA_VISIBLE_DEVICES is respected: only the GPUs it names are read, in its order, and
    ``cuda_index`` is the ordinal CUDA gives them. Numeric entries are taken as NVML (PCI bus)
    indices, which is what CUDA uses under CUDA_DEVICE_ORDER=PCI_BUS_ID and, on machines of one
    GPU model, also under CUDA's default order; UUID entries (``GPU-...``, prefixes allowed) are
    matched exactly. MIG entries are not resolved: then every GPU is read, with a warning.

    Per-process bytes come from nvmlDeviceGetComputeRunningProcesses, matched on ``os.getpid()``
    (and the pids of our children when ``include_children``). Inside a container that has its
    own pid namespace but no access to the host's, NVML reports host pids, nothing matches and
    ``process_bytes`` reads 0 while the card is busy; compare with ``used_bytes`` there.

    ``pids``, when given, replaces that set: a callable returning the PIDs whose bytes count as ours
    (``python -m tfodtrain.watch`` passes the PIDs of the process tree it watches). ``listed_pids``
    keeps, per NVML index, the PIDs of the last compute-process list read, ours or not.

    Example:
        >>> probe = NvmlProbe()
        >>> gpus = probe.read()          # [] on a machine without a GPU
        >>> probe.available == bool(gpus) or probe.reason is not None
        True
    """

    def __init__(self, include_children: bool = False, pids: Callable[[], Iterable[int]] | None = None):
        self.include_children = include_children
        self._pids = pids
        self.listed_pids: dict[int, set[int]] = {}
        self.available = False
        self.reason: str | None = "not initialised yet"
        self.driver_version: str | None = None
        self._nvml: Any = None
        self._initialised = False
        self._devices: list[tuple[int, int | None]] = []  # (nvml index, cuda ordinal)
        self._handles: dict[int, Any] = {}
        self._static: dict[int, tuple[str, str]] = {}  # nvml index -> (name, uuid)
        self._children = ChildProcesses() if include_children else None
        self._failing: set[int] = set()  # devices whose last read failed, to log recovery once

    # -- initialisation ---------------------------------------------------------------------

    def _initialise(self) -> bool:
        """Load and initialise NVML once; afterwards just report whether that worked."""
        if self._initialised:
            return self.available
        self._initialised = True
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            return self._unavailable("nvidia-ml-py is not installed (import pynvml failed)")
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as error:
            return self._unavailable(f"NVML could not start: {error}")
        except OSError as error:  # a broken libnvidia-ml can fail below NVML's own checks
            return self._unavailable(f"NVML could not start: {error}")
        if count == 0:
            return self._unavailable("NVML found no GPU")
        try:
            self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError:
            self.driver_version = None
        self._devices = self._visible_devices(count)
        self.available, self.reason = True, None
        return True

    def _unavailable(self, reason: str) -> bool:
        self.available, self.reason = False, reason
        log.warning("GPU memory monitoring is off: %s; only host memory is watched", reason)
        return False

    def _visible_devices(self, count: int) -> list[tuple[int, int | None]]:
        entries = parse_cuda_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if entries is None:
            return [(i, i) for i in range(count)]
        if any(e.startswith("MIG-") for e in entries):
            log.warning("CUDA_VISIBLE_DEVICES names MIG instances; reading every GPU instead")
            return [(i, None) for i in range(count)]
        devices: list[tuple[int, int | None]] = []
        for entry in entries:
            index = self._resolve_entry(entry, count)
            if index is None or any(index == d for d, _ in devices):
                break  # CUDA, too, ignores an invalid entry and everything after it
            devices.append((index, len(devices)))
        return devices

    def _resolve_entry(self, entry: str, count: int) -> int | None:
        if entry.isdigit():
            return int(entry) if int(entry) < count else None
        for index in range(count):
            try:
                uuid = _text(self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByIndex(index)))
            except self._nvml.NVMLError:
                continue
            if uuid.startswith(entry):
                return index
        return None

    # -- reading ----------------------------------------------------------------------------

    def read(self) -> list[GpuReading]:
        """One reading per visible GPU; [] when NVML is unavailable."""
        if not self._initialise():
            return []
        if self._pids is not None:
            our_pids = set(self._pids())
        else:
            our_pids = {os.getpid()}
            if self._children is not None:
                our_pids |= self._children.pids()
        return [self._read_device(index, cuda_index, our_pids) for index, cuda_index in self._devices]

    def _read_device(self, index: int, cuda_index: int | None, our_pids: set[int]) -> GpuReading:
        nvml = self._nvml
        try:
            handle = self._handle(index)
            name, uuid = self._static_info(index, handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            own, others = self._process_bytes(handle, our_pids, index)
        except nvml.NVMLError as error:
            # Drop the cached handle: after a GPU reset it may be stale. Next read tries again.
            self._handles.pop(index, None)
            return self._failed(index, cuda_index, error)
        reading = GpuReading(
            index=index,
            cuda_index=cuda_index,
            name=name,
            uuid=uuid,
            used_bytes=int(memory.used),
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            process_bytes=own,
            other_processes_bytes=others,
            **self._utilization(handle),
        )
        if index in self._failing:
            self._failing.discard(index)
            log.info("NVML reads GPU %d again", index)
        return reading

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _static_info(self, index: int, handle: Any) -> tuple[str, str]:
        if index not in self._static:
            name = _text(self._nvml.nvmlDeviceGetName(handle))
            uuid = _text(self._nvml.nvmlDeviceGetUUID(handle))
            self._static[index] = (name, uuid)
        return self._static[index]

    def _process_bytes(self, handle: Any, our_pids: set[int], index: int | None = None) -> tuple[int | None, int]:
        """(bytes of our pids, bytes of everyone else); ours is None when NVML hides the sizes."""
        own: int | None = 0
        others = 0
        processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        if index is not None:
            self.listed_pids[index] = {int(process.pid) for process in processes}
        for process in processes:
            used = process.usedGpuMemory  # None where the driver cannot attribute memory (WDDM)
            if process.pid in our_pids:
                own = None if used is None or own is None else own + int(used)
            elif used is not None:
                others += int(used)
        return own, others

    def _utilization(self, handle: Any) -> dict[str, int | None]:
        try:
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        except self._nvml.NVMLError:  # not supported on some cards (MIG, vGPU): not an error
            return {"utilization_gpu_percent": None, "utilization_memory_percent": None}
        return {"utilization_gpu_percent": int(rates.gpu), "utilization_memory_percent": int(rates.memory)}

    def _failed(self, index: int, cuda_index: int | None, error: Exception) -> GpuReading:
        # Warn once per failing spell so a per-step reader cannot flood the log.
        level = logging.DEBUG if index in self._failing else logging.WARNING
        log.log(level, "NVML read of GPU %d failed (%s); reading skipped, monitoring goes on", index, error)
        self._failing.add(index)
        name, uuid = self._static.get(index, ("", ""))
        return GpuReading(index=index, cuda_index=cuda_index, name=name, uuid=uuid, error=str(error))

    def status(self) -> dict[str, Any]:
        """What the ``nvml`` key of :func:`read_all` holds."""
        self._initialise()
        return {
            "available": self.available,
            "reason": self.reason,
            "driver_version": self.driver_version,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "devices": [{"nvml_index": i, "cuda_index": c} for i, c in self._devices],
        }


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------

_default_probes: tuple[HostProbe, NvmlProbe] | None = None


def default_probes() -> tuple[HostProbe, NvmlProbe]:
    """The process-wide probes (made on first use), so NVML handles are cached across calls."""
    global _default_probes
    if _default_probes is None:
        _default_probes = (HostProbe(), NvmlProbe())
    return _default_probes


def read_all(host: HostProbe | None = None, nvml: NvmlProbe | None = None) -> dict[str, Any]:
    """Every framework-free reading as plain data (JSON-ready).

    Example:
        >>> r = read_all()
        >>> r["host"]["rss_bytes"] > 0, isinstance(r["gpus"], list), "available" in r["nvml"]
        (True, True, True)
    """
    if host is None or nvml is None:
        default_host, default_nvml = default_probes()
        host, nvml = host or default_host, nvml or default_nvml
    gpus = nvml.read()
    return {
        "time_unix": time.time(),
        "monotonic_s": time.monotonic(),
        "host": host.read().to_dict(),
        "gpus": [g.to_dict() for g in gpus],
        "nvml": nvml.status(),
    }


def pools(host_reading: HostReading, gpu_readings: Iterable[GpuReading]) -> dict[str, tuple[int, int]]:
    """(used, limit) in bytes for each memory pool the guard watches: ``host``, ``gpu0``, ...

    GPU pools whose read failed are left out for that step.

    Example:
        >>> sorted(pools(HostProbe().read(), []))
        ['host']
    """
    result = {"host": (host_reading.process_tree_rss_bytes, host_limit_bytes(host_reading))}
    for gpu in gpu_readings:
        limit = gpu_limit_bytes(gpu)
        used = gpu.process_bytes
        if gpu.ok and limit is not None and used is not None:
            result[gpu.pool] = (used, limit)
    return result
