"""Causal online detector of sustained memory growth, one instance per memory pool.

Readings go in one at a time; every reading gets an ``Assessment`` that says whether memory grows
and when, at the present trend, it would reach the limit. Only past readings are used.

How it tells a leak from what healthy long runs do:

* Readings are grouped into chunks of fixed duration; a chunk keeps its minimum (the lower
  envelope) and its maximum. The minimum ignores evaluation spikes and the peaks of a gc
  sawtooth; the maximum says how far above the floor the run goes (the peak headroom).
* The trend is fitted on the chunk minima of a sliding window with the Theil-Sen slope (median of
  pairwise slopes: a third of the chunks can be odd without moving it) and tested with the
  Mann-Kendall trend test (a p-value).
* A one-time step up is monotonic too, so growth must also be *sustained*: the window's first,
  middle and last thirds must each sit higher than the one before, by comparable amounts. A
  single step raises only one of the two; a leak, a staircase leak over several evaluations or
  an accelerating leak raise both.
* Several windows run side by side (by default 24 chunks of 1, 4 and 16 minutes: 24 minutes,
  1.6 hours and 6.4 hours of history). Short windows react to fast and late leaks; long ones see
  slow leaks, rare stairs and rare evaluation spikes. The most urgent growing window speaks.
* Projection: memory dies at its peaks, not at its floor, so exhaustion is when the floor trend
  plus the peak headroom (the highest chunk maximum above the trend line) plus, for a staircase,
  the largest single rise of the floor, reaches the limit.

Cost is bounded: each window keeps at most ``window_chunks`` chunk summaries; a reading costs
O(1) per window and closing a chunk O(n² log n) with n = ``window_chunks`` (24 by default).

Example::

    detector = TrendDetector("gpu0")
    for step, time_s, used, limit in readings:
        assessment = detector.update(step, time_s, used, limit)
    if assessment.growing:
        print(assessment.seconds_to_limit)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Deque, List, Optional, Sequence, Tuple

DEFAULT_CHUNK_SECONDS = (60.0, 240.0, 960.0)
DEFAULT_WINDOW_CHUNKS = 24
SEGMENTS = 4  # a window's floor must rise from each quarter to the next to count as sustained


@dataclass
class Assessment:
    """What the detector concludes from the readings of one pool up to one reading.

    ``steps_to_limit``, ``seconds_to_limit`` and the projected exhaustion fields are ``None``
    unless ``growing``. Byte counts are integers; ``to_dict()`` is JSON-serialisable.
    """

    pool: str
    step: int
    time_s: float
    used_bytes: int
    limit_bytes: int
    ready: bool = False  # enough readings after the warm-up to judge a trend
    note: str = ""  # why not ready, in words ("warming up", ...)
    growing: bool = False  # sustained, significant growth of the lower envelope
    slope_bytes_per_step: float = 0.0
    slope_bytes_per_second: float = 0.0
    trend_p_value: float = 1.0  # Mann-Kendall, one-sided (growth)
    trend_confidence: float = 0.0  # 1 - p
    floor_bytes: int = 0  # the lower envelope now (trend line at this reading's time)
    peak_headroom_bytes: int = 0  # how far above the floor peaks (and stairs) reach
    steps_to_limit: Optional[int] = None
    seconds_to_limit: Optional[float] = None
    projected_exhaustion_step: Optional[int] = None
    projected_exhaustion_time_s: Optional[float] = None
    window_seconds: float = 0.0  # the window that gave this assessment (chunk seconds * chunks)
    window: dict = field(default_factory=dict)  # n, span_s, min/median/max used over the window

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Chunk:
    """Summary of the readings that fell into one chunk of time."""

    key: int
    first_step: int
    first_time: float
    last_step: int
    last_time: float
    min_used: int
    min_time: float
    max_used: int
    max_time: float
    count: int = 1

    @classmethod
    def start(cls, key: int, step: int, time_s: float, used: int) -> "_Chunk":
        return cls(key, step, time_s, step, time_s, used, time_s, used, time_s)

    def add(self, step: int, time_s: float, used: int) -> None:
        self.last_step, self.last_time = step, time_s
        self.count += 1
        if used < self.min_used:
            self.min_used, self.min_time = used, time_s
        if used > self.max_used:
            self.max_used, self.max_time = used, time_s


@dataclass
class _Trend:
    """The fit of one window: line through the chunk minima, tests, and headroom."""

    slope_per_s: float
    intercept: float  # floor at time 0 (bytes)
    p_value: float
    sustained: bool  # first, middle and last thirds rise by comparable amounts
    headroom: float  # peaks above the line, plus the largest single rise of the floor
    seconds_per_step: float
    n: int
    span_s: float
    used_min: int
    used_median: int
    used_max: int

    def floor_at(self, time_s: float) -> float:
        return self.intercept + self.slope_per_s * time_s


class _Window:
    """A sliding window of chunk summaries at one time scale, refitted when a chunk closes."""

    def __init__(self, chunk_seconds: float, max_chunks: int, min_chunks: int, sustain_ratio: float):
        self.chunk_seconds = float(chunk_seconds)
        self.chunks: Deque[_Chunk] = deque(maxlen=max_chunks)
        self.open: Optional[_Chunk] = None
        self.min_chunks = min_chunks
        self.sustain_ratio = sustain_ratio
        self.trend: Optional[_Trend] = None

    @property
    def seconds(self) -> float:
        return self.chunk_seconds * self.chunks.maxlen

    def add(self, step: int, time_s: float, used: int) -> None:
        key = int(time_s // self.chunk_seconds)
        if self.open is not None and self.open.key == key:
            self.open.add(step, time_s, used)
            return
        if self.open is not None:
            self.chunks.append(self.open)  # deque(maxlen) drops the oldest: bounded window
            self.trend = fit_trend(list(self.chunks), self.min_chunks, self.sustain_ratio)
        self.open = _Chunk.start(key, step, time_s, used)


def fit_trend(chunks: Sequence[_Chunk], min_chunks: int, sustain_ratio: float) -> Optional[_Trend]:
    """Theil-Sen line and Mann-Kendall test on the chunk minima; ``None`` below ``min_chunks``."""
    n = len(chunks)
    if n < min_chunks:
        return None
    xs = [c.min_time for c in chunks]
    ys = [float(c.min_used) for c in chunks]
    slope = theil_sen_slope(xs, ys)
    intercept = _median([y - slope * x for x, y in zip(xs, ys)])
    p_value = mann_kendall_p(ys)
    parts = [_median(ys[i * n // SEGMENTS:(i + 1) * n // SEGMENTS]) for i in range(SEGMENTS)]
    rises = [b - a for a, b in zip(parts, parts[1:])]
    sustained = min(rises) > 0 and min(rises) >= sustain_ratio * max(rises)
    peaks = max(c.max_used - (intercept + slope * c.max_time) for c in chunks)
    # A staircase dies at its next stair, so the stair height is headroom the next stair needs.
    # A stair is a rise of the floor from one chunk to the next beyond what the trend explains;
    # the second largest one counts, so that one step up alone (a healthy one-time step) does not.
    rises = sorted(b.min_used - a.min_used - slope * (b.min_time - a.min_time)
                   for a, b in zip(chunks, list(chunks)[1:]))
    stair = rises[-2] if len(rises) >= 2 else 0.0
    steps = chunks[-1].last_step - chunks[0].first_step
    seconds = chunks[-1].last_time - chunks[0].first_time
    used_sorted = sorted(c.min_used for c in chunks)
    return _Trend(
        slope_per_s=slope, intercept=intercept, p_value=p_value, sustained=sustained,
        headroom=max(0.0, peaks) + max(0.0, stair),
        seconds_per_step=seconds / steps if steps > 0 else 0.0,
        n=n, span_s=seconds, used_min=min(c.min_used for c in chunks),
        used_median=int(_median(used_sorted)), used_max=max(c.max_used for c in chunks))


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Median of the slopes between all pairs of points (pairs with equal x are skipped)."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    return _median(slopes) if slopes else 0.0


def mann_kendall_p(ys: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Kendall test for an increasing trend (normal approximation)."""
    n = len(ys)
    if n < 3:
        return 1.0
    s = 0
    for i in range(n):
        yi = ys[i]
        for j in range(i + 1, n):
            s += (ys[j] > yi) - (ys[j] < yi)
    # Tie correction: equal values (a flat plateau read in whole MiB) lower the variance.
    counts: dict = {}
    for y in ys:
        counts[y] = counts.get(y, 0) + 1
    ties = sum(t * (t - 1) * (2 * t + 5) for t in counts.values() if t > 1)
    variance = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    if variance <= 0:
        return 1.0
    z = (s - 1) / math.sqrt(variance) if s > 0 else 0.0
    return 0.5 * math.erfc(z / math.sqrt(2))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return 0.0
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


