"""The guard's view of a run, replayed: each pool's readings fed to a `MemoryGuard` with the run's settings.

The trends are the guard's, not fitted here; a fresh guard per training process, as in training.
"""

from __future__ import annotations

from tfodtrain.memory.detector import Assessment
from tfodtrain.memory.guard import MemoryGuard
from tfodtrain.memory.policy import GuardSettings, describe
from tfodtrain.report.record import RunRecord
from tfodtrain.units import GIB, MIB


def replay(record: RunRecord) -> None:
    """Feed each pool's readings to a MemoryGuard with the run's settings; a new guard per process."""
    for view in record.pools.values():
        starts = list(record.segment_starts)
        guard = MemoryGuard(record.settings)
        for row in view.rows:
            while starts and row.time_s >= starts[0] - 0.005:  # the trace rounds time_s to 10 ms
                starts.pop(0)
                guard = MemoryGuard(record.settings)
            decision = guard.observe(view.name, row.step, row.time_s, row.used_bytes, row.limit_bytes)
            view.last = decision.assessment
            if view.last is not None and view.last.ready:
                view.shown = view.last
            if decision.action == "abort":
                view.replayed_aborts.append((row.step, decision.reason))


def assessment_text(a: Assessment | None, settings: GuardSettings) -> str:
    """The guard's last word on a pool, in one sentence."""
    if a is None:
        return "not watched"
    if not a.ready:
        return a.note or "not enough readings"
    if a.growing:
        return describe(a, settings.horizon_s)
    return (f"flat: floor {a.floor_bytes / GIB:.2f} GiB, no sustained growth (trend "
            f"{a.slope_bytes_per_second * 60 / MIB:+.2f} MiB/min, confidence of growth {a.trend_confidence:.2f})")
