"""What the report knows of a run: its pools, the markers of what happened, and the run's own files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tfodtrain.memory.detector import Assessment
from tfodtrain.memory.policy import GuardSettings


@dataclasses.dataclass
class Marker:
    """Something that happened at a step (and a time, when known): an abort, a restart, an evaluation."""

    kind: str  # abort | stop | restart | warning | eval
    step: int
    time_s: float | None = None
    label: str = ""
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PoolView:
    """One memory pool: its trace, peaks, and the guard's replayed assessments."""

    name: str
    rows: list  # TraceRow, in file order (a resumed run appends)
    allocator_peaks: list  # (step, time_s, peak_bytes) of the allocator (GPU pools only)
    last: Assessment | None = None  # the guard's assessment at the last reading
    shown: Assessment | None = None  # the latest assessment with a fitted trend (drawn)
    replayed_aborts: list = dataclasses.field(default_factory=list)  # (step, reason) where the replay aborts
    recorded: list = dataclasses.field(default_factory=list)  # the guard's own Assessment at each of its aborts

    def drawn_assessments(self) -> list:
        """The trends the picture shows: what the guard saw at each abort (from its report, whatever the
        detector's version now), and the replay's latest one."""
        drawn = list(self.recorded)
        if self.shown is not None and all(a.step != self.shown.step for a in drawn):
            drawn.append(self.shown)
        return drawn

    @property
    def peak_used(self) -> int:
        used = max(r.used_bytes for r in self.rows)
        return max([used] + [peak for _, _, peak in self.allocator_peaks])

    @property
    def limit(self) -> int:
        return self.rows[-1].limit_bytes


@dataclasses.dataclass
class RunRecord:
    run_dir: Path
    config: dict | None
    metrics: dict | None
    run_info: dict | None
    abort_report: dict | None
    settings: GuardSettings
    settings_note: str
    pools: dict  # name -> PoolView
    markers: list  # Marker
    segment_starts: list  # time_s at which a new training process started (after the first)
    process_ends: list  # the supervisor's restarts.jsonl records (one per ended process)

    def of_kind(self, kind: str) -> list:
        return [m for m in self.markers if m.kind == kind]
