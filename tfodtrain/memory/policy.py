"""Guard settings and the policy that turns an assessment into an action.

The detector (``detector.py``) says what memory does; the policy says what to do about it:
``ok``, ``warn`` or ``abort`` (checkpoint and exit 75). Keeping the two apart lets the action
rules change without touching the statistics.

Example::

    settings = GuardSettings.from_mapping({"mode": "warn", "horizon_s": 1200})
    policy = GuardPolicy(settings)
    decision = policy.decide(assessment)
    if decision.action == "abort":
        save_checkpoint_and_exit(75, decision.reason)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from tfodtrain.memory.detector import (DEFAULT_CHUNK_SECONDS, DEFAULT_FAST_CHUNK_SECONDS, DEFAULT_STARTUP_S,
                                       DEFAULT_WINDOW_CHUNKS, LONG_WINDOW_S, Assessment)
from tfodtrain.units import MIB

MODES = ("abort", "warn", "off")
ACTIONS = ("ok", "warn", "abort")
GIB = float(1 << 30)
# Readings further apart than this leave a leak that fills memory in minutes few readings to be judged on
# (docs/leak_guard.md): the guard's defaults were measured to keep a minute's lead at every test below it.
DENSE_READINGS_S = 5.0


@dataclass(frozen=True)
class GuardSettings:
    """How the leak guard watches memory and when it acts. The defaults suit long GPU runs.

    Example: ``GuardSettings(mode="warn", horizon_s=1800)``
    """

    mode: str = "abort"
    """``abort``: checkpoint and exit 75 when a leak would exhaust memory within ``horizon_s``;
    ``warn``: only log; ``off``: watch nothing."""
    startup_s: float = DEFAULT_STARTUP_S
    """At most this many seconds from the first reading are discounted as start-up (allocator
    growth, first tracing), and only while the readings show the floor still rising."""
    warmup_s: float = 0.0
    """Extra seconds from the first reading during which readings are ignored (none by default:
    the start-up discount needs no blind time)."""
    warmup_steps: int = 0
    """Steps during which readings are ignored (none by default)."""
    min_readings: int = 6
    """Readings after the start-up before any decision."""
    chunk_seconds: Tuple[float, ...] = DEFAULT_CHUNK_SECONDS
    """Chunk length of each long window, seconds; one window per value (they see slow leaks, rare
    stairs and rare spikes)."""
    fast_chunk_seconds: Tuple[float, ...] = DEFAULT_FAST_CHUNK_SECONDS
    """Chunk length of each fast window, seconds: the last ``window_chunks`` chunks that hold
    readings, tested for a new linear regime (leaks that fill memory in minutes). Empty: none."""
    window_chunks: int = DEFAULT_WINDOW_CHUNKS
    """Chunks per window (its size): a long window spans ``window_chunks * chunk_seconds`` and judges
    once half full."""
    fast_min_chunks: int = 6
    """Chunks a fast window needs before it judges."""
    confidence: float = 0.999
    """Confidence the Mann-Kendall test needs to call the floor growing (p <= 1 - confidence)."""
    projection_confidence: float = 0.99
    """The projection grows memory at the low end of the slope's confidence interval at this
    level, so a barely significant drift close to the limit is not taken for a fast leak."""
    sustain_ratio: float = 0.2
    """Sustained growth: the floor must rise from each quarter of a window to the next, the
    smallest of the three rises at least this fraction of the largest (a one-time step up
    raises at most two)."""
    horizon_s: float = 180.0
    """Abort when memory is projected to reach the limit within this many seconds. It covers the
    minute a user needs, an abort checkpoint's save, and the start of the next reading; the
    insurance checkpoint of the first warning lets it wait this close to the limit."""
    long_horizon_s: float = 300.0
    """The abort horizon for growth sustained over a window of an hour or more: a slow leak's peaks
    (spikes, outliers) are best left further clear of the limit, and an accelerating leak outruns a
    line fitted over hours. Longer horizons abort healthy caches that fill for half an hour and stop."""
    warn_horizon_s: float = 1800.0
    """Warn when memory is projected to reach the limit within this many seconds (in training, the
    first warning of a pool also saves an insurance checkpoint)."""
    warn_every_s: float = 600.0
    """A warning for a pool is repeated at most this often."""
    on_abort_command: Optional[str] = None
    """Shell command the training callback runs after the abort checkpoint (e.g. a notifier)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"leak guard: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("confidence", "projection_confidence"):
            if not 0.5 <= getattr(self, name) < 1:
                raise ValueError(f"leak guard: {name} must be in [0.5, 1), e.g. 0.999, got {getattr(self, name)!r}")
        if not 0 < self.sustain_ratio <= 1:
            raise ValueError(f"leak guard: sustain_ratio must be in (0, 1], got {self.sustain_ratio!r}")
        if self.window_chunks < 8:
            raise ValueError(f"leak guard: window_chunks must be at least 8, got {self.window_chunks!r}")
        if any(s <= 0 for s in self.fast_chunk_seconds):
            raise ValueError("leak guard: fast_chunk_seconds must be a list of positive seconds, e.g. [5, 20], "
                             f"got {list(self.fast_chunk_seconds)!r}")
        if self.fast_min_chunks < 5:
            raise ValueError(f"leak guard: fast_min_chunks must be at least 5, got {self.fast_min_chunks!r}")
        if not self.chunk_seconds or any(s <= 0 for s in self.chunk_seconds):
            raise ValueError("leak guard: chunk_seconds must be a non-empty list of positive seconds, "
                             f"e.g. [60, 240, 960], got {list(self.chunk_seconds)!r}")
        for name in ("startup_s", "warmup_s", "warmup_steps", "min_readings", "horizon_s", "long_horizon_s",
                     "warn_horizon_s", "warn_every_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"leak guard: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.warn_horizon_s < self.horizon_s:
            raise ValueError(f"leak guard: warn_horizon_s ({self.warn_horizon_s}) must be >= horizon_s "
                             f"({self.horizon_s}): the warning comes before the abort")

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]) -> "GuardSettings":
        """Settings from a plain mapping (a config section); unknown keys and bad values raise a
        one-line ``ValueError`` that names the key and what it accepts.

        Example: ``GuardSettings.from_mapping({"mode": "warn", "chunk_seconds": [60, 300]})``
        """
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"leak guard: unknown setting '{unknown[0]}'; known settings: {', '.join(known)}")
        converted = {name: _convert(name, value, known[name].default) for name, value in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["chunk_seconds"] = list(self.chunk_seconds)
        data["fast_chunk_seconds"] = list(self.fast_chunk_seconds)
        return data


def _convert(name: str, value: Any, default: Any) -> Any:
    """Check one value against the type of its default; say what is expected if it does not fit."""
    if name == "on_abort_command":
        if value is None or isinstance(value, str):
            return value or None
        raise ValueError(f"leak guard: on_abort_command must be a shell command string or null, got {value!r}")
    if name == "mode":
        if isinstance(value, str) and value.strip().lower() in MODES:
            return value.strip().lower()
        raise ValueError(f"leak guard: mode must be one of {', '.join(MODES)}, got {value!r}")
    if name in ("chunk_seconds", "fast_chunk_seconds"):
        items = value if isinstance(value, (list, tuple)) else [value]
        example = "[60, 240, 960]" if name == "chunk_seconds" else "[5, 20]"
        try:
            return tuple(_number(name, item, float) for item in items)
        except ValueError:
            raise ValueError(f"leak guard: {name} must be a list of positive seconds, e.g. {example}, "
                             f"got {value!r}") from None
    kind = int if isinstance(default, int) else float
    return _number(name, value, kind)


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"leak guard: {name} must be a {'whole ' if kind is int else ''}number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"leak guard: {name} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"leak guard: {name} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"leak guard: {name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


@dataclass
class Decision:
    """What the guard wants done now, and why (the reason names the pool)."""

    action: str = "ok"  # ok | warn | abort
    reason: str = ""
    assessment: Optional[Assessment] = field(default=None, repr=False)
    pool: Optional[str] = None

    @property
    def urgency(self) -> int:
        return ACTIONS.index(self.action)

    def to_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason, "pool": self.pool,
                "assessment": self.assessment.to_dict() if self.assessment else None}


class GuardPolicy:
    """Turn assessments into decisions; one policy per pool (it remembers what it last said).

    ``abort`` when memory grows (with the configured confidence, sustained) and the projected
    exhaustion, peaks included, is within ``horizon_s``; ``warn`` within ``warn_horizon_s``, at
    most every ``warn_every_s`` (sooner only to escalate). Warn mode never aborts; off never acts.
    """

    def __init__(self, settings: Optional[GuardSettings] = None):
        self.settings = settings or GuardSettings()
        self._last_action = "ok"
        self._last_warn_time: Optional[float] = None
        self._last_warn_horizon: Optional[str] = None

    def decide(self, assessment: Assessment) -> Decision:
        """The action for this assessment; a warning that is not yet due again comes back as a
        quiet ``ok`` (no reason), so a caller can log every non-ok decision as it comes."""
        s = self.settings
        decision = Decision("ok", "", assessment, assessment.pool)
        if s.mode == "off" or not assessment.growing or assessment.seconds_to_limit is None:
            self._last_action = "ok"
            return decision
        seconds = assessment.seconds_to_limit
        abort_horizon = s.long_horizon_s if assessment.window_seconds >= LONG_WINDOW_S else s.horizon_s
        if seconds <= abort_horizon:
            action = "abort" if s.mode == "abort" else "warn"
            horizon = (abort_horizon, "horizon")
        elif seconds <= s.warn_horizon_s:
            action, horizon = "warn", (s.warn_horizon_s, "warning horizon")
        else:
            self._last_action = "ok"
            return decision
        if action == "warn" and not self._warning_due(assessment.time_s, horizon[1]):
            self._last_action = action
            return decision
        self._last_action = action
        decision.action = action
        decision.reason = describe(assessment, *horizon)
        return decision

    def _warning_due(self, time_s: float, horizon: str) -> bool:
        """A warning is due when the last one is old enough, or this one is more urgent (within the
        abort horizon, in warn mode, after one within the warning horizon)."""
        # Not again within warn_every_s, even if the pool went quiet in between: a fast window
        # near its threshold would otherwise warn at every other reading.
        due = (self._last_warn_time is None or time_s - self._last_warn_time >= self.settings.warn_every_s
               or (horizon == "horizon" and self._last_warn_horizon != "horizon"))
        if due:
            self._last_warn_time, self._last_warn_horizon = time_s, horizon
        return due


def sparse_readings_warning(interval_s: Optional[float], option: str) -> Optional[str]:
    """One line for the user when memory may be read less often than every ``DENSE_READINGS_S`` seconds
    (``option`` names the setting), else None. On 600 generated leaks that fill memory in 3 minutes, all 330
    read every 5 s or more often were aborted at least a minute before they died, 113 of 116 read every
    5-10 s, 140 of 154 read every 10-20 s (docs/benchmarks.md).

    Example: ``sparse_readings_warning(20, "memory.interval_s")`` -> "memory.interval_s=20: ..."
    """
    if interval_s is None or interval_s <= DENSE_READINGS_S:
        return None
    return (f"{option}={interval_s:g}: memory may be read only every {interval_s:g} s; a leak that fills memory "
            f"within a few minutes may then be stopped less than a minute before it runs out "
            f"(every {DENSE_READINGS_S:g} s or more often keeps that minute; see docs/leak_guard.md)")


def describe(a: Assessment, horizon_s: float, horizon_name: str = "horizon") -> str:
    """One sentence, naming the pool: how fast memory grows and when it would run out.

    Example: ``gpu0: memory grows 3.1 MiB/step (p<0.001); projected to reach the 80.0 GiB limit
    at step 27010 in 9.5 min (< 15 min horizon)``
    """
    p = "p<0.001" if a.trend_p_value < 0.001 else f"p={a.trend_p_value:.3f}"
    if a.seconds_to_limit is None:
        return f"{a.pool}: memory grows ({p}); no limit known to project to"
    growth = f"{_bytes(a.slope_bytes_per_step)}/step" if a.slope_bytes_per_step else \
        f"{_bytes(a.slope_bytes_per_second * 60)}/min"
    if a.window.get("stairs"):  # a staircase (see detector._Stairs): it dies at a stair
        growth = f"in stairs of {_bytes(a.window['stair_bytes'])} every {_duration(a.window['stair_every_s'])}"
    at_step = f" at step {a.projected_exhaustion_step}" if a.projected_exhaustion_step is not None else ""
    reach = "to reach" if a.window.get("stairs_to_limit", 1) <= 1 else "to leave less than a stair below"
    return (f"{a.pool}: memory grows {growth} ({p}); projected {reach} the {a.limit_bytes / GIB:.1f} GiB limit"
            f"{at_step} in {_duration(a.seconds_to_limit)} (< {_duration(horizon_s)} {horizon_name}); "
            f"now {a.used_bytes / GIB:.1f} GiB, peaks reach {a.peak_headroom_bytes / GIB:.1f} GiB above the floor")


def _bytes(n: float) -> str:
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB / 10:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        minutes = seconds / 60
        return f"{minutes:.0f} min" if minutes == int(minutes) else f"{minutes:.1f} min"
    return f"{seconds / 3600:.1f} h"
