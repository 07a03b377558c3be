"""Leak real GPU memory until the card is full and check that MemoryGuard aborts before the OOM.

A stand-in for a leaking TensorFlow run, on a GPU machine without TensorFlow: each step holds on
to one more chunk of device memory (PyTorch, else CuPy), at a fixed pace sized so that the card
would be exhausted after about ``--seconds``. Every step, NvmlProbe reads every visible GPU and
the guard observes each one as its own pool (``gpu0``, ``gpu1``, ...):

    used  = this process's bytes on the card (NVML's per-process list)
    limit = total - (used_by_card - ours), i.e. the card's total minus other processes' use and
            the driver's reserve (probes.gpu_limit_bytes)

A run stops at the guard's first ``abort``. The drill then measures how far it was from the OOM:
it keeps taking chunks, without pausing, until CUDA refuses one (then halves the chunk down to
2 MiB to pick up the rest). The chunks taken after the abort, at the drill's pace, give the lead
time (``lead_s = chunks_after_abort * step_s``) and the step the OOM would have come at; their
bytes are the GiB that were left. If the guard never aborts, the first CUDA OOM ends the run and
is recorded as a miss.

Guard settings: ``--product-settings`` runs the product defaults unchanged; a leak that fills the
card in 3 minutes or more after the start-up is caught with them (on an H200, 2026-11-30:
``--product-settings --seconds 480``, abort 182.5 s before the OOM). Without it the drill stands for
a longer leak (``--stands-for``, default 3600 s) and divides every *duration* in the defaults by
``stands_for / seconds`` (30 by default): startup_s 120 -> 4, chunk_seconds (60, 240, 960) -> (2, 8,
32), fast_chunk_seconds (5, 20) -> (0.17, 0.67), horizon_s 180 -> 6, long_horizon_s 300 -> 10,
warn_horizon_s 1800 -> 60, warn_every_s 600 -> 20. Counts and statistics stay the defaults. The drill
prints the settings it uses.

    PYTHONPATH=. python3 scripts/gpu_leak_drill.py --runs 5 --seconds 120 --out /tmp/drill
    PYTHONPATH=. python3 scripts/gpu_leak_drill.py --dry-run --runs 2     # no GPU: fake card, fake clock

``--device N`` leaks on GPU N only (CUDA ordinal); the others are watched too, and the guard must
name the leaking pool. ``--out DIR`` writes ``run<k>/memory_trace_gpu<N>.csv`` per run and
``drill_summary.json``. Exit 0 when every run aborted before OOM on the leaking pool, else 1.
The last line reads like ``drill: 5/5 runs aborted before OOM; median lead 9.5 s, 6.1 GiB left``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tfodtrain.exit_codes import first_line
from tfodtrain.memory.probes import GpuReading, NvmlProbe, gpu_limit_bytes
from tfodtrain.memory.traces import TraceWriter

GiB = 1 << 30
MiB = 1 << 20
GRAIN = 2 * MiB  # CUDA allocators round to 2 MiB pages; chunks are whole grains


class OutOfMemory(Exception):
    """The allocator refused a chunk: CUDA out of memory, whatever the framework calls it."""


# --------------------------------------------------------------------------------------------
# Clocks: real for the GPU, virtual for --dry-run so a test runs in well under a second
# --------------------------------------------------------------------------------------------


class RealClock:
    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


class VirtualClock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


# --------------------------------------------------------------------------------------------
# Leakers: hold chunks of device memory
# --------------------------------------------------------------------------------------------


class TorchLeaker:
    name = "torch"

    def __init__(self, device: int):
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.empty(1, device=self.device).fill_(0)  # create the context before the first reading
        torch.cuda.synchronize(self.device)
        self.held: list[Any] = []

    def take(self, nbytes: int) -> None:
        try:
            self.held.append(self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device))
        except self.torch.OutOfMemoryError as error:
            raise OutOfMemory(first_line(error)) from None

    def release(self) -> None:
        self.held.clear()
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.empty_cache()  # give the memory back to the driver, not just the cache


class CupyLeaker:
    name = "cupy"

    def __init__(self, device: int):
        import cupy

        self.cupy = cupy
        cupy.cuda.Device(device).use()
        cupy.cuda.set_allocator(None)  # plain cudaMalloc/cudaFree: freed chunks go back at once
        cupy.zeros(1, dtype=cupy.uint8)
        self.held: list[Any] = []

    def take(self, nbytes: int) -> None:
        try:
            self.held.append(self.cupy.empty(nbytes, dtype=self.cupy.uint8))
        except self.cupy.cuda.memory.OutOfMemoryError as error:
            raise OutOfMemory(first_line(error)) from None

    def release(self) -> None:
        self.held.clear()
        self.cupy.cuda.Device().synchronize()


def make_leaker(device: int):
    for factory in (TorchLeaker, CupyLeaker):
        try:
            return factory(device)
        except ImportError:
            continue
    raise SystemExit("gpu_leak_drill: neither PyTorch nor CuPy is installed (use --dry-run without a GPU)")


class FakeCards:
    """--dry-run: cards that behave like NVML plus cudaMalloc, with no GPU.

    Each card has a driver reserve, another process using some memory, and our CUDA context once
    we leak on it; a chunk that does not fit raises OutOfMemory. ``read()`` mimics NvmlProbe.
    """

    name = "fake"

    def __init__(self, count: int, leak_device: int, total: int = 80 * GiB):
        self.count, self.leak_device, self.total = count, leak_device, total
        self.reserve, self.context, self.others = 512 * MiB, 512 * MiB, 2 * GiB
        self.held = 0

    def _ours(self, index: int) -> int:
        return self.context + self.held if index == self.leak_device else 0

    def read(self) -> list[GpuReading]:
        readings = []
        for i in range(self.count):
            used = self.reserve + self.others + self._ours(i)
            readings.append(GpuReading(
                index=i, cuda_index=i, name="fake 80 GB", uuid=f"GPU-fake-{i}", used_bytes=used,
                total_bytes=self.total, free_bytes=self.total - used, process_bytes=self._ours(i),
                other_processes_bytes=self.others))
        return readings

    def take(self, nbytes: int) -> None:
        if self.reserve + self.others + self._ours(self.leak_device) + nbytes > self.total:
            raise OutOfMemory(f"fake card: cannot take {nbytes} bytes")
        self.held += nbytes

    def release(self) -> None:
        self.held = 0


# --------------------------------------------------------------------------------------------
# The guard (written next door: tfodtrain/memory/guard.py)
# --------------------------------------------------------------------------------------------


def drill_settings(time_scale: float):
    """Product default guard settings with every duration divided by ``time_scale``.

    Example: ``drill_settings(30).startup_s == 4.0`` (the product default is 120 s).
    """
    from tfodtrain.memory.policy import GuardSettings

    defaults = GuardSettings()
    if time_scale == 1:
        return defaults
    return dataclasses.replace(
        defaults,
        startup_s=defaults.startup_s / time_scale,
        warmup_s=defaults.warmup_s / time_scale,
        chunk_seconds=tuple(s / time_scale for s in defaults.chunk_seconds),
        fast_chunk_seconds=tuple(s / time_scale for s in defaults.fast_chunk_seconds),
        horizon_s=defaults.horizon_s / time_scale,
        long_horizon_s=defaults.long_horizon_s / time_scale,
        warn_horizon_s=defaults.warn_horizon_s / time_scale,
        warn_every_s=defaults.warn_every_s / time_scale,
    )


def make_guard(settings):
    from tfodtrain.memory.guard import MemoryGuard

    return MemoryGuard(settings)


def describe_settings(settings: Any) -> dict[str, Any]:
    if hasattr(settings, "to_dict"):
        return settings.to_dict()
    return dataclasses.asdict(settings)


def settings_changes(settings: Any) -> str:
    """The settings that differ from the product defaults, as ``name default -> drill``."""
    from tfodtrain.memory.policy import GuardSettings

    defaults, ours = describe_settings(GuardSettings()), describe_settings(settings)
    changed = [f"{k} {_short(defaults[k])} -> {_short(v)}" for k, v in ours.items() if v != defaults[k]]
    return ", ".join(changed) if changed else "none"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    run: int
    leak_pool: str
    chunk_bytes: int
    step_s: float
    planned_steps: int
    aborted: bool = False
    abort_pool: str | None = None
    abort_step: int | None = None
    abort_time_s: float | None = None
    abort_reason: str | None = None
    used_bytes_at_abort: int | None = None
    limit_bytes_at_abort: int | None = None
    first_warn_step: int | None = None
    first_warn_time_s: float | None = None
    guard_projected_oom_step: int | None = None  # the guard's own projection at the abort
    guard_projected_oom_time_s: float | None = None
    oom_step: int | None = None  # measured: where the first CUDA OOM came (or would have, at pace)
    oom_time_s: float | None = None
    oom_error: str | None = None
    lead_steps: int | None = None
    lead_s: float | None = None
    bytes_left_at_abort: int | None = None
    wall_s: float | None = None

    @property
    def caught(self) -> bool:
        """Aborted before the OOM, on the pool that leaks."""
        return self.aborted and self.abort_pool == self.leak_pool


def find(readings: list[GpuReading], cuda_index: int) -> GpuReading:
    for reading in readings:
        if reading.cuda_index == cuda_index:
            return reading
    raise SystemExit(f"gpu_leak_drill: GPU {cuda_index} is not visible (CUDA_VISIBLE_DEVICES?)")


def pool_usage(reading: GpuReading) -> tuple[int, int] | None:
    """(used, limit) of one GPU pool, None when this step's NVML read failed."""
    limit = gpu_limit_bytes(reading)
    if not reading.ok or reading.process_bytes is None or limit is None:
        return None
    return reading.process_bytes, limit