class TrendDetector:
    """Online trend detector for one memory pool; call ``update`` with every reading.

    Readings before the warm-up (``warmup_steps`` and ``warmup_s`` both passed) are ignored: the
    allocator is still growing into its working set. If step or time goes backwards (a resumed run
    writing into the same trace), the detector starts over with a new warm-up.

    Example::

        detector = TrendDetector("gpu0", warmup_s=600)
        assessment = detector.update(step=1200, time_s=900.0, used_bytes=12 << 30, limit_bytes=80 << 30)
    """

    def __init__(self, pool: str, *, chunk_seconds: Sequence[float] = DEFAULT_CHUNK_SECONDS,
                 window_chunks: int = DEFAULT_WINDOW_CHUNKS, min_chunks: Optional[int] = None,
                 warmup_steps: int = 0, warmup_s: float = 600.0, alpha: float = 0.001,
                 sustain_ratio: float = 0.2, min_readings: int = 30):
        self.pool = pool
        self.alpha = alpha
        self.warmup_steps = warmup_steps
        self.warmup_s = warmup_s
        self.min_readings = min_readings
        min_chunks = min_chunks if min_chunks is not None else max(6, window_chunks // 2)
        self._window_args = (tuple(chunk_seconds), window_chunks, min_chunks, sustain_ratio)
        self._restart()

    def _restart(self) -> None:
        chunk_seconds, window_chunks, min_chunks, sustain_ratio = self._window_args
        self.windows: List[_Window] = [
            _Window(seconds, window_chunks, min_chunks, sustain_ratio) for seconds in chunk_seconds]
        self.readings = 0  # readings after the warm-up
        self._start: Optional[Tuple[int, float]] = None  # first (step, time) of this run
        self._last: Optional[Tuple[int, float]] = None

    def update(self, step: int, time_s: float, used_bytes: int, limit_bytes: int) -> Assessment:
        """Add one reading and assess the pool from everything seen so far."""
        step, time_s, used_bytes, limit_bytes = int(step), float(time_s), int(used_bytes), int(limit_bytes)
        if self._last is not None and (step < self._last[0] or time_s < self._last[1]):
            self._restart()
        self._last = (step, time_s)
        if self._start is None:
            self._start = (step, time_s)
        base = Assessment(self.pool, step, time_s, used_bytes, limit_bytes, floor_bytes=used_bytes)
        if step < self.warmup_steps or time_s < self.warmup_s:
            base.note = "warming up"
            return base
        self.readings += 1
        for window in self.windows:
            window.add(step, time_s, used_bytes)
        if self.readings < self.min_readings:
            base.note = f"{self.readings} of {self.min_readings} readings after the warm-up"
            return base
        return self._assess(base)

    def _assess(self, base: Assessment) -> Assessment:
        best: Optional[Assessment] = None
        for window in self.windows:
            if window.trend is None:
                continue
            candidate = self._assess_window(base, window)
            if best is None or _more_urgent(candidate, best):
                best = candidate
        if best is None:
            base.note = "not enough history for a trend yet"
            return base
        return best

    def _assess_window(self, base: Assessment, window: _Window) -> Assessment:
        trend = window.trend
        a = Assessment(base.pool, base.step, base.time_s, base.used_bytes, base.limit_bytes, ready=True)
        a.slope_bytes_per_second = trend.slope_per_s
        a.slope_bytes_per_step = trend.slope_per_s * trend.seconds_per_step
        a.trend_p_value = trend.p_value
        a.trend_confidence = 1.0 - trend.p_value
        a.floor_bytes = int(trend.floor_at(base.time_s))
        a.peak_headroom_bytes = int(trend.headroom)
        a.window_seconds = window.seconds
        a.window = {"n": trend.n, "span_s": round(trend.span_s, 2), "min_used_bytes": trend.used_min,
                    "median_used_bytes": trend.used_median, "max_used_bytes": trend.used_max}
        a.growing = trend.p_value <= self.alpha and trend.sustained and trend.slope_per_s > 0
        if a.growing:
            left = base.limit_bytes - (a.floor_bytes + a.peak_headroom_bytes)
            seconds = max(0.0, left / trend.slope_per_s)
            a.seconds_to_limit = seconds
            a.projected_exhaustion_time_s = base.time_s + seconds
            if trend.seconds_per_step > 0:
                a.steps_to_limit = int(seconds / trend.seconds_per_step)
                a.projected_exhaustion_step = base.step + a.steps_to_limit
        return a


def _more_urgent(a: Assessment, b: Assessment) -> bool:
    """Growing beats not growing; among growing, the sooner exhaustion; else the lower p-value."""
    if a.growing != b.growing:
        return a.growing
    if a.growing:
        return a.seconds_to_limit < b.seconds_to_limit
    return a.trend_p_value < b.trend_p_value
