"""Generate realistic memory traces of long training runs, healthy and leaking, with labels.

The traces test the leak guard on runs it has never seen. Each is a sum of parts drawn at random
(seeded, deterministic): an allocator warm-up ramp, a plateau with slow wander, reading noise and
the shape of its kind; leaks end at the first reading at or above the limit, as a killed run's
trace does. Magnitudes follow what long object-detection runs show: limits of 16-80 GiB, noise of
a few tenths of a GiB, evaluation spikes of a few GiB, gc sawtooth with periods of minutes, and
leaks that take hours to kill the run.

Kinds (``HEALTHY_KINDS``, ``LEAK_KINDS``) and mixtures: with ``mixtures=True`` a trace may also get
noisier readings, evaluation spikes or a sawtooth on top, stray single-reading outliers, jittered
step times and evaluation pauses; ``leak_stops`` is a leak that stops by itself well below the limit
(healthy).

Example::

    traces = generate_set(60, seed=7)        # every kind at least once, then mixtures
    write_set("/tmp/unseen", traces)          # CSVs + labels.json {file: {kind, leak, oom_step}}

    python -m tfodtrain.memory.tracegen OUT_DIR --n 60 --seed 7
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from tfodtrain.memory.traces import TraceRow, write_trace
from tfodtrain.units import MIB

GIB = float(1 << 30)
HOUR = 3600.0

HEALTHY_KINDS = (
    "plateau", "allocator_staircase", "eval_spikes", "gc_sawtooth", "high_plateau", "cache_fill",
    "one_time_step", "leak_stops",
)
LEAK_KINDS = (
    "linear_leak", "late_leak", "staircase_leak", "leak_under_sawtooth", "accelerating_leak", "slow_leak",
)
ALL_KINDS = HEALTHY_KINDS + LEAK_KINDS

# A part of the memory curve: GiB added at (step, time_s).
Part = Callable[[int, float], float]


@dataclass
class GeneratedTrace:
    """One generated run: its rows and its label."""

    name: str
    kind: str
    leak: bool
    oom_step: Optional[int]
    rows: List[TraceRow] = field(repr=False)

    def label(self) -> dict:
        return {"kind": self.kind, "leak": self.leak, "oom_step": self.oom_step}


class _Run:
    """The common frame of a run: limit, pace, readings, noise, and its memory parts."""

    def __init__(self, rng: random.Random, noise_scale: float = 1.0):
        self.rng = rng
        self.limit = rng.choice((16, 24, 32, 40, 48, 64, 80))  # GiB
        self.seconds_per_step = math.exp(rng.uniform(math.log(0.15), math.log(2.0)))
        self.hours = rng.uniform(3.0, 14.0)  # planned training length
        self.total_steps = int(self.hours * HOUR / self.seconds_per_step)
        self.read_every = self._reading_interval()
        # Reading noise grows with the card: ~0.07 GiB on 24 GiB, ~0.27 GiB on 80 GiB.
        self.noise = self.limit * rng.uniform(0.0018, 0.0045) * noise_scale
        self.base = self.limit * rng.uniform(0.15, 0.65)
        self.parts: List[Part] = []
        self.outlier_rate = 0.0
        self.step_jitter = 0.0
        self.eval_pause = None  # (every_steps, seconds)
        self.kind_tags: List[str] = []
        self.peak_extra = 0.0  # GiB that spikes or sawtooth mixed in on top reach above the floor
        self._add_warmup_ramp()
        self._add_wander()

    def _reading_interval(self) -> int:
        choices = [k for k in (5, 10, 20, 25, 50, 100) if 800 <= self.total_steps / k <= 9000]
        return self.rng.choice(choices or [max(5, int(self.total_steps / 6000) // 5 * 5)])

    def steps_for(self, seconds: float) -> int:
        return max(1, int(seconds / self.seconds_per_step))

    def _add_warmup_ramp(self) -> None:
        # The allocator grows into the working set in the first minutes: base * (1 - e^(-t/tau)).
        # The base is read when the curve is drawn: shapes may move it after this part is added.
        tau = self.rng.uniform(30.0, 120.0)
        start = self.rng.uniform(0.02, 0.3)
        self.parts.append(lambda step, t: -(self.base * (1 - start)) * math.exp(-t / tau))

    def _add_wander(self) -> None:
        # Fragmentation and batch-shape changes make plateaus drift slowly by a fraction of a GiB.
        amp = self.wander = self.limit * self.rng.uniform(0.0, 0.006)  # GiB
        period = self.rng.uniform(1.0, 5.0) * HOUR
        phase = self.rng.uniform(0, 2 * math.pi)
        self.parts.append(lambda step, t: amp * math.sin(2 * math.pi * t / period + phase))

    def level(self, step: int, t: float) -> float:
        return self.base + sum(part(step, t) for part in self.parts)

    def simulate(self, until_death: bool) -> tuple[list[TraceRow], Optional[int]]:
        """Readings every ``read_every`` steps; stop at the first reading at or over the limit."""
        rng = self.rng
        rows: list[TraceRow] = []
        limit_bytes = int(self.limit * GIB)
        t = rng.uniform(8.0, 40.0)  # start-up before the first step
        step = 0
        last_step = self.total_steps * (4 if until_death else 1)
        while step + self.read_every <= last_step:
            step += self.read_every
            t += self.read_every * self.seconds_per_step * max(0.5, 1 + rng.gauss(0, self.step_jitter))
            if self.eval_pause and step % self.eval_pause[0] < self.read_every:
                t += self.eval_pause[1] * rng.uniform(0.8, 1.2)
            used = self.level(step, t) + rng.gauss(0, self.noise)
            if self.outlier_rate and rng.random() < self.outlier_rate:
                used += rng.choice((-1, 1)) * rng.uniform(4, 12) * self.noise
            used_bytes = max(MIB, int(used * GIB) // MIB * MIB)
            rows.append(TraceRow(step, round(t, 2), used_bytes, limit_bytes))
            if used_bytes >= limit_bytes:
                return rows, step
        return rows, None


# ----------------------------------------------------------------------------------------------
# Shapes. Each adds parts to the run; leak shapes aim to kill the run after `hours_to_death`.


def _headroom(run: _Run, extra: float = 0.0) -> float:
    """GiB between the plateau (plus peaks) and the limit."""
    return run.limit - run.base - extra - run.peak_extra - 4 * run.noise


def _add_eval_spikes(run: _Run, height_frac=(0.04, 0.2)) -> float:
    rng = run.rng
    every = run.steps_for(rng.uniform(10, 120) * 60)
    every = max(every, 3 * run.read_every)
    height = run.limit * rng.uniform(*height_frac)
    length = run.read_every * rng.randint(1, 4)
    if rng.random() < 0.3:  # a long evaluation: memory stays up for minutes
        length = max(length, run.steps_for(rng.uniform(60, 600)))
    every = max(every, 3 * length)
    offset = rng.randint(0, every)
    run.parts.append(lambda step, t: height if (step + offset) % every < length else 0.0)
    return height


def _add_sawtooth(run: _Run, amp_frac=(0.03, 0.1)) -> float:
    rng = run.rng
    period = max(4 * run.read_every, run.steps_for(rng.uniform(3, 40) * 60))
    amp = run.limit * rng.uniform(*amp_frac)
    offset = rng.randint(0, period)
    run.parts.append(lambda step, t: amp * (((step + offset) % period) / period))
    return amp


def _linear_leak(run: _Run, start_step: int, hours_to_death: float, reserve: float = 0.0) -> None:
    steps = run.steps_for(hours_to_death * HOUR)
    rate = max(_headroom(run, reserve), 0.05 * run.limit) / steps
    run.parts.append(lambda step, t: rate * max(0, step - start_step))


def shape_plateau(run: _Run) -> bool:
    return False


def shape_allocator_staircase(run: _Run) -> bool:
    # BFC-style region growth: a few jumps in the first quarter hour to ~40 min, then flat.
    rng = run.rng
    n = rng.randint(2, 5)
    end_s = rng.uniform(15, 40) * 60
    times = sorted(rng.uniform(300, end_s) for _ in range(n))
    total = run.base * rng.uniform(0.15, 0.45)
    weights = [rng.uniform(0.5, 1.5) for _ in range(n)]
    sizes = [total * w / sum(weights) for w in weights]
    run.parts.append(lambda step, t: -sum(s for tt, s in zip(times, sizes) if t < tt))
    return False


def shape_eval_spikes(run: _Run) -> bool:
    _add_eval_spikes(run, (0.06, 0.25))
    return False


def shape_gc_sawtooth(run: _Run) -> bool:
    _add_sawtooth(run, (0.04, 0.12))
    return False


def shape_high_plateau(run: _Run) -> bool:
    # Stable close to the limit: its noise peaks and slow wander stay below it.
    margin = max(7 * run.noise, run.limit * run.rng.uniform(0.015, 0.05)) + 2 * run.wander + run.peak_extra
    run.base = run.limit - margin
    return False


def shape_cache_fill(run: _Run) -> bool:
    rng = run.rng
    size = run.limit * rng.uniform(0.08, 0.3)
    tau = run.steps_for(rng.uniform(0.4, 3.0) * HOUR)
    run.base = min(run.base, run.limit - size - run.peak_extra - 10 * run.noise - 0.05 * run.limit)
    run.parts.append(lambda step, t: size * (1 - math.exp(-step / tau)))
    return False


def shape_one_time_step(run: _Run) -> bool:
    rng = run.rng
    at = int(run.total_steps * rng.uniform(0.15, 0.8))
    height = run.limit * rng.uniform(0.05, 0.3)
    run.base = min(run.base, run.limit - height - run.peak_extra - 10 * run.noise - 0.03 * run.limit)
    run.parts.append(lambda step, t: height if step >= at else 0.0)
    return False


def shape_leak_stops(run: _Run) -> bool:
    # A leak that stops by itself (a cache without a bound that is finally bounded, a queue that
    # drains): it stops with at least an hour and a half of its own growth left before the limit.
    rng = run.rng
    start = int(run.total_steps * rng.uniform(0.05, 0.4))
    hours_to_death = rng.uniform(2.5, 10.0)
    steps = run.steps_for(hours_to_death * HOUR)
    rate = _headroom(run) / steps
    margin_steps = run.steps_for(rng.uniform(1.5, 3.0) * HOUR)
    stop_level = min(_headroom(run) - rate * margin_steps, _headroom(run) * rng.uniform(0.2, 0.6))
    stop_level = max(stop_level, 0.02 * run.limit)
    run.parts.append(lambda step, t: min(stop_level, rate * max(0, step - start)))
    return False


def shape_linear_leak(run: _Run) -> bool:
    _linear_leak(run, run.steps_for(300), run.rng.uniform(1.5, 10.0))
    return True


def shape_late_leak(run: _Run) -> bool:
    _linear_leak(run, int(run.total_steps * run.rng.uniform(0.3, 0.7)), run.rng.uniform(1.0, 6.0))
    return True


def shape_staircase_leak(run: _Run) -> bool:
    # Memory held once per evaluation (kept detections): a stair every interval, 5-14 to death.
    rng = run.rng
    every = run.steps_for(rng.uniform(10, 60) * 60)
    stairs = rng.randint(5, 14)
    height = max(_headroom(run), 0.1 * run.limit) / stairs
    start = int(run.total_steps * rng.uniform(0.0, 0.4)) + run.steps_for(600)
    run.parts.append(lambda step, t: height * max(0, (step - start) // every + 1) if step >= start else 0.0)
    return True


def shape_leak_under_sawtooth(run: _Run) -> bool:
    amp = _add_sawtooth(run, (0.03, 0.08))
    _linear_leak(run, run.steps_for(300), run.rng.uniform(2.0, 12.0), reserve=amp)
    return True


def shape_accelerating_leak(run: _Run) -> bool:
    rng = run.rng
    start = int(run.total_steps * rng.uniform(0.05, 0.4))
    power = rng.uniform(1.5, 3.0)
    steps = run.steps_for(rng.uniform(2.0, 8.0) * HOUR)
    scale = max(_headroom(run), 0.05 * run.limit)
    run.parts.append(lambda step, t: scale * (max(0, step - start) / steps) ** power)
    return True


def shape_slow_leak(run: _Run) -> bool:
    _linear_leak(run, run.steps_for(run.rng.uniform(300, 3600)), run.rng.uniform(8.0, 16.0))
    return True


SHAPES = {name: globals()[f"shape_{name}"] for name in ALL_KINDS}


def _mix(run: _Run, kind: str) -> None:
    """Mixtures: noisier readings, spikes or sawtooth on top, outliers, jittered pace."""
    rng = run.rng
    if rng.random() < 0.35:
        run.noise *= rng.uniform(1.5, 2.5)
        run.kind_tags.append("noisy")
    if kind not in ("eval_spikes", "high_plateau") and rng.random() < 0.35:
        run.peak_extra += _add_eval_spikes(run, (0.03, 0.12))
        run.kind_tags.append("eval_spikes")
    if kind not in ("gc_sawtooth", "leak_under_sawtooth", "high_plateau") and rng.random() < 0.25:
        run.peak_extra += _add_sawtooth(run, (0.02, 0.06))
        run.kind_tags.append("gc_sawtooth")
    if rng.random() < 0.25:
        run.outlier_rate = rng.uniform(0.001, 0.01)
        run.kind_tags.append("outliers")
    if rng.random() < 0.4:
        run.step_jitter = rng.uniform(0.01, 0.1)
        run.eval_pause = (run.steps_for(rng.uniform(15, 60) * 60), rng.uniform(20, 240))
        run.kind_tags.append("jitter")


def generate_trace(kind: str, seed: int, mixtures: bool = False, name: Optional[str] = None,
                   noise_scale: float = 1.0) -> GeneratedTrace:
    """One trace of ``kind``; deterministic in (kind, seed, mixtures).

    Healthy runs are drawn again until their peaks stay clearly below the limit; leaks until they
    die, an hour into the run at the earliest (a guard cannot be asked to see sooner).
    """
    if kind not in SHAPES:
        raise ValueError(f"unknown trace kind '{kind}'; known kinds: {', '.join(ALL_KINDS)}")
    for attempt in range(200):
        rng = random.Random(f"{kind}/{seed}/{int(mixtures)}/{attempt}")
        run = _Run(rng, noise_scale)
        if mixtures:  # before the shape, so that the shape leaves room for what is mixed in
            _mix(run, kind)
        leak = SHAPES[kind](run)
        rows, oom_step = run.simulate(until_death=leak)
        if leak and oom_step is not None and rows[-1].time_s >= 3600:
            break
        # A healthy run stays clearly below the limit: its peaks do not brush it.
        margin = max(3 * run.noise, 0.0075 * run.limit) * GIB
        if not leak and oom_step is None and max(r.used_bytes for r in rows) <= rows[0].limit_bytes - margin:
            break
    else:  # pragma: no cover - the draws above always find one in practice
        raise RuntimeError(f"could not generate a {kind} trace for seed {seed}")
    label = "+".join([kind] + [tag for tag in run.kind_tags if tag != kind])
    return GeneratedTrace(name or f"{kind}_{seed}.csv", label, leak, oom_step, rows)


def generate_set(n: int, seed: int, mixtures: bool = True, noise_scale: float = 1.0) -> List[GeneratedTrace]:
    """``n`` traces: first one plain trace of every kind (while n allows), then mixtures.

    Example: ``generate_set(60, seed=1)`` gives 14 plain kinds and 46 mixtures.
    """
    rng = random.Random(seed)
    traces = []
    for i in range(n):
        plain = i < len(ALL_KINDS)
        kind = ALL_KINDS[i] if plain else rng.choice(ALL_KINDS)
        mixed = mixtures and not plain
        name = f"{i:03d}_{kind}{'_mix' if mixed else ''}.csv"
        traces.append(generate_trace(kind, seed * 100003 + i, mixtures=mixed, name=name, noise_scale=noise_scale))
    return traces


def write_set(folder: str, traces: List[GeneratedTrace]) -> str:
    """Write each trace as CSV and their labels as ``labels.json``; returns the labels path."""
    os.makedirs(folder, exist_ok=True)
    for trace in traces:
        write_trace(os.path.join(folder, trace.name), trace.rows)
    labels_path = os.path.join(folder, "labels.json")
    with open(labels_path, "w", encoding="utf-8") as f:
        json.dump({trace.name: trace.label() for trace in traces}, f, indent=1)
    return labels_path


# ----------------------------------------------------------------------------------------------
# Families: the kinds of runs the guard's defaults are judged on, by minutes as well as by hours.
# Each family is drawn on a time grid (a reading every 1-20 s), with noise of sigma up to 2.5% of
# the limit, GC sawtooth of 1-3% and evaluation spikes of 3-10% for 20-60 s every 20-40 minutes.

LEAK_FAMILIES = ("leak_3min", "leak_5min", "leak_10min", "leak_20min", "leak_60min", "leak_hours",
                 "staircase_leak", "accelerating_leak")
HEALTHY_FAMILIES = ("high_plateau", "allocator_staircase", "fragmentation_creep", "cache_fill", "eval_spikes",
                    "one_time_step")
FAMILIES = LEAK_FAMILIES + HEALTHY_FAMILIES
_FILL_MINUTES = {"leak_3min": 3, "leak_5min": 5, "leak_10min": 10, "leak_20min": 20, "leak_60min": 60}
LEAK_STARTS_S = (120.0, 1800.0, "hours")  # 2 min, 30 min, 3 h or more into the run
# How the families are drawn: (low, high) of each uniform draw. Some the families' definition fixes (noise,
# sawtooth and spike heights, spikes' length and gaps), some it leaves open (how often memory is read, the
# sawtooth's period): ``ranges=`` draws them otherwise, to see how much the guard's scores rest on them.
FAMILY_RANGES = {
    "reading_s": (1.0, 20.0),  # seconds between readings (log-uniform)
    "noise": (0.001, 0.025),  # reading noise, sigma as a share of the limit
    "sawtooth": (0.01, 0.03),  # GC sawtooth height, share of the limit (on half the traces)
    "sawtooth_period_s": (60.0, 900.0),
    "spike": (0.03, 0.10),  # evaluation spikes' height, share of the limit (on half the traces)
    "spike_s": (20.0, 60.0),  # their length
    "spike_every_s": (1200.0, 2400.0),  # the time between them
    "start_tau_s": (10.0, 90.0),  # the start's rise to its plateau: time constant (allocator, first tracing)
    "start_share": (0.05, 0.5),  # and where it begins, as a share of the plateau
}

_POSITIVE_RANGES = ("reading_s", "sawtooth_period_s", "spike_every_s", "start_tau_s")  # times: never 0


def family_ranges(overrides: Optional[dict] = None) -> dict:
    """``FAMILY_RANGES`` with ``overrides`` ({name: (low, high)}) in place; ValueError names a bad one."""
    ranges = dict(FAMILY_RANGES)
    for name, value in (overrides or {}).items():
        if name not in FAMILY_RANGES:
            raise ValueError(f"unknown family range '{name}'; known: {', '.join(FAMILY_RANGES)}")
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"family range '{name}' needs two numbers, low and high: {value!r}") from None
        if not 0 <= low <= high < math.inf or (name in _POSITIVE_RANGES and low <= 0):
            least = "0 <" if name in _POSITIVE_RANGES else "0 <="
            raise ValueError(f"family range '{name}' needs {least} low <= high: {low:g}, {high:g}")
        ranges[name] = (low, high)
    return ranges


@dataclass
class FamilyTrace(GeneratedTrace):
    """A generated run of a family, with when its leak started (None: healthy)."""

    leak_start_s: Optional[float] = None

    def label(self) -> dict:
        return {**super().label(), "leak_start_s": self.leak_start_s}


def generate_family_trace(family: str, seed: int, name: Optional[str] = None,
                          evaluation_stairs: bool = False, ranges: Optional[dict] = None) -> FamilyTrace:
    """One trace of ``family``; deterministic in (family, seed, ranges).

    ``ranges``: some of ``FAMILY_RANGES`` drawn otherwise, e.g. ``{"reading_s": (15, 30)}``.

    ``evaluation_stairs``: a staircase leak's evaluation spikes come at its stairs' interval, a fixed time
    before or after each stair (memory kept at every evaluation), instead of every 20-40 minutes. The
    families' traces were drawn so until 2026-12-01, by mistake; the detector's tests keep a few.

    Example: ``generate_family_trace("leak_3min", 7).rows[-1].used_bytes >= limit``
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown trace family '{family}'; known families: {', '.join(FAMILIES)}")
    leak = family in LEAK_FAMILIES
    drawn = family_ranges(ranges)
    for attempt in range(200):
        rng = random.Random(f"family/{family}/{seed}/{attempt}")
        trace = _draw_family(rng, family, leak, name or f"{family}_{seed}.csv", evaluation_stairs, drawn)
        if trace is not None:
            return trace
    raise RuntimeError(f"could not generate a {family} trace for seed {seed}")  # pragma: no cover