def drain(leaker, chunk: int) -> tuple[int, int]:
    """Take chunks with no pause until one fails, then pick up the rest in halving pieces.

    Returns (whole chunks taken, bytes taken in all): the distance to the OOM.
    """
    chunks = 0
    taken = 0
    while True:
        try:
            leaker.take(chunk)
        except OutOfMemory:
            break
        chunks += 1
        taken += chunk
    piece = chunk // 2 // GRAIN * GRAIN
    while piece >= GRAIN:
        try:
            leaker.take(piece)
            taken += piece
        except OutOfMemory:
            piece = piece // 2 // GRAIN * GRAIN
    return chunks, taken


def one_run(run: int, args, settings, probe, leaker, clock, out: Path | None, log) -> RunResult:
    guard = make_guard(settings)
    leak_reading = find(probe.read(), args.device)
    used, limit = pool_usage(leak_reading)
    step_s = args.step_seconds
    planned_steps = max(1, round(args.seconds / step_s))
    chunk = max(GRAIN, -(-(limit - used) // planned_steps) // GRAIN * GRAIN)
    result = RunResult(run, leak_reading.pool, chunk, step_s, planned_steps)
    log(f"run {run}: leaking {chunk / MiB:.0f} MiB every {step_s:g} s on {leak_reading.pool} "
        f"({(limit - used) / GiB:.1f} GiB to go, ~{planned_steps} steps)")

    writers: dict[str, TraceWriter] = {}
    start = clock.now()
    step = 0
    try:
        while True:
            now = clock.now() - start
            for reading in probe.read():
                usage = pool_usage(reading)
                if usage is None:
                    log(f"  step {step}: {reading.pool} read failed ({reading.error}); skipped")
                    continue
                if out is not None:
                    if reading.pool not in writers:
                        writers[reading.pool] = TraceWriter(out / f"run{run}" / f"memory_trace_{reading.pool}.csv")
                    writers[reading.pool].append(step, now, *usage)
                decision = guard.observe(reading.pool, step, now, *usage)
                action = getattr(decision, "action", decision)
                if action == "warn" and result.first_warn_step is None:
                    result.first_warn_step, result.first_warn_time_s = step, round(now, 2)
                    log(f"  step {step} ({now:.1f} s): guard warns on {reading.pool}: {decision.reason}")
                if action == "abort" and not result.aborted:
                    result.aborted = True
                    result.abort_pool = getattr(decision, "pool", None) or reading.pool
                    result.abort_step, result.abort_time_s = step, round(now, 2)
                    result.abort_reason = decision.reason
                    result.used_bytes_at_abort, result.limit_bytes_at_abort = usage
                    assessment = getattr(decision, "assessment", None)
                    if assessment is not None:
                        result.guard_projected_oom_step = assessment.projected_exhaustion_step
                        result.guard_projected_oom_time_s = assessment.projected_exhaustion_time_s
            if result.aborted:
                break
            try:
                leaker.take(chunk)
            except OutOfMemory as error:
                result.oom_step, result.oom_time_s, result.oom_error = step, round(now, 2), str(error)
                break
            step += 1
            clock.sleep(max(0.0, start + step * step_s - clock.now()))  # fixed pace, not drift

        if result.aborted:
            chunks_left, bytes_left = drain(leaker, chunk)
            result.lead_steps = chunks_left
            result.lead_s = round(chunks_left * step_s, 2)
            result.bytes_left_at_abort = bytes_left
            result.oom_step = result.abort_step + chunks_left
            result.oom_time_s = round(result.abort_time_s + result.lead_s, 2)
            log(f"  ABORT at step {result.abort_step} ({result.abort_time_s:.1f} s) on {result.abort_pool}: "
                f"{result.abort_reason}")
            log(f"    used {result.used_bytes_at_abort / GiB:.2f} GiB of {result.limit_bytes_at_abort / GiB:.2f} GiB; "
                f"OOM would have come at step {result.oom_step} (~{result.oom_time_s:.1f} s, measured by "
                f"taking chunks until CUDA refused): lead {result.lead_s:.1f} s, {bytes_left / GiB:.2f} GiB left")
            if result.guard_projected_oom_step is not None:
                log(f"    the guard projected exhaustion at step {result.guard_projected_oom_step} "
                    f"(~{result.guard_projected_oom_time_s:.1f} s)")
        else:
            log(f"  MISS: CUDA OOM at step {result.oom_step} ({result.oom_time_s:.1f} s) before any abort: "
                f"{result.oom_error}")
    finally:
        for writer in writers.values():
            writer.close()
        leaker.release()
    result.wall_s = round(clock.now() - start, 2)
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def summary_line(results: list[RunResult]) -> str:
    caught = [r for r in results if r.caught]
    line = f"drill: {len(caught)}/{len(results)} runs aborted before OOM"
    if caught:
        lead = statistics.median(r.lead_s for r in caught)
        left = statistics.median(r.bytes_left_at_abort for r in caught) / GiB
        line += f"; median lead {lead:.1f} s, {left:.1f} GiB left"
    return line


def write_summary(args, allocator: str, time_scale: float, settings, results: list[RunResult]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "dry_run": args.dry_run,
        "allocator": allocator,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "guard_time_scale": time_scale,
        "guard_settings": describe_settings(settings),
        "guard_settings_changed": settings_changes(settings),
        "runs": [dataclasses.asdict(r) | {"caught": r.caught} for r in results],
        "summary": summary_line(results),
    }
    (args.out / "drill_summary.json").write_text(json.dumps(summary, indent=2, default=str))


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0, help="CUDA ordinal to leak on (all are watched)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=120.0, help="time to exhaust the card at this pace")
    parser.add_argument("--step-seconds", type=float, default=0.5, help="pace: one chunk per step")
    parser.add_argument("--stands-for", type=float, default=3600.0,
                        help="seconds of real leak the drill stands for; guard durations are divided by "
                             "stands_for/seconds (see the module docstring)")
    parser.add_argument("--product-settings", action="store_true",
                        help="use the product default guard settings unscaled")
    parser.add_argument("--out", type=Path, help="write traces and drill_summary.json here")
    parser.add_argument("--dry-run", action="store_true", help="fake card and clock: no GPU needed")
    parser.add_argument("--dry-run-gpus", type=int, default=1, help="visible fake GPUs in --dry-run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    if args.dry_run:
        cards = FakeCards(args.dry_run_gpus, args.device)
        probe, leaker, clock = cards, cards, VirtualClock()
    else:
        probe = NvmlProbe()
        if not probe.read():
            raise SystemExit(f"gpu_leak_drill: no GPU to leak on ({probe.reason}); use --dry-run")
        leaker, clock = make_leaker(args.device), RealClock()

    time_scale = 1.0 if args.product_settings else args.stands_for / args.seconds
    settings = drill_settings(time_scale)
    log(f"drill: {'DRY RUN, fake card and clock; ' if args.dry_run else ''}allocator {leaker.name}, "
        f"pid {os.getpid()}, {args.runs} runs, ~{args.seconds:g} s each, step {args.step_seconds:g} s")
    if time_scale == 1:
        log("drill: guard settings: the product defaults, unchanged")
    else:
        log(f"drill: guard settings: NOT the product defaults: the drill stands for a {args.stands_for:g} s leak, "
            f"so every duration is divided by {time_scale:g}: {settings_changes(settings)}")
    log(f"drill: guard settings used: {describe_settings(settings)}")
    for reading in probe.read():
        log(f"drill: watching {reading.pool}: {reading.name} {reading.uuid}, total {reading.total_bytes / GiB:.1f} GiB, "
            f"ours {reading.process_bytes / MiB:.0f} MiB, others {reading.other_processes_bytes / MiB:.0f} MiB")

    results: list[RunResult] = []
    for k in range(1, args.runs + 1):
        results.append(one_run(k, args, settings, probe, leaker, clock, args.out, log))
        if args.out is not None:  # after every run, so a run cut short still leaves the others
            write_summary(args, leaker.name, time_scale, settings, results)

    line = summary_line(results)
    log(line)
    return 0 if all(r.caught for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
