"""Memory telemetry: one shared reading per interval, logged to TensorBoard and the run dir.

What each pool's *used* and *limit* mean (the figures the guard watches):

| pool      | used                                                  | limit                                                   |
|-----------|-------------------------------------------------------|---------------------------------------------------------|
| `gpuN`    | TensorFlow's allocator in-use bytes (`current`)       | the `memory.gpu_limit_mb` cap, else what the card leaves |
|           | (NVML's per-process bytes when TensorFlow has no GPU) | us (NVML total minus other processes and the driver)    |
| `host`    | RSS of this process and its children                  | the cgroup limit, else physical memory                  |

`memory.budget_mb` lowers every limit to the budget. NVML's per-process bytes are logged beside the
allocator's figure as the cross-check (they include the CUDA context and the allocator's free pool).

Readings come by steps and by time: at the end of a step when `memory.interval_steps` steps or
`memory.interval_s` seconds passed since the previous reading, and from a background thread whenever no
reading at all was taken for `memory.interval_s` seconds (a slow step, an evaluation, a save). The thread reads only the framework-free probes (host RSS and cgroup, NVML), never TensorFlow, so
a GPU that TensorFlow's allocator reports is read at step ends only (its figure is the allocator's, which
NVML's cannot stand in for); its samples carry the last completed step and wait in a queue that the
monitor and the guard take, in time order, at the next step end.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

from tfodtrain.callbacks.base import RunCallback
from tfodtrain.memory import probes
from tfodtrain.memory.limits import pool_limit
from tfodtrain.memory.traces import TraceWriter, read_trace
from tfodtrain.units import GIB, MIB

log = logging.getLogger(__name__)
MAX_QUEUED = 4096  # background samples kept between two step ends (5.7 h at 5 s): a hung step cannot grow it forever


@dataclasses.dataclass
class PoolReading:
    pool: str
    used_bytes: int
    limit_bytes: int | None
    extra_mib: dict  # other figures of this pool, in MiB, for TensorBoard (tag suffix -> value)

    @property
    def peak_bytes(self) -> int:
        """The highest this pool went: the reading, or TensorFlow's allocator peak since the previous
        step-end reading (it holds what happened between readings: an evaluation's peak)."""
        return max(self.used_bytes, int(self.extra_mib.get("tf_peak_mib", 0.0) * MIB))


@dataclasses.dataclass
class MemorySample:
    step: int
    time_s: float  # seconds since the run first started (continues across resumes)
    pools: dict  # pool name -> PoolReading
    raw: dict  # every probe's fields, for memory_readings.jsonl

    def guard_readings(self):
        """(pool, step, time_s, used, limit, peak) for every pool with a known limit; peak: the allocator's
        peak since the previous step-end reading, where TensorFlow's allocator is read (else None)."""
        return [(p.pool, self.step, self.time_s, p.used_bytes, p.limit_bytes,
                 p.peak_bytes if "tf_peak_mib" in p.extra_mib else None)
                for p in self.pools.values() if p.limit_bytes]


class MemorySampler:
    """Reads every pool for the monitor and the guard: at step ends every `interval_steps` steps or
    `interval_s` seconds, and from a background thread when no reading came for `interval_s` seconds.

    It is the one owner of `tf.config.experimental.reset_memory_stats`: each reading's `tf_peak` is the
    allocator's peak since the previous step-end reading, wherever it is shown.

    Example:
        >>> sampler = MemorySampler(interval_steps=10, run_dir=run_dir, interval_s=5)
        >>> sampler.start_background()                         # on train begin
        >>> samples = sampler.due_samples(step=120, steps_per_execution=1)   # () between readings
        >>> sampler.stop_background()                          # on train end
    """

    def __init__(self, interval_steps: int, run_dir: Path, gpu_cap_bytes: int | None = None,
                 budget_bytes: int | None = None, watch_host: bool = True, tf_gpus: list[str] | None = None,
                 host_probe: probes.HostProbe | None = None, nvml_probe: probes.NvmlProbe | None = None,
                 interval_s: float | None = None):
        self.interval_steps = int(interval_steps)
        self.interval_s = float(interval_s) if interval_s else None
        self.run_dir = Path(run_dir)
        self.gpu_cap_bytes = gpu_cap_bytes
        self.budget_bytes = budget_bytes
        self.watch_host = watch_host
        self.tf_gpus = list(tf_gpus or [])
        self._tf_pools = {f"gpu{index}" for index in range(len(self.tf_gpus))}
        default_host, default_nvml = probes.default_probes()
        self.host_probe = host_probe or default_host
        self.nvml_probe = nvml_probe or default_nvml
        self.last: MemorySample | None = None
        self.peak_bytes: dict[str, int] = {}  # per pool, over every reading (the allocator's peaks included)
        self._clock_start = time.monotonic() - self._previous_time_s()
        # The probes and the queue are shared with the background thread: one lock, so samples are
        # taken and queued in time order (an uncontended lock costs well under a microsecond).
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque(maxlen=MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._completed_step = 0  # the stamp of background samples: the last step that ended
        self._last_reading_at = time.monotonic()  # any reading (monotonic s)
        self._last_step_reading_at = self._last_reading_at  # a step-end reading
        self._taken: tuple[int | None, tuple] = (None, ())  # (step, its samples): every caller gets the same

    def run_time_s(self, monotonic_s: float) -> float:
        """A ``time.monotonic()`` instant on the readings' clock (seconds since the run first started)."""
        return monotonic_s - self._clock_start

    def _previous_time_s(self) -> float:
        """A resumed run continues the time axis of the traces it appends to."""
        latest = 0.0
        for path in self.run_dir.glob("memory_trace_*.csv"):
            try:
                for row in read_trace(path):
                    latest = max(latest, row.time_s)
            except (OSError, ValueError):
                continue
        return latest

    def is_due(self, step: int, steps_per_execution: int = 1) -> bool:
        """A step-end reading: a multiple of `interval_steps` crossed, or `interval_s` since the last reading
        (the last step-end one when TensorFlow reports GPUs: background readings leave those out)."""
        if step // self.interval_steps != (step - steps_per_execution) // self.interval_steps:
            return True
        if self.interval_s is None:
            return False
        since = self._last_step_reading_at if self._tf_pools else self._last_reading_at
        return time.monotonic() - since >= self.interval_s

    def due_samples(self, step: int, steps_per_execution: int = 1) -> tuple:
        """The samples to act on at the end of step `step`, in time order: the background ones queued
        since the previous step end, then this step's own when due. Every caller at this step (monitor,
        guard) gets the same tuple; () most of the time, at the cost of two comparisons."""
        taken_step, taken = self._taken
        if taken_step == step:
            return taken
        self._completed_step = step  # before reading: a background sample from now on carries this step
        due = self.is_due(step, steps_per_execution)
        if not due and not self._queue:
            self._taken = (step, ())
            return ()
        with self._lock:
            samples = list(self._queue)
            self._queue.clear()
            if due:
                samples.append(self._read(step))
        samples = tuple(samples)
        if samples:
            self.last = samples[-1]
        self._taken = (step, samples)
        return samples

    def sample_if_due(self, step: int, steps_per_execution: int = 1) -> MemorySample | None:
        """This step's own reading when due (queued background samples stay queued); None otherwise."""
        if self.last is not None and self.last.step == step and not self.last.raw.get("background"):
            return self.last
        if not self.is_due(step, steps_per_execution):
            return None
        return self.sample(step)

    def sample(self, step: int) -> MemorySample:
        """A step-end reading now, at `step`."""
        with self._lock:
            self.last = self._read(step)
        return self.last

    def drain(self) -> list:
        """The background samples still queued (at train end, for the traces)."""
        with self._lock:
            samples = list(self._queue)
            self._queue.clear()
        return samples

    # -- the background thread ---------------------------------------------------------------------

    def start_background(self) -> None:
        """Start the background reader (idempotent; nothing when `interval_s` is unset)."""
        if self.interval_s is None or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._background, name="tfodtrain-memory-sampler", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        """Stop the background reader (idempotent); it finishes a reading under way first."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=10)

    def _background(self) -> None:
        failures = 0
        while True:
            wait = self._last_reading_at + self.interval_s - time.monotonic()
            if self._stop.wait(max(wait, 0.0)):
                return
            with self._lock:
                if time.monotonic() - self._last_reading_at < self.interval_s:
                    continue  # a step-end reading came meanwhile
                try:
                    self._queue.append(self._read(self._completed_step, background=True))
                    failures = 0
                except Exception as error:  # never let a probe kill the thread silently: say so, keep going
                    failures += 1
                    self._last_reading_at = time.monotonic()
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "Background memory reading failed (%s); trying again in %.0f s", error, self.interval_s)

    def _limit(self, pool: str, natural: int | None, cap: int | None = None) -> int | None:
        found = pool_limit(pool, natural, "", cap, self.budget_bytes)
        return found.limit_bytes if found else None

    def _tf_allocator(self) -> dict:
        if not self.tf_gpus:
            return {}
        import tensorflow as tf

        stats = {}
        for index, name in enumerate(self.tf_gpus):
            try:
                info = tf.config.experimental.get_memory_info(name)
                tf.config.experimental.reset_memory_stats(name)
            except (ValueError, RuntimeError) as error:
                log.warning("TensorFlow allocator stats of %s failed: %s", name, error)
                continue
            stats[f"gpu{index}"] = {"current_bytes": int(info["current"]), "peak_bytes": int(info["peak"])}
        return stats

    def _read(self, step: int, background: bool = False) -> MemorySample:
        """One reading of every pool (call under the lock). In the background thread no TensorFlow call:
        a pool whose figure is TensorFlow's allocator is left out of it."""
        now = time.monotonic()
        time_s = now - self._clock_start
        host = self.host_probe.read()
        gpus = self.nvml_probe.read()
        allocator = {} if background else self._tf_allocator()
        pools = {}
        for gpu in gpus:
            if not gpu.ok or (background and gpu.pool in self._tf_pools):
                continue
            tf_stats = allocator.get(gpu.pool)
            limit = self._limit(gpu.pool, probes.gpu_limit_bytes(gpu), self.gpu_cap_bytes if tf_stats else None)
            used = tf_stats["current_bytes"] if tf_stats else gpu.process_bytes
            if used is None:
                continue
            extra = {"nvml_process_mib": (gpu.process_bytes or 0) / MIB,
                     "nvml_other_processes_mib": (gpu.other_processes_bytes or 0) / MIB,
                     "nvml_card_used_mib": (gpu.used_bytes or 0) / MIB,
                     "utilization_percent": float(gpu.utilization_gpu_percent or 0)}
            if tf_stats:
                extra["tf_peak_mib"] = tf_stats["peak_bytes"] / MIB
            pools[gpu.pool] = PoolReading(gpu.pool, int(used), limit, extra)
        for pool, stats in allocator.items():  # a TF GPU that NVML cannot see: the cap is its limit
            if pool not in pools:
                pools[pool] = PoolReading(pool, stats["current_bytes"], self._limit(pool, None, self.gpu_cap_bytes),
                                          {"tf_peak_mib": stats["peak_bytes"] / MIB})
        if self.watch_host:
            extra = {"rss_mib": host.rss_bytes / MIB, "available_mib": host.system_available_bytes / MIB}
            if host.cgroup_usage_bytes is not None:
                extra["cgroup_usage_mib"] = host.cgroup_usage_bytes / MIB
            pools["host"] = PoolReading("host", host.process_tree_rss_bytes, self._limit("host", probes.host_limit_bytes(host)),
                                        extra)
        raw = {"step": step, "time_s": round(time_s, 3), "time_unix": time.time(), "host": host.to_dict(),
               "gpus": [g.to_dict() for g in gpus], "tf_allocator": allocator,
               "pools": {p.pool: {"used_bytes": p.used_bytes, "limit_bytes": p.limit_bytes} for p in pools.values()}}
        for p in pools.values():
            self.peak_bytes[p.pool] = max(self.peak_bytes.get(p.pool, 0), p.peak_bytes)
        if background:
            raw["background"] = True
        else:
            self._last_step_reading_at = now
        self._last_reading_at = now
        return MemorySample(step, time_s, pools, raw)

    def describe_pools(self) -> list[str]:
        """`gpu0 3.1/79.2 GiB` for each pool of the latest reading (progress lines)."""
        if self.last is None:
            return []
        parts = []
        for p in self.last.pools.values():
            limit = f"{p.limit_bytes / GIB:.1f}" if p.limit_bytes else "?"
            parts.append(f"{p.pool} {p.used_bytes / GIB:.2f}/{limit} GiB")
        return parts


def custom_scalars_layout(pools):
    """TensorBoard custom-scalars layout: one chart per pool with used, limit and peak together."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    charts = [
        layout_pb2.Chart(
            title=f"{pool}: used vs limit (MiB)",
            multiline=layout_pb2.MultilineChartContent(
                tag=[rf"memory/{pool}/(used|limit|tf_peak)_mib"]),
        )
        for pool in pools
    ]
    return layout_pb2.Layout(category=[layout_pb2.Category(title="Memory", chart=charts)])


class MemoryMonitor(RunCallback):
    """Logs every memory reading: TensorBoard scalars, `memory_trace_<pool>.csv`, `memory_readings.jsonl`.

    TensorBoard tags (MiB), per pool (`gpu0`, `gpu1`, ..., `host`):
        memory/<pool>/used_mib, memory/<pool>/limit_mib         the figures the guard watches
        memory/gpuN/tf_peak_mib                                 allocator peak since the previous reading
        memory/gpuN/nvml_process_mib, nvml_other_processes_mib, nvml_card_used_mib, utilization_percent
        memory/host/rss_mib, available_mib, cgroup_usage_mib
    and a custom-scalars layout ("Memory": used vs limit on one chart per pool).

    Background readings (a slow step: see MemorySampler) are recorded at the next step end, each at
    the step it was taken in, in time order; those still queued at train end are recorded then.
    TensorBoard keeps one point per tag and step (a later event at a step replaces the earlier): of
    several readings in one step, a pool's tags show the one where its used memory was highest (a
    spike during a long step or an evaluation stays visible); the traces and memory_readings.jsonl
    keep every reading.

    Example:
        python -m tfodtrain +experiment=ssd memory.interval_steps=20 memory.interval_s=10
    """

    def __init__(self, write_traces: bool = True):
        super().__init__()
        self.write_traces = write_traces
        self._writers: dict[str, TraceWriter] = {}
        self._jsonl = None
        self._layout_pools: tuple = ()
        self._scalars = None  # tfodtrain.callbacks.scalars.ScalarWriter, made on the first reading
        self._step_peaks: dict[str, tuple[int, int]] = {}  # pool -> (step, highest used bytes written at it)

    def on_train_begin(self, logs=None):
        if self.write_traces:
            self._jsonl = open(self.run.run_dir / "memory_readings.jsonl", "a", encoding="utf-8")
        self.run.memory.start_background()

    def on_train_batch_end(self, batch, logs=None):
        step = self.run.step_of(batch)
        for sample in self.run.memory.due_samples(step, self.run.execution_steps(step)):
            self.record(sample)

    def record(self, sample: MemorySample) -> None:
        import tensorflow as tf

        writer = self.run.summary_writer
        # Background samples lack the GPUs TensorFlow reports: the layout covers every pool seen so far,
        # rewritten only when a new one appears.
        if not set(sample.pools) <= set(self._layout_pools):
            pools = tuple(sorted(set(sample.pools) | set(self._layout_pools)))
            from tensorboard.plugins.custom_scalar import summary as cs_summary

            with writer.as_default(step=sample.step):
                tf.summary.experimental.write_raw_pb(
                    cs_summary.pb(custom_scalars_layout(pools)).SerializeToString(), step=sample.step)
            self._layout_pools = pools
        scalars = {}
        for p in sample.pools.values():
            step, peak = self._step_peaks.get(p.pool, (None, 0))
            if step == sample.step and p.used_bytes <= peak:
                continue  # TensorBoard would replace this step's higher reading with it
            self._step_peaks[p.pool] = (sample.step, p.used_bytes)
            scalars[f"memory/{p.pool}/used_mib"] = p.used_bytes / MIB
            if p.limit_bytes:
                scalars[f"memory/{p.pool}/limit_mib"] = p.limit_bytes / MIB
            for name, value in p.extra_mib.items():
                scalars[f"memory/{p.pool}/{name}"] = value
        if self._scalars is None:
            from tfodtrain.callbacks.scalars import ScalarWriter

            self._scalars = ScalarWriter(writer)
        if scalars:
            self._scalars.write(sample.step, scalars)  # one event, not ~1 ms of eager ops per scalar
        if not self.write_traces:
            return
        for p in sample.pools.values():
            if p.limit_bytes:
                if p.pool not in self._writers:
                    self._writers[p.pool] = TraceWriter(self.run.run_dir / f"memory_trace_{p.pool}.csv")
                self._writers[p.pool].append(sample.step, sample.time_s, p.used_bytes, p.limit_bytes)
        self._jsonl.write(json.dumps(sample.raw, default=str) + "\n")
        self._jsonl.flush()

    def on_train_end(self, logs=None):
        self.run.memory.stop_background()
        for sample in self.run.memory.drain():  # readings of the last step, after its end was recorded
            self.record(sample)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        self.run.summary_writer.flush()