def _draw_family(rng: random.Random, family: str, leak: bool, name: str,
                 evaluation_stairs: bool, r: dict) -> Optional[FamilyTrace]:
    """One draw of ``family`` from ``rng``, with the ranges ``r`` (``family_ranges``); None: drawn again."""
    limit = rng.choice((8, 12, 16, 24, 32, 40, 48, 64, 80)) * GIB
    seconds_per_step = math.exp(rng.uniform(math.log(0.1), math.log(5.0)))
    reading_s = math.exp(rng.uniform(*(math.log(x) for x in r["reading_s"])))
    steps_per_reading = max(1, round(reading_s / seconds_per_step))
    noise = limit * rng.uniform(*r["noise"])
    base = limit * rng.uniform(0.3, 0.65)
    parts: List[Callable[[float], float]] = []  # bytes added at time t (s)
    tags: List[str] = []
    spikes_at = None  # index of the evaluation spikes in parts
    if rng.random() < 0.5:
        amp, period = limit * rng.uniform(*r["sawtooth"]), rng.uniform(*r["sawtooth_period_s"])
        parts.append(lambda t: amp * ((t % period) / period))
        tags.append("gc_sawtooth")
    if family == "eval_spikes" or rng.random() < 0.5:
        height, length = limit * rng.uniform(*r["spike"]), rng.uniform(*r["spike_s"])
        every, offset = rng.uniform(*r["spike_every_s"]), rng.uniform(0.0, 2400.0)
        spikes_at = len(parts)
        parts.append(_spikes(height, length, every, offset))
        tags.append("eval_spikes" if family != "eval_spikes" else "")
    tags = [tag for tag in tags if tag]
    leak_start = None
    hours = rng.uniform(6.0, 30.0)  # a healthy run's length
    if leak:
        start = rng.choice(LEAK_STARTS_S)
        leak_start = rng.uniform(3 * HOUR, 8 * HOUR) if start == "hours" else float(start)
        left = limit - base
        if family in _FILL_MINUTES or family == "leak_hours":
            fill_s = _FILL_MINUTES[family] * 60.0 if family in _FILL_MINUTES else rng.uniform(6, 48) * HOUR
            rate = left / fill_s
            parts.append(lambda t: rate * max(0.0, t - leak_start))
        elif family == "staircase_leak":
            stair, gap = limit * rng.uniform(0.04, 0.10), rng.uniform(120.0, 1200.0)
            if evaluation_stairs and spikes_at is not None:
                parts[spikes_at] = _spikes(height, length, gap, offset)
            parts.append(lambda t: stair * (int((t - leak_start) // gap) + 1) if t >= leak_start else 0.0)
            fill_s = gap * left / stair
        else:  # accelerating: quadratic from its start to death
            fill_s = rng.uniform(600.0, 12 * HOUR)
            parts.append(lambda t: left * (max(0.0, t - leak_start) / fill_s) ** 2)
        hours = (leak_start + 3 * fill_s) / HOUR + 1
    else:
        base = _healthy_shape(rng, family, limit, base, hours, parts)
    tau, start_frac = rng.uniform(*r["start_tau_s"]), rng.uniform(*r["start_share"])
    rows: List[TraceRow] = []
    t, step = rng.uniform(5.0, 40.0), 0
    while t < hours * HOUR:
        step += steps_per_reading
        t += steps_per_reading * seconds_per_step * max(0.5, 1 + rng.gauss(0, 0.03))
        level = base - base * (1 - start_frac) * math.exp(-t / tau) + sum(part(t) for part in parts)
        used = max(MIB, int(level + rng.gauss(0, noise)) // MIB * MIB)
        rows.append(TraceRow(step, round(t, 2), used, int(limit)))
        if used >= limit:
            break
    died = rows[-1].used_bytes >= limit
    if died != leak or (leak and rows[-1].time_s < leak_start):
        return None  # a healthy run that brushed the limit, or a leak that died before it began
    return FamilyTrace(name, "+".join([family] + tags), leak, rows[-1].step if leak else None, rows,
                       leak_start_s=round(leak_start, 2) if leak else None)


def _spikes(height: float, length: float, every: float, offset: float) -> Callable[[float], float]:
    """Evaluation spikes: ``height`` bytes for ``length`` s every ``every`` s (its own scope, so that a
    later variable of the same name in the caller cannot change them)."""
    return lambda t: height if (t + offset) % every < length else 0.0


def _healthy_shape(rng: random.Random, family: str, limit: float, base: float, hours: float,
                   parts: List[Callable[[float], float]]) -> float:
    """Adds the family's healthy shape; returns the plateau it starts from."""
    if family == "high_plateau":
        return limit * rng.uniform(0.88, 0.94)
    if family == "allocator_staircase":
        sizes = [limit * rng.uniform(0.02, 0.05) for _ in range(rng.randint(3, 6))]
        end = rng.uniform(1.0, 3.0) * HOUR
        times = sorted(rng.uniform(300.0, end) for _ in sizes)
        parts.append(lambda t: sum(s for tt, s in zip(times, sizes) if t >= tt))
        return min(base, limit * 0.88 - sum(sizes))
    if family == "fragmentation_creep":
        size, tau = limit * rng.uniform(0.10, 0.25), rng.uniform(1.0, 5.0) * HOUR
        parts.append(lambda t: size * (1 - math.exp(-t / tau)))
        return min(base, limit * 0.88 - size)
    if family == "cache_fill":
        size, fill = limit * rng.uniform(0.15, 0.30), rng.uniform(600.0, 2400.0)
        start = rng.uniform(2.0, max(2.5, hours - 2.0)) * HOUR
        parts.append(lambda t: size * min(1.0, max(0.0, (t - start) / fill)))
        return limit * rng.uniform(0.65, 0.85) - size
    if family == "one_time_step":
        height, at = limit * rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.9) * hours * HOUR
        parts.append(lambda t: height if t >= at else 0.0)
        return min(base, limit * 0.88 - height)
    return base  # eval_spikes: the spikes are the shape


def generate_families(per_family: int, seed: int, families=FAMILIES) -> List[FamilyTrace]:
    """``per_family`` traces of every family, seeds derived from ``seed``.

    Example: ``generate_families(3, seed=11)`` gives 42 traces, 24 of them leaks.
    """
    return [generate_family_trace(family, seed * 1009 + i, name=f"{family}_{seed}_{i}.csv")
            for family in families for i in range(per_family)]


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfodtrain.memory.tracegen",
        description="Write generated memory traces (CSV) and labels.json into a folder.")
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=60, help="number of traces (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--plain", action="store_true", help="no mixtures")
    parser.add_argument("--noise", type=float, default=1.0, help="reading noise multiplier (default 1)")
    parser.add_argument("--families", type=int, metavar="K",
                        help="instead: K traces of every family (fast and slow leaks, healthy runs of 6-30 h)")
    args = parser.parse_args(argv)
    if args.families:
        traces = generate_families(args.families, args.seed)
    else:
        traces = generate_set(args.n, args.seed, mixtures=not args.plain, noise_scale=args.noise)
    print(write_set(args.out_dir, traces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
