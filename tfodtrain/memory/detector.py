"""Causal online detector of sustained memory growth, one instance per memory pool.

Readings go in one at a time; each gets an ``Assessment``: does memory grow, and when would it
reach the limit at that pace. Only past readings are used. Standard library only.

How it tells a leak from what healthy long runs do:

* Start-up: readings are discounted while the floor still rises after a fast start, for two
  minutes at most (see ``TrendDetector``); it ends sooner only when the readings show the floor
  flat, not merely fail to show a rise. Readings of an explicit ``warmup_s`` are ignored (none
  by default). Fast windows of seconds-long chunks look for a new linear regime (fast leaks).
* Readings are grouped into chunks of fixed duration; a chunk keeps its minimum (the floor) and
  its maximum. The floor ignores evaluation spikes and short sawtooth peaks.
* The trend is fitted on the floors of a sliding window with the Theil-Sen slope (the median of
  pairwise slopes: odd chunks do not move it) and tested with the Mann-Kendall trend test.
* Sustained: a one-time step up is monotonic too, so the floor must also rise from each quarter
  of the window to the next by comparable amounts. One step raises at most two of the three;
  a leak, a staircase leak with several stairs or an accelerating leak raise all three. A cache
  that fills and levels off stops rising. And the floors must rise by ``LONG_RISE_SIGMAS`` of
  their own scatter, and the chunks' mean readings with them: a plateau refitted for days drifts
  significantly by chance now and then.
* Staircases (memory kept once per evaluation): stairs are also found one by one (``_Stairs``);
  two or three regular stairs that never step down are projected to die at the next stair that would
  cross the limit.
* Several windows run side by side (by default 24 chunks of 1, 4 and 16 minutes: 24 minutes,
  1.6 hours and 6.4 hours). Short windows react to fast and late leaks; long ones see slow
  leaks, rare stairs and rare spikes. The growing window that runs out first speaks.
* Projection: a run dies at its peaks, not at its floor. The peak headroom is how far chunk
  maxima went above the floors around them (spikes, sawtooth peaks, noise; a chunk holding a
  step up is measured from the floor after it) plus, for a staircase, the
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
import functools
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Deque, List, Optional, Sequence, Tuple

DEFAULT_CHUNK_SECONDS = (60.0, 240.0, 960.0)  # long windows: 24 min, 1.6 h, 6.4 h
DEFAULT_FAST_CHUNK_SECONDS = (5.0, 20.0)  # fast windows: the last 6, 12 and 24 chunks of 5 s and of 20 s
DEFAULT_WINDOW_CHUNKS = 24
LONG_WINDOW_S = 3600.0  # the policy judges growth seen over a window this long on its longer horizon
DEFAULT_STARTUP_S = 120.0  # the start-up discount ends when the floor stops rising, at the latest here
STARTUP_FLAT = 0.02  # the start-up ends early only when its readings bound the rise left to this share of the limit
SETTLE_F = 3.84  # curves that fit within this F statistic (95%, one parameter) of the best are as plausible
SETTLING_S = 600.0  # how long into a run a rise that levels off below the limit may be taken for the start
SETTLE_BIN_S = 5.0  # the first SETTLING_S of readings, averaged in bins of this many seconds, for that fit
SETTLE_PACE_Z = 4.0  # the latest bins' pace must exceed the settling curve's by this many standard errors
# (4, not 3: the test is repeated at every bin of the first SETTLING_S, and one chance excursion opened the gate)
SETTLE_JUMP_Z = 3.0  # a jump taken out of the start's bins stands out of their noise by this many sigmas
# time constants tried: 10 s to 3.8 min, and 4.7 min as no bend (allocators and first evaluations of long runs level
# off within time constants of about 2 minutes; with 2 minutes the longest tried, 3 of 12 plateaus at 88-94% of the
# limit reached with 100-150 s were aborted as fast leaks 3-4 minutes in)
SETTLE_TAUS = tuple(10.0 * 1.25 ** k for k in range(16))
SETTLE_SLOW_TAU = 10.0 * 1.25 ** 12  # a best fit bending over this slowly or slower must leave random residuals
SETTLE_RUNS_Z = 2.326  # too few runs of residuals of one sign: one-sided, 1%
SETTLE_HALF_CHUNKS = 4  # a fast window's growth slows down significantly only with this many floors in each half
SEGMENTS = 4  # the floor must rise from each quarter of a window to the next to be sustained
NOISE_PEAK_Z = 3.0  # a fast window's peaks reach at least this many noise sigmas above its trend
NOISE_REACH_S = 180.0  # and, read often, as high as the highest of this many seconds of readings (the abort horizon)
NOISE_REACH_ALPHA = 0.05  # reaches, but for this chance, above their mean (and their mean above the floors)
FAST_RISE_SIGMAS = 6.0  # a 6-chunk fast window's rise, in reading-noise sigmas, to count as a regime (less when longer)
FAST_ALPHA = 0.01  # Mann-Kendall level of a fast window: its rise and confirmations carry the rest
LONG_MEAN_ALPHA = 0.01  # a long window's chunk means must rise too (Mann-Kendall at this level)
LAG_CHUNKS = 3  # a long window's last chunks whose mean readings tell that its growth stopped,
LAG_SIGMAS = 3.0  # when they lie this many sigmas of the means' scatter below the pace of the chunks before
STALL_S = 1800.0  # a long window's growth has stalled when the mean readings of its latest half hour
STALL_MIN_CHUNKS = 6  # (at least this many chunks, at most half the window)
STALL_TAIL_CHUNKS = 15  # or when the mean readings of a finer long window's last this many chunks do
STALL_SHARE = 0.5  # rise at less than this share of its pace, at the top of their 99% band
SLOPE_Z = 2.326  # a Theil-Sen slope's confidence band: 99%, one-sided
LONG_RISE_SIGMAS = 3.0  # a long window's rise, in sigmas of its floors' scatter around the line, to count as growth
FAST_REACH_S = 10800.0  # a fast window fits only growth that would reach the limit within this (6 x warn horizon)
FAST_CONFIRMATIONS = 3  # fits in a row (on successive chunks) in which a fast window must see growth,
FAST_CONFIRM_S = 10.0  # or 2 fits this many seconds apart (sparse readings)
FAST_CONFIRM_OF = 4  # or, after the run's first SETTLING_S, FAST_CONFIRMATIONS of this many latest fits (the latest one too)
FAST_DECISIVE = 2.0  # or, after it and with readings FAST_CONFIRM_S apart, one fit rising this many times the rise required
CHANGE_FLAT_CHUNKS = 3  # a fast window's change point leaves at least this many chunks of the old level before it
CHANGE_MARGIN_SIGMAS = 1.0  # growth since a change point counts where its floor tops all before it by this many sigmas
SPIKE_BIN_S = 60.0  # a spike (an evaluation's 20-60 s) never fills two whole bins of this length
SPIKE_MEMORY_S = 7200.0  # the spikes of the last two hours count as headroom of every growing window
SPIKE_QUIET_SHARE = 0.5  # after a spike, the next is not expected before this share of the shortest gap between them
SPIKE_QUIET_GAP_S = 600.0  # (only where spikes came at least this far apart: periodic evaluations)
SPIKE_REGULAR = 0.1  # and every gap between them within this share of a whole number of the shortest (two of them of one)
SPIKE_LOOK_S = 4 * SPIKE_BIN_S  # a fast window's growth that may be a spike: readings looked back on (_spike_like)
SPIKE_LIKE_SIGMAS = 3.0  # and how far above the highest spike remembered its latest readings may stand (noise sigmas)
SPIKE_MID_SHARE = 0.5  # and the minute before them rose by less than this share of their rise since (a leak: about 1)
STAIR_BIN_S = 30.0  # stairs: bins of this length, three each side of a jump (90 s: longer than any spike)
STAIR_SIDE = 3  # bins each side of a stair, all above (after) or below (before) it
STAIR_SIGMAS = 4.0  # a stair rises by this many sigmas of the bins' means, or of readings (their lowest), and 1%
STAIR_REGULAR = 1.5  # the last (up to) three stairs: gaps and heights within this ratio of each other
STAIR_HISTORY = 200  # bins kept for the excursions above the stairs (100 minutes)


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
    total: float = 0.0  # sum of the readings (their mean: a chance drift of the floors leaves it be)
    back: List[float] = field(default_factory=list, repr=False)  # fast windows: slopes from earlier chunks, nearest first

    @classmethod
    def start(cls, key: int, step: int, time_s: float, used: int) -> "_Chunk":
        return cls(key, step, time_s, step, time_s, used, time_s, used, time_s, total=float(used))

    @property
    def mean(self) -> float:
        return self.total / self.count

    def add(self, step: int, time_s: float, used: int) -> None:
        self.last_step, self.last_time = step, time_s
        self.count += 1
        self.total += used
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
    recent_slope: float = 0.0  # Theil-Sen slope of the window's recent half
    sigma: float = 0.0  # scatter of the floors around the line (MAD, as a normal sigma)
    first_time: float = 0.0  # time of the window's first reading
    settle_s: float = math.inf  # fast: time constant of growth that slows down (inf: it does not)
    last_time: float = math.inf  # time of the last chunk's floor
    fast: bool = False  # fitted by a fast window
    stair: float = 0.0  # long: the part of the headroom that is the next stair's height
    peak_level: float = math.inf  # long: the highest readings, carried to last_time (see fit_trend)
    peak_level_fast: float = math.inf  # long: the same, carried at the faster of the two paces
    mean_p: float = 1.0  # long: Mann-Kendall p of the chunks' mean readings
    change_point: bool = False  # fast: the span begins at the window's change point (and is none of the fixed spans)
    lagging: bool = False  # long: the latest chunks' mean readings fell below the line, or stalled (_lags, _stalled)

    def floor_at(self, time_s: float) -> float:
        """The floor at ``time_s``: on the line up to the window's last chunk, then onwards at the
        slower of the line's and the recent half's pace."""
        if time_s <= self.last_time:
            return self.intercept + self.slope_per_s * time_s
        end = self.intercept + self.slope_per_s * self.last_time
        return end + min(self.slope_per_s, self.recent_slope) * (time_s - self.last_time)


class _Window:
    """A sliding window of at most ``max_chunks`` chunk summaries, refitted when a chunk closes.

    ``fast``: a window of seconds-long chunks that looks for a new linear regime (fast leaks): it
    counts the chunks that hold readings, so when readings are sparser than its chunks it holds the
    last ``max_chunks`` readings, whatever their pace.
    """

    def __init__(self, chunk_seconds: float, max_chunks: int, min_chunks: int, sustain_ratio: float,
                 slope_z: float, fast: bool = False):
        self.chunk_seconds = float(chunk_seconds)
        self.chunks: Deque[_Chunk] = deque(maxlen=max_chunks)
        self.ends: List[float] = []  # the chunks' last reading times and highest readings, in order (for
        self.highs: List[int] = []  # TrendDetector._prior_max: a bisect and a C-level max, not a loop)
        self.open: Optional[_Chunk] = None
        self.min_chunks = min_chunks
        self.sustain_ratio = sustain_ratio
        self.slope_z = slope_z
        self.fast = fast
        self.slopes: List[float] = []  # sorted slopes between all pairs of chunk floors
        self.trend: Optional[_Trend] = None
        self.trends: List[_Trend] = []  # fast: one fit per span of the latest chunks
        self.fits = 0  # fits made so far
        self.noise = 0.0  # fast: the reading noise (sigma), kept up to date by the detector
        self.limit = 0  # fast: the pool's limit (bytes; 0: unknown), kept up to date by the detector
        self.prior_max: Callable[[float], float] = lambda before: -math.inf  # fast: highest reading before a time
        self.judged_from = math.inf  # fast: when the start-up ended (set by the detector)
        self.streak, self.streak_fits = 0, 0  # fast: fits in a row that saw a new regime; the last one counted
        self.streak_since = 0.0  # fast: when the streak began
        self.seen = 0  # fast: bits of the last FAST_CONFIRM_OF fits, 1 where it saw a new regime (latest lowest)
        self.twin: Optional["_Window"] = None  # fast: a window whose fits ours equal when it holds the same readings
        self.stalled: Optional[tuple] = None  # long: (fit, finer chunk keys, verdict) of _stalled_in_finer

    @property
    def seconds(self) -> float:
        if self.fast and len(self.chunks) >= 2:
            return self.chunks[-1].last_time - self.chunks[0].first_time
        return self.chunk_seconds * self.chunks.maxlen

    def add(self, step: int, time_s: float, used: int) -> None:
        key = int(time_s // self.chunk_seconds)
        if self.open is not None and self.open.key == key:
            self.open.add(step, time_s, used)
            return
        previous = self.open.last_time if self.open is not None else (self.chunks[-1].last_time if self.chunks else None)
        if self.open is not None:
            self._close(self.open)
        self.open = _Chunk.start(key, step, time_s, used)
        if self.fast and previous is not None and time_s - previous >= self.chunk_seconds:
            # Readings sparser than the chunks: this one is a chunk by itself (the next reading
            # falls into another), so it is judged now rather than when the next one comes.
            self._close(self.open)
            self.open = None

    def _close(self, chunk: _Chunk) -> None:
        if self.fast:
            self._keep(chunk)
            self.fits += 1
            if self.twin is not None and self._same_chunks(self.twin):
                self.trends = self.twin.trends  # readings sparser than both windows' chunks: the same fits
                return
            self.trends = self._fit_spans(list(self.chunks))
            return
        # Keep the pairwise slopes sorted as the window slides: O(n log n) per chunk instead of
        # recomputing all n² pairs.
        kept = list(self.chunks)
        if len(kept) == self.chunks.maxlen:
            oldest, kept = kept[0], kept[1:]
            for other in kept:
                _remove_sorted(self.slopes, _slope(oldest, other))
        for other in kept:
            bisect.insort(self.slopes, _slope(other, chunk))
        self._keep(chunk)
        self.trend = fit_trend(list(self.chunks), self.min_chunks, self.sustain_ratio, self.slope_z, self.slopes)
        self.trends = [self.trend] if self.trend is not None else []

    def _fit_spans(self, chunks: List[_Chunk]) -> List[_Trend]:
        """A new regime may have begun a few chunks ago or many: fit the latest ``min_chunks``, twice
        and four times as many (up to the whole window), the chunks since the start-up ended (spans
        reaching into it only show settling), and the chunks since the window's change point
        (``_change_point``), each on its own. A fixed span holds part of the old level when the regime
        began between two of them: its quarters do not all rise and its Mann-Kendall test weakens, and
        a 3-minute leak read every 18 s was seen only 40-60 s before it died.

        Cheap gates first (most readings of most runs): a span that does not rise by the noise at a
        pace that could matter, or stays below ground already covered, is not fitted. Of the rest,
        a span whose floors show no significant trend (Mann-Kendall) cannot hold a new regime and
        is not fitted either, except the one the settling check reads: the longest since the
        start-up (the shortest, while none starts after it).
        """
        spans = {min(len(chunks), self.min_chunks * k) for k in (1, 2, 4)}
        fixed, changed = set(spans), _change_point(chunks, self.min_chunks)
        if changed is not None and chunks[-1].last_time - chunks[-changed].first_time >= SPIKE_BIN_S:
            spans.add(changed)  # a shorter rise since the change may be an evaluation spike's edge
        since = len(chunks) if chunks[0].first_time >= self.judged_from else \
            sum(1 for c in chunks if c.first_time >= self.judged_from)
        spans = sorted(span for span in spans | ({since} if since < len(chunks) else set())
                       if span >= self.min_chunks and _rises(chunks[-span:], self.noise, self.limit)
                       and self._reaches_new_territory(chunks[-span:]))
        judged = [span for span in spans if chunks[-span].first_time >= self.judged_from]
        settles = judged[-1] if judged else (spans[0] if spans else None)
        trends = []
        for span in spans:
            part = chunks[-span:]
            slopes = _kept_slopes(part)
            if span != settles and mann_kendall_p([c.min_used for c in part], slopes) > FAST_ALPHA:
                continue
            trend = fit_trend(part, self.min_chunks, self.sustain_ratio, self.slope_z, slopes, fast=True)
            trend.change_point = span == changed and span not in fixed
            trends.append(trend)
        return trends

    def _keep(self, chunk: _Chunk) -> None:
        if len(self.chunks) == self.chunks.maxlen:
            del self.ends[0], self.highs[0]
        self.chunks.append(chunk)  # deque(maxlen) drops the oldest: bounded window
        self.ends.append(chunk.last_time)
        self.highs.append(chunk.max_used)

    def high_before(self, before: float) -> float:
        """The highest reading of the chunks that ended before ``before`` (-inf: none)."""
        return max(self.highs[:bisect.bisect_left(self.ends, before)], default=-math.inf)

    def _reaches_new_territory(self, chunks: Sequence[_Chunk]) -> bool:
        """Cheap gate before a fast fit: growth counts only in new territory (see
        ``TrendDetector._new_territory``), so the span's last readings must come near the highest
        reading before it (a sawtooth's ramp inside ground already covered is not fitted)."""
        recent = max(c.max_used for c in chunks[-max(1, len(chunks) // 3):])
        return recent > self.prior_max(chunks[0].first_time) - 5.0 * self.noise

    def _same_chunks(self, other: "_Window") -> bool:
        """Both windows hold the same readings grouped alike (the same first and last reading per
        chunk), so their fits are the same."""
        if len(other.chunks) != len(self.chunks) or other.chunks[0].first_time != self.chunks[0].first_time \
                or other.chunks[-1].first_time != self.chunks[-1].first_time:
            return False
        return other.judged_from == self.judged_from and all(
            a.first_time == b.first_time and a.last_time == b.last_time for a, b in zip(other.chunks, self.chunks))


def _rises(chunks: Sequence[_Chunk], noise: float, limit: int = 0) -> bool:
    """Cheap gate before a fast fit: the span's last third lies above its first third by the noise,
    at a pace that would reach the limit within ``FAST_REACH_S`` (slower growth is the long
    windows' to judge; a fast window's projection could not come near the guard's horizons)."""
    third = max(1, len(chunks) // 3)
    rise = _median([c.min_used for c in chunks[-third:]]) - _median([c.min_used for c in chunks[:third]])
    if rise < noise:
        return False
    if limit <= 0:
        return True
    # chunk times increase: their medians need no sort
    elapsed = _median_sorted([c.min_time for c in chunks[-third:]]) - _median_sorted([c.min_time for c in chunks[:third]])
    left = limit - chunks[-1].min_used
    return elapsed <= 0 or left <= 0 or left / (rise / elapsed) <= FAST_REACH_S


def _change_point(chunks: Sequence[_Chunk], min_span: int) -> Optional[int]:
    """The span (chunks from the end) since a fast window's most likely change point: the split that
    fits the floors best (least squares) as a level, then a line of its own. The level keeps at least
    ``CHANGE_FLAT_CHUNKS`` chunks, the line ``min_span``; ``None`` when the window is too short for both.
    Running sums make it linear in the window's chunks."""
    n = len(chunks)
    if n < min_span + CHANGE_FLAT_CHUNKS:
        return None
    origin, level = chunks[0].min_time, float(chunks[0].min_used)  # small sums: squares of bytes lose digits
    xs = [c.min_time - origin for c in chunks]
    ys = [c.min_used - level for c in chunks]
    after = [(0, 0.0, 0.0, 0.0, 0.0, 0.0)] * (n + 1)  # count and sums of x, y, xx, xy, yy from index i on
    for i in range(n - 1, -1, -1):
        m, sx, sy, sxx, sxy, syy = after[i + 1]
        x, y = xs[i], ys[i]
        after[i] = (m + 1, sx + x, sy + y, sxx + x * x, sxy + x * y, syy + y * y)
    best, split = math.inf, None
    sy_before = syy_before = 0.0
    for k in range(n - min_span + 1):
        if k >= CHANGE_FLAT_CHUNKS:
            m, sx, sy, sxx, sxy, syy = after[k]
            vxx, vxy = sxx - sx * sx / m, sxy - sx * sy / m
            if vxx > 0:
                sse = (syy - sy * sy / m) - vxy * vxy / vxx + (syy_before - sy_before * sy_before / k)
                if sse < best:
                    best, split = sse, k
        sy_before += ys[k]
        syy_before += ys[k] * ys[k]
    return None if split is None else n - split


def _too_few_runs(residuals: Sequence[float]) -> bool:
    """Wald-Wolfowitz: the residuals' signs change in fewer runs than chance allows (``SETTLE_RUNS_Z``): the
    curve misses a shape in the readings."""
    signs = [r > 0 for r in residuals if r != 0]
    up = sum(signs)
    down = len(signs) - up
    if up == 0 or down == 0:
        return len(signs) >= 8
    n = up + down
    runs = 1 + sum(a != b for a, b in zip(signs, signs[1:]))
    mean = 2.0 * up * down / n + 1.0
    var = 2.0 * up * down * (2.0 * up * down - n) / (n * n * (n - 1.0))
    return var > 0 and (runs - mean) / math.sqrt(var) < -SETTLE_RUNS_Z


def _rise(trend: _Trend) -> float:
    """A fit's rise over its span, in bytes."""
    return trend.slope_per_s * trend.summary["span_s"]


def _rise_required(trend: _Trend, noise: float) -> float:
    """The rise a fast window's fit must show to count as a regime: ``FAST_RISE_SIGMAS`` reading-noise
    sigmas over 6 chunks, fewer over more (a few readings climb a couple of sigmas by chance)."""
    return FAST_RISE_SIGMAS * math.sqrt(6.0 / trend.summary["n_chunks"]) * noise


def _slope(earlier: _Chunk, later: _Chunk) -> float:
    return (float(later.min_used) - float(earlier.min_used)) / (later.min_time - earlier.min_time)


def _remove_sorted(values: List[float], value: float) -> None:
    index = bisect.bisect_left(values, value)
    if index < len(values) and values[index] == value:
        del values[index]


def _long_peaks(chunks: Sequence[_Chunk], xs: Sequence[float], ys: Sequence[float], slope: float,
                skip: Callable[[_Chunk], bool] = lambda c: False) -> float:
    """How far a long window's readings reach above the floor around them (the median floor of a
    chunk and its neighbours, carried along the slope), not above the window's line: a line that lags
    a change of pace (a cache starting to fill) would count the lag as peaks. A chunk that holds a
    one-time step up reaches the floor after it, which is no peak: its floor is the higher of the
    medians centred on it and on the chunk after it. Chunks that ``skip`` names reach nothing."""
    n = len(chunks)

    def floor_near(c: _Chunk, lo: int, hi: int) -> float:
        return _median([ys[j] + slope * (c.max_time - xs[j]) for j in range(max(0, lo), min(n, hi))])
    return max([c.max_used - max(floor_near(c, i - 1, i + 2), floor_near(c, i, i + 3))
                for i, c in enumerate(chunks) if not skip(c)] + [-math.inf])


def _peak_levels(chunks: Sequence[_Chunk], slope: float, recent_slope: float, last_time: float,
                 skip: Callable[[_Chunk], bool] = lambda c: False) -> Tuple[float, float]:
    """A long window's highest readings, carried to its end at the slower of the line's and the
    recent half's pace (a cache that stopped filling keeps its peaks where they were), and at the
    faster of the two (for a window whose recent half rises faster: see ``_headroom``)."""
    kept = [c for c in chunks if not skip(c)] or list(chunks[-1:])
    low, high = min(slope, recent_slope), max(slope, recent_slope)
    return (max(c.max_used + low * (last_time - c.max_time) for c in kept),
            max(c.max_used + high * (last_time - c.max_time) for c in kept))


def fit_trend(chunks: Sequence[_Chunk], min_chunks: int, sustain_ratio: float, slope_z: float,
              slopes: Optional[List[float]] = None, fast: bool = False) -> Optional[_Trend]:
    """Theil-Sen line and Mann-Kendall test on the chunk floors; ``None`` below ``min_chunks``.

    ``slopes``: the sorted pairwise slopes of the floors, if kept up to date by the caller (a fast
    window's chunks carry their own, see ``_kept_slopes``).
    ``fast``: a fast window's headroom is its noise peaks (at least ``NOISE_PEAK_Z`` sigmas of the
    floors around the line), without the stair term of the long windows.
    """
    n = len(chunks)
    if n < min_chunks:
        return None
    xs = [c.min_time for c in chunks]
    ys = [float(c.min_used) for c in chunks]
    if slopes is None:
        # chunk times increase, so every pair counts
        slopes = _kept_slopes(chunks) if fast else pairwise_slopes(xs, ys)
    slope, slope_low = theil_sen_slope(xs, ys, slope_z, slopes)
    residuals = [y - slope * x for x, y in zip(xs, ys)]
    intercept = _median(residuals)
    quarters = [_median(ys[i * n // SEGMENTS:(i + 1) * n // SEGMENTS]) for i in range(SEGMENTS)]
    rises = [b - a for a, b in zip(quarters, quarters[1:])]
    sustained = min(rises) > 0 and min(rises) >= sustain_ratio * max(rises)
    if fast and sustained:
        sustained = _grows_without_its_largest_jump(xs, ys, slope)
    if fast:
        peaks = max(c.max_used - (intercept + slope * c.max_time) for c in chunks)
    else:
        peaks = _long_peaks(chunks, xs, ys, slope)
    # Scatter of the floors around the line (MAD): the noise a fast window's projection must clear.
    sigma = _mad_sigma(residuals)  # intercept is their median
    if fast:
        stair = 0.0
        peaks = max(peaks, NOISE_PEAK_Z * sigma)  # reported; the projection uses the reading noise
    else:
        # A staircase dies at its next stair, so a stair's height is headroom too. A stair is a jump
        # of the floor from one chunk to the next beyond the trend; the second largest counts, so a
        # single step up (healthy) does not.
        jumps = sorted(b.min_used - a.min_used - slope * (b.min_time - a.min_time)
                       for a, b in zip(chunks[:-1], chunks[1:]))
        # Chunk floors jump by noise too: only what stands out of their usual jumps is a stair.
        spread = _mad_sigma(jumps)
        stair = jumps[-2] - 3.0 * spread if len(jumps) >= 2 else 0.0
    # Growth that slows down (a cache filling up, fragmentation levelling off, the allocator's
    # start) is projected at the pace of the window's recent half, when that is slower.
    half = n // 2
    recent_slopes = _kept_slopes(chunks[half:]) if fast else None
    recent_slope = theil_sen_slope(xs[half:], ys[half:], slope_z, recent_slopes)[0] if n - half >= 3 else slope
    # A fast window whose growth slows down (an allocator filling its working set, a cache nearly
    # full) approaches a level: its time constant, from the slopes of its two halves.
    # Only a significant slow-down counts (the recent half's slope lies above the early half's
    # nowhere in their confidence bands): a sawtooth's phases tilt the halves of a leak's span by
    # chance, and a leak taken for settling is projected never to arrive. Each half needs
    # SETTLE_HALF_CHUNKS floors: the band of three is their slopes' whole range, which holds the
    # true slope only two times in three.
    settle_s = math.inf
    if fast and half >= SETTLE_HALF_CHUNKS and recent_slope > 0:  # the recent half has at least as many
        early_slopes = _kept_slopes(chunks[:half])
        early = _median_sorted(early_slopes)
        if 0 < recent_slope < early and _band(recent_slopes, n - half, slope_z)[1] < _band(early_slopes, half, slope_z)[0]:
            settle_s = (_median(xs[half:]) - _median(xs[:half])) / math.log(early / recent_slope)
            # the recent half's slope holds at its middle; by its end it has slowed down further
            recent_slope *= math.exp(-(xs[-1] - _median(xs[half:])) / settle_s)
    # The floor now: the line, unless the latest floors, carried forward at the recent pace, lie
    # below it (a curve bending over).
    last_time = xs[-1]
    recent_floor = _median([y + min(slope, recent_slope) * (last_time - x) for x, y in zip(xs[-3:], ys[-3:])]) \
        - slope * last_time
    # The floor now: the line, unless the latest floors lie below it (a curve bending over).
    steps = chunks[-1].last_step - chunks[0].first_step
    seconds = chunks[-1].last_time - chunks[0].first_time
    summary = {"n_chunks": n, "n_readings": sum(c.count for c in chunks), "span_s": round(seconds, 2),
               "min_used_bytes": min(c.min_used for c in chunks),
               "median_floor_bytes": int(_median(ys)),
               "max_used_bytes": max(c.max_used for c in chunks)}
    peak_level, peak_level_fast = (math.inf, math.inf) if fast else _peak_levels(chunks, slope, recent_slope, last_time)
    return _Trend(slope, slope_low, min(intercept, recent_floor), mann_kendall_p(ys, slopes), sustained,
                  headroom=max(0.0, peaks) + max(0.0, stair),
                  seconds_per_step=seconds / steps if steps > 0 else 0.0, summary=summary,
                  recent_slope=recent_slope, sigma=sigma, first_time=chunks[0].first_time, settle_s=settle_s,
                  last_time=last_time, fast=fast, stair=max(0.0, stair), peak_level=peak_level,
                  peak_level_fast=peak_level_fast,
                  mean_p=1.0 if fast else mann_kendall_p([c.mean for c in chunks]),
                  lagging=not fast and (_lags(chunks) or _stalled(chunks, slope)))


def _lags(chunks: Sequence[_Chunk]) -> bool:
    """A long window's growth has stopped: the mean readings of its last ``LAG_CHUNKS`` chunks lie below
    the line of the ``2 * LAG_CHUNKS`` chunks before them, carried on, by ``LAG_SIGMAS`` of the means'
    scatter (around that line, and from chunk to chunk) and by half a chunk's progress. A cache that
    stops filling leaves its pace at once, while the window's line, fitted over many chunks, goes on at
    the filling pace; a chunk's mean scatters by a fraction of one reading's noise, so a few chunks
    tell. A leak's means keep its pace."""
    if len(chunks) < 3 * LAG_CHUNKS:
        return False
    xs = [(c.first_time + c.last_time) / 2.0 for c in chunks[-3 * LAG_CHUNKS:]]
    means = [c.mean for c in chunks]
    ys = means[-3 * LAG_CHUNKS:]
    slope = theil_sen_slope(xs[:-LAG_CHUNKS], ys[:-LAG_CHUNKS])[0]
    residuals = [y - slope * x for x, y in zip(xs, ys)]
    offset = _median(residuals[:-LAG_CHUNKS])
    spread = max(_mad_sigma(residuals[:-LAG_CHUNKS]), _sigma_of_changes([b - a for a, b in zip(means, means[1:])]))
    behind = _median(residuals[-LAG_CHUNKS:]) - offset
    # and by half a chunk's progress at that pace: a leak's pace wavers a little, a cache's stops
    base = xs[:-LAG_CHUNKS]
    return behind < -max(LAG_SIGMAS * spread, 0.5 * slope * (base[-1] - base[0]) / (len(base) - 1))


def _stalled(chunks: Sequence[_Chunk], slope: float) -> bool:
    """A long window's growth stalled a while ago: over its last ``STALL_S`` (at least ``STALL_MIN_CHUNKS``
    chunks, at most half the window) the chunks' mean readings rise, at the top of their 99% band, at less than
    ``STALL_SHARE`` of the window's pace ``slope``. An allocator's staircase that ended half an hour ago still
    lifts the line of a 96-minute or 6-hour window, and near the limit its stairs and peaks were projected
    past it; ``_lags`` sees only a stop within the last few chunks. A leak's latest half hour keeps its pace (a
    staircase leak's holds a stair: its gaps are shorter)."""
    last = chunks[-1].last_time
    tail = [c for c in chunks if c.first_time >= last - STALL_S]
    if len(tail) < STALL_MIN_CHUNKS:
        tail = list(chunks[-STALL_MIN_CHUNKS:])
        if last - tail[0].first_time < STALL_S:
            return False
    if len(tail) > len(chunks) // 2:
        return False
    return _rises_slower(tail, slope)


def _rises_slower(chunks: Sequence[_Chunk], slope: float) -> bool:
    """The chunks' mean readings rise, at the top of their 99% band, at less than ``STALL_SHARE`` of ``slope``."""
    xs = [(c.first_time + c.last_time) / 2.0 for c in chunks]
    high = _band(pairwise_slopes(xs, [c.mean for c in chunks]), len(xs), SLOPE_Z)[1]
    return high < STALL_SHARE * slope


def _kept_slopes(chunks: Sequence[_Chunk]) -> List[float]:
    """The sorted pairwise slopes of consecutive chunks. Each chunk keeps the slopes from the chunks
    before it, nearest first, computed once when a fit first needs them (a chunk's predecessors
    stay the same while it is in the window), so the fits of successive chunks share them."""
    slopes: List[float] = []
    for j, chunk in enumerate(chunks[1:], 1):
        have = len(chunk.back)
        if have < j:
            chunk.back.extend(_slope(other, chunk) for other in reversed(chunks[:j - have]))
        slopes.extend(chunk.back[:j])
    slopes.sort()
    return slopes


def _grows_without_its_largest_jump(xs: Sequence[float], ys: Sequence[float], slope: float) -> bool:
    """A single jump (a one-time step, the start of an evaluation spike) is not a new regime:
    take the largest jump of the floor out, and what is left must still grow (Mann-Kendall at
    p <= 0.01). A staircase of several stairs or a ramp still does."""
    jumps = [(y1 - y0) - slope * (x1 - x0) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])]
    at = max(range(len(jumps)), key=jumps.__getitem__)
    height = ys[at + 1] - ys[at]
    if height <= 0:
        return True
    flattened = [y - height if i > at else y for i, y in enumerate(ys)]
    return mann_kendall_p(flattened) <= 0.01


def pairwise_slopes(xs: Sequence[float], ys: Sequence[float]) -> List[float]:
    """The slopes between all pairs of points, sorted (pairs with equal x are skipped)."""
    points = list(zip(xs, ys))
    slopes: List[float] = []
    for i, (xi, yi) in enumerate(points):
        slopes.extend([(yj - yi) / (xj - xi) for xj, yj in points[i + 1:] if xj != xi])
    slopes.sort()
    return slopes


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float], z: float = SLOPE_Z,
                    slopes: Optional[List[float]] = None) -> Tuple[float, float]:
    """Theil-Sen slope (median of the slopes between all pairs of points) and its lower
    confidence bound (Sen's rank bound: ``z`` standard errors of the Kendall statistic below).

    Example: ``theil_sen_slope([0, 1, 2, 3], [0, 1, 2, 3]) == (1.0, 1.0)``
    """
    slopes = pairwise_slopes(xs, ys) if slopes is None else slopes
    if not slopes:
        return 0.0, 0.0
    return _median_sorted(slopes), _band(slopes, len(xs), z)[0]


def _band(slopes: Sequence[float], n: int, z: float) -> Tuple[float, float]:
    """Sen's confidence band of the Theil-Sen slope of ``n`` points from their sorted pairwise
    ``slopes``: ``z`` standard errors of the Kendall statistic either side of the median."""
    spread = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    low_index = max(0, min(len(slopes) - 1, int((len(slopes) - spread) / 2)))
    return slopes[low_index], slopes[len(slopes) - 1 - low_index]


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
    ties = 0
    if len(set(ys)) < n:
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


def _sigma_of_changes(changes: Sequence[float]) -> float:
    """Sigma of one value from the changes between successive values: their MAD (a steady trend and
    rare jumps do not move it), over sqrt(2) (a change is the difference of two noisy values)."""
    return _mad_sigma(changes) / math.sqrt(2.0)


def _mad_sigma(values: Sequence[float]) -> float:
    """A robust sigma of ``values``: their median absolute deviation, as a normal sigma (0 when none)."""
    center = _median(values)
    return 1.4826 * _median([abs(v - center) for v in values])


def _noise_reach(readings: int, chunks: int, span_s: float) -> float:
    """How many noise sigmas a fast window's readings may reach above its line of chunk floors over the next
    ``NOISE_REACH_S``: a floor is the lowest of a chunk's readings, below their mean by the expected least of
    that many normal draws (Blom); and the highest of the readings to come stands above their mean, but for a
    chance of ``NOISE_REACH_ALPHA``, by the normal quantile of 1 - alpha / their number. Readings every second
    reach 4.6-5.3 sigmas above the floors of 5-20 s chunks; every 5 s or rarer, 3 (``NOISE_PEAK_Z``) or less."""
    coming = NOISE_REACH_S * (readings - 1) / span_s if span_s > 0 and readings > 1 else 1.0
    return _reach_sigmas(round(readings / max(1, chunks), 1), max(1, round(coming)))


@functools.lru_cache(maxsize=4096)
def _reach_sigmas(per_chunk: float, coming: int) -> float:
    normal = statistics.NormalDist()
    return normal.inv_cdf((per_chunk - 0.375) / (per_chunk + 0.25)) + normal.inv_cdf(1.0 - NOISE_REACH_ALPHA / coming)


def _window_seconds(window: "_Window", trend: _Trend) -> float:
    """The span an assessment reports, and the policy picks its horizon by: a fast window's fit, a long window's size."""
    return trend.summary["span_s"] if window.fast else window.seconds


def _median(values: Sequence[float]) -> float:
    return _median_sorted(sorted(values)) if values else 0.0


class _Spikes:
    """The highest spike of the last ``SPIKE_MEMORY_S``: evaluations come every 20-40 minutes, so a
    window often holds none, and a leak dies at the next one before its floor reaches the limit.

    A ``SPIKE_BIN_S`` bin's spike height is its highest reading above the higher of its neighbours'
    lowest (a step up or steady growth lifts the next bin's floor with it; a spike comes back down),
    and no more than its rise above the previous bin's highest (a GC sawtooth counts one bin of its
    slow ramp, not its whole tooth). Cost: a few comparisons per reading, one height per bin."""

    def __init__(self) -> None:
        self.bins: Deque[_Chunk] = deque(maxlen=3)
        self.excess: Deque[Tuple[float, float]] = deque()  # (time, height)
        self.told: Deque[Tuple[float, float]] = deque(maxlen=64)  # (time, height) of spikes the run reported
        self._height: Optional[float] = None
        self._quiet: Tuple[float, Optional[float], List[float]] = (math.nan, None, [])  # (time asked, quiet())

    def _forget(self, height: bool = True) -> None:
        """Drop the memos: the highest spike (when a bin's height comes or goes) and ``quiet``'s answer."""
        if height:
            self._height = None
        self._quiet = (math.nan, None, [])

    def add(self, step: int, time_s: float, used: int) -> None:
        key = int(time_s // SPIKE_BIN_S)
        if self.bins and self.bins[-1].key == key:
            self.bins[-1].add(step, time_s, used)
            return
        if len(self.bins) == 3:  # the middle bin has both neighbours now
            before, middle, after = self.bins
            height = min(middle.max_used - max(before.min_used, after.min_used), middle.max_used - before.max_used)
            self.excess.append((middle.last_time, height))
            self._forget()
        self.bins.append(_Chunk.start(key, step, time_s, used))
        while self.excess and self.excess[0][0] < time_s - SPIKE_MEMORY_S:
            self.excess.popleft()
            self._forget()

    def height(self) -> float:
        """The highest spike remembered, in bytes (0 when none)."""
        if self._height is None:
            self._height = max([h for _, h in self.excess] + [0.0])
        return self._height

    def tell(self, time_s: float, height: float) -> None:
        """A spike the run itself reports (an evaluation): its height above the readings before it."""
        self.told.append((time_s, float(height)))
        self._forget(height=False)

    def headroom(self, time_s: float) -> float:
        """The highest spike of the last ``SPIKE_MEMORY_S``, seen in the readings or told by the run."""
        while self.told and self.told[0][0] < time_s - SPIKE_MEMORY_S:
            self.told.popleft()
        return max([self.height()] + [h for _, h in self.told])

    def events(self, time_s: float) -> Optional[List[float]]:
        """When the spikes of the highest's kind came (within half its height), in order; one spike
        read in two neighbouring bins, or read and told, is one. None where such readings stood
        high for longer than two bins: a rise under noise, no spike."""
        highest = self.headroom(time_s)
        if highest <= 0:
            return []
        times = sorted(t for t, h in list(self.excess) + list(self.told) if h >= 0.5 * highest)
        events: List[Tuple[float, float]] = []  # (first, last)
        for t in times:
            if events and t - events[-1][1] <= 3 * SPIKE_BIN_S:
                events[-1] = (events[-1][0], t)
            else:
                events.append((t, t))
        if any(last - first > 1.5 * SPIKE_BIN_S for first, last in events):
            return None
        return [last for _, last in events]

    def quiet_until(self, time_s: float) -> Optional[float]:
        """``quiet``'s first half."""
        return self.quiet(time_s)[0]

    def quiet(self, time_s: float) -> Tuple[Optional[float], List[float]]:
        """When the next spike of the highest's kind may come at the earliest (None: any time).

        Evaluations come at a fixed interval. Where spikes came at one, at least ``SPIKE_QUIET_GAP_S``
        apart (the shortest gap seen twice, every gap within ``SPIKE_REGULAR`` of a whole number of it:
        a spike missed between two others makes a gap twice as long), the next is not due before
        ``SPIKE_QUIET_SHARE`` of the shortest gap after the last (half: were every other spike missed,
        the true interval is half the shortest seen). Spikes at no such interval, a sawtooth's or
        noise's among them, or a rise under noise read as spikes in three bins or more (``events``),
        leave no time quiet. Second: the spikes' times (``events``) it was judged on.

        Asked once per growing window's fit: judged once per reading."""
        if self._quiet[0] == time_s:
            return self._quiet[1], self._quiet[2]
        events, quiet = self.events(time_s) or [], None
        gaps = [b - a for a, b in zip(events, events[1:])]
        if len(gaps) >= 2 and min(gaps) >= SPIKE_QUIET_GAP_S:
            gap = min(gaps)
            ratios = [g / gap for g in gaps]
            if sum(r <= 1 + SPIKE_REGULAR for r in ratios) >= 2 and all(abs(r - round(r)) <= SPIKE_REGULAR for r in ratios):
                quiet = events[-1] + SPIKE_QUIET_SHARE * gap - SPIKE_BIN_S
        self._quiet = (time_s, quiet, events)
        return quiet, events


class _Stairs:
    """A staircase leak (memory held once per evaluation, every few minutes): the floor steps up by
    about the same height at about the same interval, and the run dies at the stair that crosses the
    limit. A window's line and its quarters judge stairs that are rare within it badly (a quarter
    may hold none), so the stairs are found one by one and projected as stairs.

    A stair is a jump between two runs of ``STAIR_SIDE`` bins of ``STAIR_BIN_S``, each run flat within
    half the jump (a ramp, a cache filling, is not flat; a spike is shorter than a run), of the bins'
    mean readings (they scatter less than one reading) or of their lowest (a spike or a GC tooth that
    comes with every stair lifts the means of the bins that hold it, not their lowest). The last two
    or three stairs, their gaps and heights agreeing within ``STAIR_REGULAR``, make a staircase (two:
    the first stair of a leak that starts with the run falls inside the start-up; a gap about twice
    the other counts as two, a stair between them not found under noise or a sawtooth). It is
    projected to die at its next stair when the level now, plus the smallest of their heights, plus
    the highest the readings went above their stair's level since the first of them (or the highest
    spike of the last two hours, if higher), reaches the limit; or when two more stairs, plus that
    excursion, reach it: the run cannot outlive the stair after next, and after the next one a
    reading a little higher than any before (or a spike) kills it (aborted one stair early, a leak
    loses nothing). It dies now when the level plus that excursion (or spike) reaches the limit
    without another stair. A stair overdue by half a gap ends the staircase (an allocator's stairs
    stop).
    Cost: a few comparisons per reading; a bin's close looks at seven bins."""

    def __init__(self) -> None:
        self.bins: Deque[_Chunk] = deque(maxlen=2 * STAIR_SIDE + 1)
        # closed bins: (time, lowest, highest, mean reading)
        self.history: Deque[Tuple[float, int, int, float]] = deque(maxlen=STAIR_HISTORY)
        self.stairs: Deque[Tuple[float, float, float, float]] = deque(maxlen=3)  # (time, height, level after, before)
        self.plan: Optional[dict] = None  # the staircase as of the last closed bin
        self.mean_changes: Deque[float] = deque(maxlen=64)  # bin-to-bin changes of the mean reading (their noise)

    def add(self, step: int, time_s: float, used: int, noise: float, limit: int) -> None:
        key = int(time_s // STAIR_BIN_S)
        if self.bins and self.bins[-1].key == key:
            self.bins[-1].add(step, time_s, used)
            return
        if self.bins:
            closed = self.bins[-1]
            if self.history:
                self.mean_changes.append(closed.mean - self.history[-1][3])
            self.history.append((closed.last_time, closed.min_used, closed.max_used, closed.mean))
            if len(self.bins) == self.bins.maxlen:
                self._find_stair(noise, limit)
            self.plan = self._plan(limit)
        self.bins.append(_Chunk.start(key, step, time_s, used))

    def _find_stair(self, noise: float, limit: int) -> None:
        # A stair is measured on the readings it was found on: where a spike before it lifted the means
        # (so it was found on the lowest readings), their medians understate its height.
        means, lows = [b.mean for b in self.bins], [float(b.min_used) for b in self.bins]
        if _steps_up(means, STAIR_SIGMAS * min(noise, self._mean_noise(noise)), limit):
            values = means
        elif _steps_up(lows, STAIR_SIGMAS * noise, limit) or _steps_up_past_a_spike(lows, STAIR_SIGMAS * noise, limit):
            values = lows
        else:
            return
        before, after = values[:STAIR_SIDE], values[STAIR_SIDE + 1:]
        at = self.bins[STAIR_SIDE].first_time
        if self.stairs and at - self.stairs[-1][0] <= (STAIR_SIDE + 1) * STAIR_BIN_S:
            return  # the same stair, seen again one bin later
        self.stairs.append((at, _median(after) - _median(before), _median(after), _median(before)))

    def _mean_noise(self, noise: float) -> float:
        """Sigma of a bin's mean reading (MAD of the bin-to-bin changes; a stair is one change of
        many): the mean of many readings scatters less than one reading, so a stair between bins
        that hold many readings stands out of their means sooner than out of the reading noise."""
        return _sigma_of_changes(self.mean_changes) if len(self.mean_changes) >= 16 else noise

    def _plan(self, limit: int) -> Optional[dict]:
        """The staircase from the bins closed so far (see ``projection``), or None."""
        if len(self.stairs) < 2 or limit <= 0:
            return None
        times, heights = [s[0] for s in self.stairs], [s[1] for s in self.stairs]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # a stair not found between two found (noise, a sawtooth's phase) makes a gap twice the others
        units = [min(2, max(1, round(g / min(gaps)))) for g in gaps]
        unit_gaps = [g / k for g, k in zip(gaps, units)]
        # stair times are known to a bin: gaps may differ by two bins beyond the ratio
        if max(unit_gaps) > STAIR_REGULAR * min(unit_gaps) + 2 * STAIR_BIN_S or max(heights) > STAIR_REGULAR * min(heights):
            return None
        gap = sum(gaps) / sum(units)
        # the level now: the mean readings of the bins closed since the last stair's flat run began
        means = [mean for t, _, _, mean in self.history if t > times[-1] + STAIR_SIDE * STAIR_BIN_S]
        level = _median(means) if means else self.stairs[-1][2]
        # A staircase never steps down: each stair starts from where the one before it ended, and the
        # level now holds the last one (a long evaluation goes up and comes back down).
        height = min(heights)
        ends = [s[2] for s in self.stairs]
        starts = [s[3] for s in self.stairs][1:] + [level]
        if any(start < end - height / 2 for start, end in zip(starts, ends)):
            return None
        # and it is flat between its stairs: a stair starts about where the one before it ended, or one
        # stair higher across a stair not found (the start and the end of a cache filling at a steady rate
        # are two jumps with a ramp between them)
        if any(start > end + k * height for start, end, k in zip(starts[:-1], ends, units)):
            return None
        # How high readings went above their stair's level: each bin since the first stair against
        # the level after the stair it follows. The latest bins count too: the next stair, before it
        # can be found (that needs the bins after it), rises above the level as an excursion.
        excursion = 0.0
        for t, _, high, _ in self.history:
            if t > times[0]:
                reached = max(i for i, stair_time in enumerate(times) if stair_time < t)
                excursion = max(excursion, high - (level if reached == len(times) - 1 else self.stairs[reached][2]))
        return {"due": times[-1] + gap, "first": times[0], "gap": gap, "stairs": len(times), "height": height,
                "level": level, "excursion": excursion, "limit": limit}

    def projection(self, time_s: float, spike: float = 0.0) -> Optional[dict]:
        """The staircase's death at its next stair (its plan, with ``seconds`` to it), or None: fewer
        than two stairs, irregular ones, a next stair that would stay below the limit, or one
        overdue by half a gap.

        ``spike``: the highest spike remembered (``_Spikes.headroom``). Evaluations come every 20-40
        minutes, stairs every few: the readings since the first of the last three stairs may hold none,
        and the stair that takes the level to within a spike of the limit is the one to die after."""
        plan = self.plan
        if plan is None or time_s > plan["due"] + plan["gap"] / 2:
            return None
        level, height, limit = plan["level"], plan["height"], plan["limit"]
        reach = max(plan["excursion"], spike)
        headroom = height + reach
        if level + reach >= limit:
            to_limit, headroom = 0, reach  # its readings reach the limit from the level it holds now
        elif level + headroom >= limit:
            to_limit = 1
        elif level + 2 * height + plan["excursion"] >= limit:
            to_limit = 2  # the stair after next, and its readings as high above it as any before
        else:
            return None
        if "p_value" not in plan:  # once per plan: a Mann-Kendall over up to STAIR_HISTORY bins
            span = [low for t, low, _, _ in self.history if t > plan["first"] - STAIR_SIDE * STAIR_BIN_S]
            plan.update(p_value=mann_kendall_p(span), n_bins=len(span))
        seconds = max(0.0, plan["due"] - time_s) if to_limit else 0.0
        return dict(plan, headroom=headroom, to_limit=to_limit, seconds=seconds,
                    span_s=time_s - plan["first"] + plan["gap"])


def _steps_up(values: Sequence[float], least: float, limit: int) -> bool:
    """The middle of ``values`` is a stair: the ``STAIR_SIDE`` values after it all lie above the ones
    before it by ``least`` and 1% of the limit, and each side is flat within half that jump."""
    return _stair_between(values[:STAIR_SIDE], values[STAIR_SIDE + 1:], least, limit, 0.5)


def _steps_up_past_a_spike(values: Sequence[float], least: float, limit: int) -> bool:
    """``_steps_up`` for the bins' lowest readings where an evaluation spike fills a whole bin of a side:
    it lifts that bin's lowest reading, and the side is no longer flat. Such a bin, standing above the
    side's other two by ``least``, is left out; the two left must then be flat within a quarter of the
    jump (two bins of a ramp are not: its next bin rises as much again)."""
    before = _without_a_spike(values[:STAIR_SIDE], least)
    after = _without_a_spike(values[STAIR_SIDE + 1:], least)
    if len(before) == STAIR_SIDE and len(after) == STAIR_SIDE:
        return False  # no spike: _steps_up has judged
    return _stair_between(before, after, least, limit, 0.25)


def _stair_between(before: Sequence[float], after: Sequence[float], least: float, limit: int, flat: float) -> bool:
    """All of ``after`` lies above all of ``before`` by ``least`` and 1% of the limit, each side flat within
    ``flat`` of that jump."""
    jump = min(after) - max(before)
    return jump >= max(least, 0.01 * max(limit, 0)) and max(after) - min(after) <= flat * jump \
        and max(before) - min(before) <= flat * jump


def _without_a_spike(side: Sequence[float], least: float) -> List[float]:
    """``side`` without its highest value when that stands above the next by ``least`` (a spike)."""
    ordered = sorted(side)
    return ordered[:-1] if ordered[-1] - ordered[-2] >= least else list(side)


class TrendDetector:
    """Online trend detector for one memory pool; call ``update`` with every reading.

    Start-up: readings are discounted while the floor still rises after a fast start (allocator
    growth, the first tracing), for ``startup_s`` seconds at most, counted from the first reading
    this detector sees (so a resumed run is discounted again). If step or time goes backwards (a new
    process appending to the same trace), the detector starts over.

    Example::

        detector = TrendDetector("gpu0")
        assessment = detector.update(step=1200, time_s=900.0, used_bytes=12 << 30, limit_bytes=80 << 30)
    """

    def __init__(self, pool: str, *, chunk_seconds: Sequence[float] = DEFAULT_CHUNK_SECONDS,
                 fast_chunk_seconds: Sequence[float] = DEFAULT_FAST_CHUNK_SECONDS,
                 window_chunks: int = DEFAULT_WINDOW_CHUNKS, min_chunks: Optional[int] = None,
                 fast_min_chunks: int = 6, startup_s: float = DEFAULT_STARTUP_S, warmup_s: float = 0.0,
                 warmup_steps: int = 0, min_readings: int = 6, alpha: float = 0.001, sustain_ratio: float = 0.2,
                 projection_confidence: float = 0.99, long_lead_s: float = 0.0):
        self.pool = pool
        # The policy aborts growth seen over LONG_WINDOW_S or longer this many seconds sooner (its longer
        # horizon): windows are ranked by their time to the limit less that, so that a shorter window's
        # later-looking projection never hides a long window's abort.
        self.long_lead_s = long_lead_s
        self.alpha = alpha
        self.startup_s = startup_s
        self.warmup_s = warmup_s
        self.warmup_steps = warmup_steps
        self.min_readings = min_readings
        min_chunks = min_chunks if min_chunks is not None else max(6, window_chunks // 2)
        slope_z = statistics.NormalDist().inv_cdf(projection_confidence)
        self._window_specs = [(seconds, min_chunks, False) for seconds in chunk_seconds] + \
                             [(seconds, fast_min_chunks, True) for seconds in fast_chunk_seconds]
        self._window_args = (sustain_ratio, slope_z)
        self._window_chunks = window_chunks
        self._restart()

    def _restart(self) -> None:
        self.windows: List[_Window] = [self._new_window(*spec) for spec in self._window_specs]
        fast = [w for w in self.windows if w.fast]
        for earlier, later in zip(fast, fast[1:]):
            later.twin = earlier
        for window in fast:
            window.prior_max = self._prior_max
        self.readings = 0  # readings after the start-up
        self._first: Optional[Tuple[int, float]] = None  # (step, time) of the first reading
        self._last: Optional[Tuple[int, float]] = None
        self._startup: Optional[List[int]] = []  # readings of the start-up; None once it is over
        self._startup_times: List[float] = []
        self._startup_end: Optional[float] = None
        self._early: List[List[float]] = []  # bins of the first SETTLING_S: [key, sum of times, sum of used, count]
        # (bins when judged, when the curve they follow came within the noise of its level below the limit: None
        # where they follow none)
        self._saturation: Tuple[int, Optional[float]] = (-1, None)
        self._differences: Deque[int] = deque(maxlen=64)  # reading-to-reading changes (the noise)
        self._previous_used: Optional[int] = None
        self._noise_at: Tuple[Optional[Tuple[int, int]], float] = (None, 0.0)  # (readings, limit) -> noise
        self._spikes = _Spikes()
        # readings of the last SPIKE_LOOK_S, for _spike_like (at most 4096: above 17 readings a second it looks back less)
        self._recent: Deque[Tuple[float, int]] = deque(maxlen=4096)
        self._stairs = _Stairs()
        self._settled = False  # whether SETTLING_S has passed (and the start was judged)

    def note_spike(self, time_s: float, height_bytes: float) -> None:
        """The run reports a spike it caused, say an evaluation that reached ``height_bytes`` above the
        readings before it and ended at ``time_s``. For the next ``SPIKE_MEMORY_S`` it counts as
        headroom of every growing window, like the spikes seen in the readings: the next evaluation
        may come as high. It only makes the guard more careful: it never holds growth back (the
        evaluation-spike check of the fast windows, ``_spike_like``, looks at the readings alone).

        Example: ``detector.note_spike(1830.0, 2 << 30)`` after a 2 GiB evaluation, 1830 s into the run.
        """
        if height_bytes > 0:
            self._spikes.tell(time_s, height_bytes)

    def _forget_the_start(self) -> None:
        """The run's first SETTLING_S followed a rise that levelled off below the limit (the start):
        the long windows begin again after it, so that its tail is not taken for growth once they
        hold enough chunks (the fast windows keep it, as context)."""
        for i, spec in enumerate(self._window_specs):
            if not self.windows[i].fast:
                old, self.windows[i] = self.windows[i], self._new_window(*spec)
                self.windows[i].noise, self.windows[i].limit = old.noise, old.limit

    def _new_window(self, seconds: float, min_chunks: int, fast: bool) -> _Window:
        return _Window(seconds, 4 * min_chunks if fast else self._window_chunks, min_chunks, *self._window_args,
                       fast=fast)

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
        if time_s - self._first[1] < SETTLING_S:
            key = int((time_s - self._first[1]) // SETTLE_BIN_S)
            if not self._early or self._early[-1][0] != key:
                self._early.append([key, 0.0, 0.0, 0])
            self._early[-1][1:] = [self._early[-1][1] + time_s, self._early[-1][2] + used_bytes, self._early[-1][3] + 1]
        if self._in_startup(time_s, used_bytes, limit_bytes):
            # The fast windows keep the start-up as context (so that growth settling after it
            # shows as such); nothing is judged on it.
            for window in self.windows:
                if window.fast:
                    window.add(step, time_s, used_bytes)
            base.note = "start-up: the floor still rises"
            return base
        self.readings += 1
        if self._previous_used is not None:
            self._differences.append(used_bytes - self._previous_used)
        self._previous_used = used_bytes
        if self.readings % 8 == 1:
            noise = self._reading_noise(limit_bytes)
            for window in self.windows:
                window.noise, window.limit = noise, limit_bytes
        if not self._settled and time_s - self._first[1] >= SETTLING_S:
            self._settled = True
            if self._levels_off(limit_bytes, self._reading_noise(limit_bytes)):
                self._forget_the_start()
                # and the fast windows judge growth only from where the start's curve came within the
                # noise of its level: its tail is context (a plateau's last minutes of start under a
                # sawtooth's first ramp rose enough to be aborted at 628 s)
                self._judge_from(min(time_s, max(self._startup_end or 0.0, self._saturation[1])))
        for window in self.windows:
            window.add(step, time_s, used_bytes)
        self._spikes.add(step, time_s, used_bytes)  # after the start-up (its rise is no spike), within SETTLING_S too
        self._recent.append((time_s, used_bytes))
        while self._recent[0][0] < time_s - SPIKE_LOOK_S:
            self._recent.popleft()
        self._stairs.add(step, time_s, used_bytes, self._reading_noise(limit_bytes), limit_bytes)
        if self.readings < self.min_readings:
            base.note = f"{self.readings} of {self.min_readings} readings after the start-up"
            return base
        return self._assess(base)

    def _judge_from(self, time_s: float) -> None:
        """Growth is judged from ``time_s`` on: what came before is the start, context for the fast windows."""
        self._startup_end = time_s
        for window in self.windows:
            window.judged_from = time_s

    def _startup_cap(self) -> float:
        """When the start-up discount ends at the latest: ``startup_s`` into the run (``time_s``
        counts from the run's start), or after the first reading of a resumed run."""
        first = self._first[1]
        return self.startup_s if first < self.startup_s else first + self.startup_s

    def _in_startup(self, time_s: float, used: int, limit: int) -> bool:
        """The start-up discount, on evidence in the readings alone: it ends when the last quarter
        of its readings (at least 3) sets no new high above the earlier ones by more than 0.5% of
        the limit, the last half (at least 8) shows no significant rise (Mann-Kendall, p > 0.05:
        noisy readings may miss a new high on a ramp) or spans no more than those 0.5% (a quiet
        start that crept up by 1 MiB of 2.5 GiB is a significant rise, and its discount ran on into
        a leak that began right after it), and is shown to be flat (``_shown_flat``), or after
        ``startup_s``."""
        if self._startup is None:
            return False
        self._startup.append(used)
        self._startup_times.append(time_s)
        readings = self._startup
        over = time_s >= self._startup_cap()
        if not over and len(readings) >= 8:
            recent = max(3, len(readings) // 4)
            half = max(8, len(readings) // 2)
            settle = 0.005 * max(limit, 0)
            over = max(readings[-recent:]) <= max(readings[:-recent]) + settle \
                and (mann_kendall_p(readings[-half:]) > 0.05 or max(readings[-half:]) - min(readings[-half:]) <= settle) \
                and self._shown_flat(self._startup_times[-half:], readings[-half:], limit)
        if over:
            self._startup, self._startup_times = None, []
            self._judge_from(time_s)
            return False
        return True

    def _shown_flat(self, times: Sequence[float], used: Sequence[int], limit: int) -> bool:
        """No significant rise is not yet flatness: a few noisy readings on a ramp miss it by chance.
        The readings must also bound their pace: at the upper end of its confidence interval
        (least squares, two standard errors), the floor would rise by at most ``STARTUP_FLAT``
        of the limit over ``startup_s``."""
        if limit <= 0:
            return True
        n = len(times)
        mean_t, mean_y = sum(times) / n, sum(used) / n
        sxx = sum((t - mean_t) ** 2 for t in times)
        if sxx <= 0:
            return False
        slope = sum((t - mean_t) * (y - mean_y) for t, y in zip(times, used)) / sxx
        sse = sum((y - mean_y - slope * (t - mean_t)) ** 2 for t, y in zip(times, used))
        upper = slope + 2.0 * math.sqrt(sse / (n - 2) / sxx)
        return upper * self.startup_s <= STARTUP_FLAT * limit

    def _assess(self, base: Assessment) -> Assessment:
        # Rank the windows cheaply first; build the full assessment only for the one that speaks.
        best, best_key, best_seconds = None, None, math.inf
        noise = None
        # In the run's first SETTLING_S, a rise that levels off below the limit is the start (the
        # allocator filling its working set, the first evaluation): the fast windows do not speak
        # while the readings since the first follow such a curve (the long windows still do).
        spike_like = None  # whether the latest readings may be an evaluation spike (judged when needed)
        settling_start = base.time_s - self._first[1] < SETTLING_S and any(w.fast and w.trends for w in self.windows) \
            and self._levels_off(base.limit_bytes, self._reading_noise(base.limit_bytes))
        for window in self.windows:
            if window.fast and window.trends:
                noise = noise if noise is not None else self._reading_noise(base.limit_bytes)
                if window.streak_fits != window.fits:  # a new fit: growth seen once more, or not
                    window.streak_fits = window.fits
                    seen = any(self._fast_regime(trend, base, noise) for trend in window.trends)
                    window.seen = (window.seen << 1 | seen) & ((1 << FAST_CONFIRM_OF) - 1)
                    window.streak = window.streak + 1 if seen else 0
                    window.streak_since = window.streak_since if window.streak > 1 else base.time_s
            # The window's longest view since the start-up settling below the limit (growth that
            # slows down to a level it can hold) speaks for its shorter ones too.
            judged = [t for t in window.trends if t.first_time >= window.judged_from] if window.fast else []
            settling = settling_start or bool(judged) and math.isfinite(judged[-1].settle_s) \
                and not math.isfinite(self._seconds_to_limit(judged[-1], base, NOISE_PEAK_Z * noise))
            for trend in window.trends:
                if window.fast:
                    # Under noise a fast leak's quarters fail one fit in two or three by chance, and a
                    # streak would start over each time: after the start, 3 of the last 4 fits confirm it
                    # too. Not at the start, whose tail near a plateau's level flickers the same way.
                    confirmed = window.streak >= FAST_CONFIRMATIONS or (
                        window.streak >= 2 and base.time_s - window.streak_since >= FAST_CONFIRM_S) or (
                        window.streak >= 1 and self._settled and (
                            bin(window.seen).count("1") >= FAST_CONFIRMATIONS or self._decisive(trend, noise)))
                    growing = confirmed and not settling \
                        and self._fast_regime(trend, base, noise)
                    if growing:
                        spike_like = self._spike_like(base, noise) if spike_like is None else spike_like
                        growing = not spike_like
                else:
                    # Long windows are fitted again at every chunk for days: a chance drift of a
                    # plateau passes the test now and then, so the floors must also rise clearly
                    # out of their own scatter (harmless elsewhere, fatal on a plateau near its limit),
                    # and the chunks' mean readings must rise with them (the deepest dips of noisy
                    # readings drift by chance apart from their mean; a leak lifts both).
                    growing = trend.p_value <= self.alpha and trend.sustained and trend.slope_low_per_s > 0 \
                        and trend.slope_per_s * trend.summary["span_s"] >= LONG_RISE_SIGMAS * trend.sigma \
                        and trend.mean_p <= LONG_MEAN_ALPHA and not trend.lagging \
                        and not self._stalled_in_finer(window, trend)
                if growing:
                    noise = noise if noise is not None else self._reading_noise(base.limit_bytes)
                seconds = self._seconds_left(window, trend, base, noise) if growing else math.inf
                # growing first, then the sooner (for the policy's horizons), then surer
                key = (not growing, seconds - self._lead(_window_seconds(window, trend)), trend.p_value)
                if best_key is None or key < best_key:
                    best, best_key, best_seconds = (window, trend), key, seconds
        stairs = self._stairs.projection(base.time_s, self._spikes.headroom(base.time_s))
        if stairs is not None and (best_key is None or best_key[0]
                                   or stairs["seconds"] - self._lead(stairs["span_s"]) < best_key[1]):
            return self._stair_assessment(base, stairs)
        if best is None:
            if any(w.fast and len(w.chunks) >= w.min_chunks for w in self.windows):
                # Enough history, and no span worth a fit (none rises beyond the reading noise at a pace
                # that could matter, into new ground): that is a judgement too, no growth.
                base.ready = True
                base.note = "no rise beyond the reading noise"
                return base
            base.note = "not enough history for a trend yet"
            return base
        headroom = self._room_above(*best, noise if noise is not None else self._reading_noise(base.limit_bytes))
        assessment = self._assessment(base, *best, growing=not best_key[0], seconds=best_seconds, headroom=headroom)
        quiet = self._spikes.quiet_until(base.time_s) if assessment.growing else None
        if quiet is not None and quiet > base.time_s:
            assessment.note = f"the next spike is not due for {quiet - base.time_s:.0f} s"
        return assessment

    def _stalled_in_finer(self, window: _Window, trend: _Trend) -> bool:
        """A long window's growth stalled where a long window of shorter chunks sees it: the mean readings of
        that window's last ``STALL_TAIL_CHUNKS`` chunks (15 minutes of 1-minute chunks, an hour of 4-minute ones)
        rise slower than half the longer window's pace (``_rises_slower``). An allocator's stairs that came
        every few minutes and then stopped still lift the 96-minute and 6.4-hour windows' lines, and their own
        latest half hour (``_stalled``) still holds stairs; near the limit their peaks were projected past it
        15-70 minutes after the last stair. Judged again only when ``trend`` or a finer chunk is new."""
        finer = [other for other in self.windows if not other.fast and other.chunk_seconds < window.chunk_seconds
                 and len(other.chunks) >= STALL_TAIL_CHUNKS]
        keys = tuple(other.chunks[-1].key for other in finer)
        if window.stalled is None or window.stalled[0] is not trend or window.stalled[1] != keys:
            window.stalled = (trend, keys, any(
                _rises_slower(list(other.chunks)[-STALL_TAIL_CHUNKS:], trend.slope_per_s) for other in finer))
        return window.stalled[2]

    def _lead(self, window_seconds: float) -> float:
        return self.long_lead_s if window_seconds >= LONG_WINDOW_S else 0.0

    def _levels_off(self, limit: int, noise: float) -> bool:
        """The readings since the first (in bins of SETTLE_BIN_S) follow a rise that levels off,
        ``level - A * exp(-t / tau)`` with tau up to about four minutes, to a level that stays below
        the limit by two noise sigmas, and the latest bins keep to that curve (a leak that begins on
        top of it climbs away).
        Least squares over a grid of time constants; judged again when a bin closes."""
        bins = self._early[:-1]  # closed bins
        if self._saturation[0] != len(bins):
            self._saturation = (len(bins), self._fit_levels_off(bins, limit, noise) if len(bins) >= 8 else None)
        return self._saturation[1] is not None

    @staticmethod
    def _fit_levels_off(bins: Sequence[Sequence[float]], limit: int, noise: float) -> Optional[float]:
        """The fit of ``_levels_off``; tried again with the largest jump between bins taken out
        (an evaluation spike, or a one-time step, on top of the rise). Returns when the curve came
        within a noise sigma of its level, or None where the readings follow no such curve."""
        ts = [b[1] / b[3] for b in bins]
        ys = [b[2] / b[3] for b in bins]
        counts = [b[3] for b in bins]
        settled_at = TrendDetector._curve_levels_off(ts, ys, counts, limit, noise)
        if settled_at is not None:
            return settled_at
        for width in (1, 2):  # a jump's edge may fall inside a bin: then it spans two
            # (with a bin taken out, a line may fit what is left best: a GC sawtooth's ramp on a plateau's
            # start fitted so, and the plateau at 94% of its limit was aborted)
            at = max(range(len(ys) - width), key=lambda i: ys[i + width] - ys[i])
            jump = ys[at + width] - ys[at]
            # only a jump that stands out of the noise of two bins' means (a noisy ramp's largest
            # bin-to-bin rise is no step; taken out, the ramp that is left bends over)
            if jump > SETTLE_JUMP_Z * noise * math.sqrt(1.0 / counts[at] + 1.0 / counts[at + width]):
                settled_at = TrendDetector._curve_levels_off(
                    ts[:at + 1] + ts[at + width:], ys[:at + 1] + [y - jump for y in ys[at + width:]],
                    counts[:at + 1] + counts[at + width:], limit - jump, noise, line_wins=width == 1)
                if settled_at is not None:
                    return settled_at
        return None

    @staticmethod
    def _curve_levels_off(ts: Sequence[float], ys: Sequence[float], counts: Sequence[int], limit: float,
                          noise: float, line_wins: bool = True) -> Optional[float]:
        """Whether a fit about as good as the best (the one with the lowest level) bends over within
        the time constants tried (an allocator's or a first evaluation's rise, not a leak's line) to a
        level two noise sigmas below ``limit``, with the latest bins on the curve and rising no faster
        than it (their Theil-Sen slope at most twice the curve's, or a rise within the noise).
        ``line_wins``: and the best fit of all bends over (readings that a line fits best are no start).
        Returns when that curve came within a noise sigma of its level, or None where it does not hold."""
        n, t0 = len(ts), ts[0]
        fits = []
        for tau in SETTLE_TAUS:
            xs = [math.exp(-(t - t0) / tau) for t in ts]
            sx, sy = sum(xs), sum(ys)
            sxx, sxy = sum(x * x for x in xs), sum(x * y for x, y in zip(xs, ys))
            den = n * sxx - sx * sx
            if den <= 0:
                continue
            b = (n * sxy - sx * sy) / den
            a = (sy - b * sx) / n
            residuals = [y - a - b * x for x, y in zip(xs, ys)]
            fits.append((sum(r * r for r in residuals), tau, a, b, residuals))
        if not fits or n <= 3:
            return None
        # The time constant, and with it the level, is the least sure part of the fit: of the rises
        # that bend over within the grid and fit about as well as the best (within the 95% bound of
        # a one-parameter F test), the one with the lowest level is judged. None: no rise, one that
        # does not bend over (a leak's line), or readings that fit best with no bend at all: a leak
        # that begins as the start levels off is then no start, even when a bend fits about as well
        # under noise (a 3-minute leak from 2 minutes in was taken for the start until 36 s before it died).
        best_sse, best_tau, _, _, best_residuals = min(fits, key=lambda fit: (fit[0], fit[1]))
        if line_wins and best_tau >= SETTLE_TAUS[-1]:
            return None
        # A best fit that bends over slowly may be a fast start and a leak's line after it, fitted by one
        # curve: its residuals then change sign in a few long runs, where a start's scatter about its curve
        # changes sign at random.
        if line_wins and best_tau >= SETTLE_SLOW_TAU and _too_few_runs(best_residuals):
            return None
        plausible = [fit for fit in fits if fit[0] <= best_sse * (1.0 + SETTLE_F / (n - 3))
                     and fit[3] < 0 and fit[1] < SETTLE_TAUS[-1]]
        if not plausible:
            return None
        _, tau, level, b, residuals = min(plausible, key=lambda fit: fit[2])  # the lowest level
        if level + 2.0 * noise >= limit:  # readings around that level would reach the limit
            return None
        # a sawtooth's phase moves bin averages by up to half its height: allow 1% of the limit; and the
        # median of a few noisy bins strays from the curve by chance (two of its standard errors)
        latest = max(3, n // 4)
        if _median(residuals[-latest:]) > max(noise, 2.0 * 1.2533 * noise / math.sqrt(latest), 0.01 * limit):
            return None
        # and the latest bins must be slowing down as the curve does: a climb that keeps its
        # pace (a leak after a fast start) rises clearly faster than the curve's slope there,
        # by more than the pace's own uncertainty (a few noisy readings tilt it by chance)
        third = max(4, n // 3)
        pace = theil_sen_slope(ts[-third:], ys[-third:])[0]
        curve_slope = -b / tau * math.exp(-(_median_sorted(ts[-third:]) - t0) / tau)
        weights = counts[-third:]
        mean_t = sum(w * t for w, t in zip(weights, ts[-third:])) / sum(weights)
        spread = math.sqrt(sum(w * (t - mean_t) ** 2 for w, t in zip(weights, ts[-third:])))
        # The pace's uncertainty from the noise estimated from the readings' changes, or from the
        # latest bins' own scatter about the pace when larger: a few dozen changes make the estimate
        # 20-35% low by chance, and one such start (a plateau at 89%) was taken for a leak at 290 s.
        mid = _median([y - pace * t for t, y in zip(ts[-third:], ys[-third:])])
        scatter = math.sqrt(sum(w * (y - mid - pace * t) ** 2 for w, t, y in zip(weights, ts[-third:], ys[-third:]))
                            / max(1, third - 2))
        if pace > 2.0 * curve_slope and pace - curve_slope > SETTLE_PACE_Z * max(noise, scatter) / max(spread, 1e-9):
            return None
        return t0 + tau * math.log(max(1.0, -b / max(noise, 1.0)))

    def _reading_noise(self, limit: int) -> float:
        """Sigma of the reading noise, from the spread of recent reading-to-reading changes (MAD:
        a leak's steady growth and rare jumps do not move it); at least 0.2% of the limit."""
        key = (self.readings // 4, limit)  # a robust spread of 64 changes: refreshed every 4 readings
        if self._noise_at[0] == key:
            return self._noise_at[1]
        floor = 0.002 * max(limit, 0)
        noise = floor
        if len(self._differences) >= 4:
            noise = max(floor, _sigma_of_changes(self._differences))
        self._noise_at = (key, noise)
        return noise

    def _fast_regime(self, trend: _Trend, base: Assessment, noise: float) -> bool:
        """A fast window sees a new linear regime: a significant, sustained rise of at least
        ``FAST_RISE_SIGMAS`` reading-noise sigmas over its span, into new territory, on track now."""
        if not (trend.p_value <= FAST_ALPHA and trend.sustained and trend.slope_low_per_s > 0):
            return False
        if self._startup_end is not None and trend.first_time < self._startup_end:
            return False  # the start-up is context (for settling), never the growth itself
        if _rise(trend) < _rise_required(trend, noise):
            return False
        return self._new_territory(trend, base.time_s, noise) and self._still_on_track(trend, base, noise)

    @staticmethod
    def _decisive(trend: _Trend, noise: float) -> bool:
        """One fit confirms growth when readings are sparse (``FAST_CONFIRM_S`` apart on average: the
        next fit is that far off) and its rise is ``FAST_DECISIVE`` times the rise required: a 3-minute
        leak read every 18 s, first seen rising 27 noise sigmas where 6 are required, waited for the next
        fit and was aborted 57 s before it died (75 s with this)."""
        sparse = trend.summary["span_s"] >= FAST_CONFIRM_S * max(1, trend.summary["n_readings"] - 1)
        return sparse and _rise(trend) >= FAST_DECISIVE * _rise_required(trend, noise)

    def _spike_like(self, base: Assessment, noise: float) -> bool:
        """The latest readings may be an evaluation spike like those remembered, which a fast window
        cannot tell from a fast leak's first minute under noisy readings. They stand above the readings
        of two to four minutes ago by no more than the highest spike remembered (and ``SPIKE_LIKE_SIGMAS``
        noise sigmas: a spike's climb read every 13 s stood 2.1 sigmas above the highest remembered),
        while those of one to two minutes ago do not stand above them (within the scatter of the two
        medians, and by less than ``SPIKE_MID_SHARE`` of the rise since): a spike lasts less than a
        minute, a leak rose then too. Such growth waits until it outlasts a spike or outgrows one."""
        height = self._spikes.height()
        if height <= 2.0 * noise:
            return False
        now = base.time_s
        before = [u for t, u in self._recent if t < now - 2 * SPIKE_BIN_S]
        between = [u for t, u in self._recent if now - 2 * SPIKE_BIN_S <= t < now - SPIKE_BIN_S]
        if len(before) < 2 or not between:
            return False
        level, mid = _median(before), _median(between)
        latest = _median([self._recent[-i][1] for i in range(1, min(3, len(self._recent)) + 1)])
        # a median of k readings scatters by about 1.25 sigma / sqrt(k)
        flat = mid - level <= 2.0 * 1.25 * noise * math.sqrt(1.0 / len(before) + 1.0 / len(between)) \
            and mid - level <= SPIKE_MID_SHARE * (latest - mid)
        return flat and latest - level <= height + SPIKE_LIKE_SIGMAS * noise

    def _new_territory(self, trend: _Trend, time_s: float, noise: float) -> bool:
        """A fast window's growth counts only where memory goes higher than it went before the
        window began (but for twice the noise): a sawtooth's ramp, or a climb back after a dip, stays
        within ground already covered. The span since a change point must top it by
        ``CHANGE_MARGIN_SIGMAS``: it begins where a sawtooth's ramp begins, and fits the ramp as well
        as a leak (a plateau at 94% was aborted at the top of a ramp, just below the last tooth's)."""
        margin = CHANGE_MARGIN_SIGMAS if trend.change_point else -2.0
        return trend.floor_at(time_s) > self._prior_max(trend.first_time) + margin * noise

    def _prior_max(self, before: float) -> float:
        """The highest reading in the windows' chunks that ended before ``before`` (-inf: none)."""
        return max(w.high_before(before) for w in self.windows)

    @staticmethod
    def _still_on_track(trend: _Trend, base: Assessment, noise: float) -> bool:
        """The reading now must not fall well below a fast window's line: the top of a spike, or
        a step that is over, bends away from it at once; a leak's readings keep to it."""
        return base.used_bytes >= trend.floor_at(base.time_s) - NOISE_PEAK_Z * noise

    def _room_above(self, window: _Window, trend: _Trend, noise: float) -> float:
        """A growing window's headroom: its own, or the highest spike of the last two hours if higher
        (those the run reported too: evaluations that the readings, sparse or still in the start, missed)."""
        return max(self._headroom(window, trend, noise), self._spikes.headroom(trend.last_time))

    def _seconds_left(self, window: _Window, trend: _Trend, base: Assessment, noise: float) -> float:
        """A growing window's time to the limit, its own headroom or a spike's on top. A spike kills
        only when it comes: where the next is not due before the floor plus the spike's height
        reaches the limit (``_Spikes.quiet_until``), the run lives until then or until the floor
        plus its own headroom reaches it, whichever comes first."""
        own = self._headroom(window, trend, noise)
        soonest = self._seconds_to_limit(trend, base, max(own, self._spikes.headroom(trend.last_time)))
        quiet, spikes = self._spikes.quiet(base.time_s)
        if quiet is None or quiet - base.time_s <= soonest:
            return soonest
        if not window.fast:  # a long window's peaks hold the spikes it spans: its own without them
            own = self._headroom(window, self._without(window, trend, spikes), noise)
        return min(self._seconds_to_limit(trend, base, own), quiet - base.time_s)

    @staticmethod
    def _without(window: _Window, trend: _Trend, spikes: Sequence[float]) -> _Trend:
        """A long window's fit with the peaks of the chunks that held a spike left out."""
        def near(c: _Chunk) -> bool:
            at = bisect.bisect_left(spikes, c.max_time - SPIKE_BIN_S)
            return at < len(spikes) and spikes[at] <= c.max_time + 2 * SPIKE_BIN_S
        chunks = list(window.chunks)
        xs = [c.min_time for c in chunks]
        ys = [float(c.min_used) for c in chunks]
        peaks = _long_peaks(chunks, xs, ys, trend.slope_per_s, near)
        levels = _peak_levels(chunks, trend.slope_per_s, trend.recent_slope, trend.last_time, near)
        return replace(trend, headroom=max(0.0, peaks) + trend.stair, peak_level=levels[0], peak_level_fast=levels[1])

    @staticmethod
    def _headroom(window: _Window, trend: _Trend, noise: float) -> float:
        """How far above the floor the readings reach: a fast window's reading noise (its residuals
        from a line also hold the bend of a curve, which is no headroom); a long window's observed
        peaks and stairs plus one noise sigma (the next hours' readings may reach a little higher
        than the last hours' did). A long window's peaks above their local floors overstate the band
        of noisy readings (a chunk's floor is its deepest dip): they count no higher than the window's
        highest readings, carried to now, plus half a noise sigma. In a window whose recent half rises
        faster than its line (accelerating: the peaks ride a floor that outruns the line) they are
        carried at the recent half's pace, and the observed peaks count in full."""
        if window.fast:
            return max(NOISE_PEAK_Z, _noise_reach(trend.summary["n_readings"], trend.summary["n_chunks"],
                                                  trend.summary["span_s"])) * noise
        if trend.recent_slope > trend.slope_per_s:
            return min(trend.headroom + noise,
                       max(0.0, trend.peak_level_fast - trend.floor_at(trend.last_time) + 0.5 * noise) + trend.stair)
        peaks = trend.headroom - trend.stair
        observed = trend.peak_level - trend.floor_at(trend.last_time)
        return max(0.0, min(peaks + noise, observed + 0.5 * noise)) + trend.stair

    @staticmethod
    def _seconds_to_limit(trend: _Trend, base: Assessment, headroom: float) -> float:
        # Even the slowest growth the readings allow (the slope's lower bound, or the recent half's
        # pace when growth slows down) must exhaust memory soon: a barely significant drift near
        # the limit, or growth that levels off, is not a fast leak.
        if base.limit_bytes <= 0:  # no known limit: nothing to project to
            return math.inf
        slope = min(trend.slope_low_per_s, trend.recent_slope)
        if not trend.fast and trend.recent_slope > trend.slope_per_s:
            # A long window whose recent half rises faster (an accelerating leak) is projected at
            # its fitted pace: its lower bound, fitted over hours, lags far behind.
            slope = trend.slope_per_s
        if slope <= 0:
            return math.inf
        left = base.limit_bytes - (trend.floor_at(base.time_s) + headroom)
        if left <= 0:
            return 0.0
        if math.isfinite(trend.settle_s):  # slowing down: it rises at most slope * settle_s more
            reach = trend.recent_slope * trend.settle_s
            return math.inf if left >= reach else -trend.settle_s * math.log(1.0 - left / reach)
        return left / slope

    @staticmethod
    def _stair_assessment(base: Assessment, stairs: dict) -> Assessment:
        """A staircase that dies at its next stair (see ``_Stairs``)."""
        a = Assessment(base.pool, base.step, base.time_s, base.used_bytes, base.limit_bytes, ready=True, growing=True)
        a.slope_bytes_per_second = a.slope_low_bytes_per_second = stairs["height"] / stairs["gap"]
        a.trend_p_value = stairs["p_value"]
        a.trend_confidence = 1.0 - stairs["p_value"]
        a.floor_bytes = int(stairs["level"])
        a.peak_headroom_bytes = int(stairs["headroom"])
        a.window_seconds = stairs["span_s"]
        a.window = {"n_chunks": stairs["n_bins"], "span_s": round(stairs["span_s"], 2), "fast": False,
                    "stairs": stairs["stairs"], "stair_bytes": int(stairs["height"]),
                    "stair_every_s": round(stairs["gap"], 1), "stairs_to_limit": stairs["to_limit"]}
        a.note = f"stairs of {stairs['height'] / (1 << 20):.0f} MiB every {stairs['gap']:.0f} s"
        a.seconds_to_limit = stairs["seconds"]
        a.projected_exhaustion_time_s = base.time_s + stairs["seconds"]
        return a

    @staticmethod
    def _assessment(base: Assessment, window: _Window, trend: _Trend, growing: bool, seconds: float,
                    headroom: float) -> Assessment:
        a = Assessment(base.pool, base.step, base.time_s, base.used_bytes, base.limit_bytes, ready=True)
        a.slope_bytes_per_second = trend.slope_per_s
        a.slope_low_bytes_per_second = trend.slope_low_per_s
        a.slope_bytes_per_step = trend.slope_per_s * trend.seconds_per_step
        a.trend_p_value = trend.p_value
        a.trend_confidence = 1.0 - trend.p_value
        a.floor_bytes = int(trend.floor_at(base.time_s))
        a.peak_headroom_bytes = int(headroom)
        a.window_seconds = _window_seconds(window, trend)
        a.window = dict(trend.summary, fast=window.fast)
        a.growing = growing
        if growing and math.isfinite(seconds):
            a.seconds_to_limit = seconds
            a.projected_exhaustion_time_s = base.time_s + seconds
            if trend.seconds_per_step > 0:
                a.steps_to_limit = int(seconds / trend.seconds_per_step)
                a.projected_exhaustion_step = base.step + a.steps_to_limit
        return a
