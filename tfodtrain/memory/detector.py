"""Causal online detector of sustained memory growth, one instance per memory pool.

Readings go in one at a time; each gets an ``Assessment``: does memory grow, and when would it
reach the limit at that pace. Only past readings are used. Standard library only.

How it tells a leak from what healthy long runs do:

* Warm-up: readings of the first ``warmup_s`` seconds are ignored (allocator growth, first
  compilations and evaluations, allocator staircases).
* Readings are grouped into chunks of fixed duration; a chunk keeps its minimum (the floor) and
  its maximum. The floor ignores evaluation spikes and short sawtooth peaks.
* The trend is fitted on the floors of a sliding window with the Theil-Sen slope (the median of
  pairwise slopes: odd chunks do not move it) and tested with the Mann-Kendall trend test.
* Sustained: a one-time step up is monotonic too, so the floor must also rise from each quarter
  of the window to the next by comparable amounts. One step raises at most two of the three;
  a leak, a staircase leak with several stairs or an accelerating leak raise all three. A cache
  that fills and levels off stops rising.
* Several windows run side by side (by default 24 chunks of 1, 4 and 16 minutes: 24 minutes,
  1.6 hours and 6.4 hours). Short windows react to fast and late leaks; long ones see slow
  leaks, rare stairs and rare spikes. The growing window that runs out first speaks.
* Projection: a run dies at its peaks, not at its floor. The peak headroom is how far chunk
  maxima went above the trend line (spikes, sawtooth peaks, noise) plus, for a staircase, the
  height of a stair (the second largest jump of the floor, so that a single step does not
  count). Memory is projected to run out when floor + headroom reaches the limit, growing at
  the low end of the slope's confidence interval (``projection_confidence``), so that a barely
  significant drift near the limit does not look like a fast leak.

Cost is bounded: each window keeps at most ``window_chunks`` chunk summaries; a reading costs
O(1) per window, and closing a chunk O(n² log n) with n = ``window_chunks`` (24 by default).

Example::

    detector = TrendDetector("gpu0")
    for step, time_s, used, limit in readings:
        assessment = detector.update(step, time_s, used, limit)
    if assessment.growing:
        print(assessment.seconds_to_limit)
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Deque, List, Optional, Sequence, Tuple

DEFAULT_CHUNK_SECONDS = (60.0, 240.0, 960.0)
DEFAULT_WINDOW_CHUNKS = 24
SEGMENTS = 4  # the floor must rise from each quarter of a window to the next to be sustained


@dataclass
class Assessment:
    """What the detector concludes about one pool at one reading.

    ``steps_to_limit``, ``seconds_to_limit`` and the projected exhaustion fields are ``None``
    unless ``growing`` (and the limit is known, > 0). ``to_dict()`` is JSON-serialisable.
    """

    pool: str
    step: int
    time_s: float
    used_bytes: int
    limit_bytes: int
    ready: bool = False  # enough readings after the warm-up to judge a trend
    note: str = ""  # why not ready, in words
    growing: bool = False  # significant, sustained growth of the floor
    slope_bytes_per_step: float = 0.0  # Theil-Sen slope of the floor
    slope_bytes_per_second: float = 0.0
    slope_low_bytes_per_second: float = 0.0  # low end of its confidence interval (the projection's)
    trend_p_value: float = 1.0  # Mann-Kendall, one-sided (growth)
    trend_confidence: float = 0.0  # 1 - p
    floor_bytes: int = 0  # the floor now (trend line at this reading's time)
    peak_headroom_bytes: int = 0  # how far above the floor peaks (and a staircase's stairs) reach
    steps_to_limit: Optional[int] = None
    seconds_to_limit: Optional[float] = None
    projected_exhaustion_step: Optional[int] = None
    projected_exhaustion_time_s: Optional[float] = None
    window_seconds: float = 0.0  # size of the window that gave this assessment
    window: dict = field(default_factory=dict)  # n_chunks, n_readings, span_s, min/median/max used

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
    """The fit of one window: a line through the chunk floors, its tests, and the headroom."""

    slope_per_s: float
    slope_low_per_s: float
    intercept: float  # floor at time 0 (bytes)
    p_value: float
    sustained: bool
    headroom: float
    seconds_per_step: float
    summary: dict

    def floor_at(self, time_s: float) -> float:
        return self.intercept + self.slope_per_s * time_s


class _Window:
    """A sliding window of at most ``max_chunks`` chunk summaries, refitted when a chunk closes."""

    def __init__(self, chunk_seconds: float, max_chunks: int, min_chunks: int, sustain_ratio: float,
                 slope_z: float):
        self.chunk_seconds = float(chunk_seconds)
        self.chunks: Deque[_Chunk] = deque(maxlen=max_chunks)
        self.open: Optional[_Chunk] = None
        self.min_chunks = min_chunks
        self.sustain_ratio = sustain_ratio
        self.slope_z = slope_z
        self.slopes: List[float] = []  # sorted slopes between all pairs of chunk floors
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
            self._close(self.open)
        self.open = _Chunk.start(key, step, time_s, used)

    def _close(self, chunk: _Chunk) -> None:
        # Keep the pairwise slopes sorted as the window slides: O(n log n) per chunk instead of
        # recomputing all n² pairs.
        kept = list(self.chunks)
        if len(kept) == self.chunks.maxlen:
            oldest, kept = kept[0], kept[1:]
            for other in kept:
                _remove_sorted(self.slopes, _slope(oldest, other))
        for other in kept:
            bisect.insort(self.slopes, _slope(other, chunk))
        self.chunks.append(chunk)  # deque(maxlen) drops the oldest: bounded window
        self.trend = fit_trend(list(self.chunks), self.min_chunks, self.sustain_ratio, self.slope_z, self.slopes)


def _slope(earlier: _Chunk, later: _Chunk) -> float:
    return (float(later.min_used) - float(earlier.min_used)) / (later.min_time - earlier.min_time)


def _remove_sorted(values: List[float], value: float) -> None:
    index = bisect.bisect_left(values, value)
    if index < len(values) and values[index] == value:
        del values[index]


def fit_trend(chunks: Sequence[_Chunk], min_chunks: int, sustain_ratio: float, slope_z: float,
              slopes: Optional[List[float]] = None) -> Optional[_Trend]:
    """Theil-Sen line and Mann-Kendall test on the chunk floors; ``None`` below ``min_chunks``.

    ``slopes``: the sorted pairwise slopes of the floors, if kept up to date by the caller.
    """
    n = len(chunks)
    if n < min_chunks:
        return None
    xs = [c.min_time for c in chunks]
    ys = [float(c.min_used) for c in chunks]
    if slopes is None:
        slopes = pairwise_slopes(xs, ys)  # chunk times increase, so every pair counts
    slope, slope_low = theil_sen_slope(xs, ys, slope_z, slopes)
    intercept = _median([y - slope * x for x, y in zip(xs, ys)])
    quarters = [_median(ys[i * n // SEGMENTS:(i + 1) * n // SEGMENTS]) for i in range(SEGMENTS)]
    rises = [b - a for a, b in zip(quarters, quarters[1:])]
    sustained = min(rises) > 0 and min(rises) >= sustain_ratio * max(rises)
    peaks = max(c.max_used - (intercept + slope * c.max_time) for c in chunks)
    # A staircase dies at its next stair, so a stair's height is headroom too. A stair is a jump
    # of the floor from one chunk to the next beyond the trend; the second largest counts, so a
    # single step up (healthy) does not.
    jumps = sorted(b.min_used - a.min_used - slope * (b.min_time - a.min_time) for a, b in zip(chunks[:-1], chunks[1:]))
    stair = jumps[-2] if len(jumps) >= 2 else 0.0
    steps = chunks[-1].last_step - chunks[0].first_step
    seconds = chunks[-1].last_time - chunks[0].first_time
    summary = {"n_chunks": n, "n_readings": sum(c.count for c in chunks), "span_s": round(seconds, 2),
               "min_used_bytes": min(c.min_used for c in chunks),
               "median_floor_bytes": int(_median(ys)),
               "max_used_bytes": max(c.max_used for c in chunks)}
    return _Trend(slope, slope_low, intercept, mann_kendall_p(ys, slopes), sustained,
                  headroom=max(0.0, peaks) + max(0.0, stair),
                  seconds_per_step=seconds / steps if steps > 0 else 0.0, summary=summary)


def pairwise_slopes(xs: Sequence[float], ys: Sequence[float]) -> List[float]:
    """The slopes between all pairs of points, sorted (pairs with equal x are skipped)."""
    points = list(zip(xs, ys))
    slopes: List[float] = []
    for i, (xi, yi) in enumerate(points):
        slopes.extend([(yj - yi) / (xj - xi) for xj, yj in points[i + 1:] if xj != xi])
    slopes.sort()
    return slopes


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float], z: float = 2.326,
                    slopes: Optional[List[float]] = None) -> Tuple[float, float]:
    """Theil-Sen slope (median of the slopes between all pairs of points) and its lower
    confidence bound (Sen's rank bound: ``z`` standard errors of the Kendall statistic below).

    Example: ``theil_sen_slope([0, 1, 2, 3], [0, 1, 2, 3]) == (1.0, 1.0)``
    """
    slopes = pairwise_slopes(xs, ys) if slopes is None else slopes
    if not slopes:
        return 0.0, 0.0
    n = len(xs)
    spread = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    low_index = int((len(slopes) - spread) / 2)
    return _median_sorted(slopes), slopes[max(0, min(len(slopes) - 1, low_index))]


def mann_kendall_p(ys: Sequence[float], slopes: Optional[List[float]] = None) -> float:
    """One-sided p-value of the Mann-Kendall test for an increasing trend (normal approximation).

    ``slopes``: the sorted pairwise slopes of ``ys`` against increasing x, if already computed
    (their signs are the signs the test counts).

    Example: ``mann_kendall_p(range(24)) < 1e-9``; ``mann_kendall_p([5] * 24) == 1.0``
    """
    n = len(ys)
    if n < 3:
        return 1.0
    if slopes is None:
        slopes = pairwise_slopes(range(n), ys)
    s = len(slopes) - bisect.bisect_right(slopes, 0.0) - bisect.bisect_left(slopes, 0.0)
    # Tie correction: equal values (readings in whole MiB on a flat plateau) lower the variance.
    counts: dict = {}
    for y in ys:
        counts[y] = counts.get(y, 0) + 1
    ties = sum(t * (t - 1) * (2 * t + 5) for t in counts.values() if t > 1)
    variance = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    if s <= 0 or variance <= 0:
        return 1.0
    return 0.5 * math.erfc((s - 1) / math.sqrt(variance) / math.sqrt(2))


def _median_sorted(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return 0.0
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


class TrendDetector:
    """Online trend detector for one memory pool; call ``update`` with every reading.

    The warm-up counts from the first reading this detector sees (so a resumed run warms up
    again). If step or time goes backwards (a new process appending to the same trace), the
    detector starts over.

    Example::

        detector = TrendDetector("gpu0", warmup_s=1200)
        assessment = detector.update(step=1200, time_s=900.0, used_bytes=12 << 30, limit_bytes=80 << 30)
    """

    def __init__(self, pool: str, *, chunk_seconds: Sequence[float] = DEFAULT_CHUNK_SECONDS,
                 window_chunks: int = DEFAULT_WINDOW_CHUNKS, min_chunks: Optional[int] = None,
                 warmup_s: float = 1200.0, warmup_steps: int = 0, min_readings: int = 30,
                 alpha: float = 0.001, sustain_ratio: float = 0.2, projection_confidence: float = 0.99):
        self.pool = pool
        self.alpha = alpha
        self.warmup_s = warmup_s
        self.warmup_steps = warmup_steps
        self.min_readings = min_readings
        min_chunks = min_chunks if min_chunks is not None else max(6, window_chunks // 2)
        slope_z = statistics.NormalDist().inv_cdf(projection_confidence)
        self._window_args = (min_chunks, sustain_ratio, slope_z)
        self._chunk_seconds = tuple(chunk_seconds)
        self._window_chunks = window_chunks
        self._restart()

    def _restart(self) -> None:
        self.windows: List[_Window] = [
            _Window(seconds, self._window_chunks, *self._window_args) for seconds in self._chunk_seconds]
        self.readings = 0  # readings after the warm-up
        self._first: Optional[Tuple[int, float]] = None  # (step, time) of the first reading
        self._last: Optional[Tuple[int, float]] = None

    def update(self, step: int, time_s: float, used_bytes: int, limit_bytes: int) -> Assessment:
        """Add one reading and assess the pool from everything seen so far."""
        step, time_s, used_bytes, limit_bytes = int(step), float(time_s), int(used_bytes), int(limit_bytes)
        if self._last is not None and (step < self._last[0] or time_s < self._last[1]):
            self._restart()
        self._last = (step, time_s)
        if self._first is None:
            self._first = (step, time_s)
        base = Assessment(self.pool, step, time_s, used_bytes, limit_bytes, floor_bytes=used_bytes)
        if time_s - self._first[1] < self.warmup_s or step - self._first[0] < self.warmup_steps:
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
        # Rank the windows cheaply first; build the full assessment only for the one that speaks.
        best, best_key = None, None
        for window in self.windows:
            trend = window.trend
            if trend is None:
                continue
            growing = trend.p_value <= self.alpha and trend.sustained and trend.slope_low_per_s > 0
            seconds = self._seconds_to_limit(trend, base) if growing else math.inf
            key = (not growing, seconds, trend.p_value)  # growing first, then the sooner, then surer
            if best_key is None or key < best_key:
                best, best_key = window, key
        if best is None:
            base.note = "not enough history for a trend yet"
            return base
        return self._assessment(base, best, growing=not best_key[0], seconds=best_key[1])

    @staticmethod
    def _seconds_to_limit(trend: _Trend, base: Assessment) -> float:
        # Even the slowest growth the readings allow (the slope's lower bound) must exhaust
        # memory soon: a barely significant drift near the limit is not a fast leak.
        if base.limit_bytes <= 0:  # no known limit: nothing to project to
            return math.inf
        left = base.limit_bytes - (trend.floor_at(base.time_s) + trend.headroom)
        return max(0.0, left / trend.slope_low_per_s)

    @staticmethod
    def _assessment(base: Assessment, window: _Window, growing: bool, seconds: float) -> Assessment:
        trend = window.trend
        a = Assessment(base.pool, base.step, base.time_s, base.used_bytes, base.limit_bytes, ready=True)
        a.slope_bytes_per_second = trend.slope_per_s
        a.slope_low_bytes_per_second = trend.slope_low_per_s
        a.slope_bytes_per_step = trend.slope_per_s * trend.seconds_per_step
        a.trend_p_value = trend.p_value
        a.trend_confidence = 1.0 - trend.p_value
        a.floor_bytes = int(trend.floor_at(base.time_s))
        a.peak_headroom_bytes = int(trend.headroom)
        a.window_seconds = window.seconds
        a.window = dict(trend.summary)
        a.growing = growing
        if growing and math.isfinite(seconds):
            a.seconds_to_limit = seconds
            a.projected_exhaustion_time_s = base.time_s + seconds
            if trend.seconds_per_step > 0:
                a.steps_to_limit = int(seconds / trend.seconds_per_step)
                a.projected_exhaustion_step = base.step + a.steps_to_limit
        return a
