"""The leak guard: one trend detector and one policy per memory pool, one decision per reading.

This is what the training callback calls at every reading and what the replay tool runs on
recorded traces, with the same settings, so a replay shows what the callback would have done.

Example::

    guard = MemoryGuard(GuardSettings())
    decision = guard.observe("gpu0", step=1200, time_s=905.2, used_bytes=31 << 30, limit_bytes=80 << 30)
    decision = guard.observe_many([("gpu0", 1200, 905.2, 31 << 30, 80 << 30),
                                   ("host", 1200, 905.2, 9 << 30, 64 << 30)])
    if decision.action == "abort":
        ...  # checkpoint, log decision.reason, exit 75
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from typing import Dict, Iterable, List, Optional, Tuple

from tfodtrain.memory.detector import Assessment, TrendDetector
from tfodtrain.memory.policy import Decision, GuardPolicy, GuardSettings
from tfodtrain.units import MIB

log = logging.getLogger(__name__)

Reading = Tuple  # pool, step, time_s, used_bytes, limit_bytes[, peak_bytes: the highest since the reading before]


class MemoryGuard:
    """Watch any number of memory pools; a pool's detector is created when it is first seen.

    ``assessments`` keeps the last assessment of every pool (for reports and logs).
    """

    def __init__(self, settings: Optional[GuardSettings] = None):
        self.settings = settings or GuardSettings()
        self.detectors: Dict[str, TrendDetector] = {}
        self.policies: Dict[str, GuardPolicy] = {}
        self.assessments: Dict[str, Assessment] = {}
        self._latest: Dict[str, int] = {}  # pool -> its latest reading (bytes)
        # spans the run reported (start, end, pool -> reading before, pool -> highest within), until judged
        self._spans: List[Tuple[float, float, Dict[str, int], Dict[str, int]]] = []

    def _detector(self, pool: str) -> TrendDetector:
        detector = self.detectors.get(pool)
        if detector is None:
            s = self.settings
            detector = TrendDetector(
                pool, chunk_seconds=s.chunk_seconds, fast_chunk_seconds=s.fast_chunk_seconds,
                window_chunks=s.window_chunks, fast_min_chunks=s.fast_min_chunks, startup_s=s.startup_s,
                warmup_steps=s.warmup_steps, warmup_s=s.warmup_s, alpha=1.0 - s.confidence,
                sustain_ratio=s.sustain_ratio, min_readings=s.min_readings,
                projection_confidence=s.projection_confidence, long_lead_s=max(0.0, s.long_horizon_s - s.horizon_s))
            self.detectors[pool] = detector
            self.policies[pool] = GuardPolicy(s)
        return detector

    def spike_span(self, start_s: float, end_s: float) -> None:
        """The run reports a span of its own that lifts memory for a while, an evaluation, on the
        readings' clock. With the first reading of a pool after it, the highest reading within it
        (or the peak the reading after it reports) above the last reading before it becomes a spike
        of that pool's detector (``TrendDetector.note_spike``): the guard is more careful about the
        next one, never blinder. The readings alone find such spikes only after the run's start and
        when several readings fall on them.

        Example: ``guard.spike_span(1800.0, 1830.0)`` after an evaluation, then readings as usual.
        """
        if self.settings.mode != "off" and end_s > start_s:
            self._spans.append((start_s, end_s, dict(self._latest), {}))

    def observe(self, pool: str, step: int, time_s: float, used_bytes: int, limit_bytes: int,
                peak_bytes: Optional[int] = None) -> Decision:
        """Feed one reading of one pool; returns the decision for that pool. ``peak_bytes``: the
        highest the pool went since its reading before, where known (an allocator's peak)."""
        if self.settings.mode == "off":
            return Decision("ok", "", None, pool)
        if self._spans:
            self._judge_spans(pool, time_s, used_bytes, peak_bytes)
        self._latest[pool] = used_bytes
        assessment = self._detector(pool).update(step, time_s, used_bytes, limit_bytes)
        self.assessments[pool] = assessment
        return self.policies[pool].decide(assessment)

    def observe_many(self, readings: Iterable[Reading]) -> Decision:
        """Feed one reading per pool (same step); returns the most urgent decision: abort over
        warn over ok, and among equals the pool projected to run out first."""
        best: Optional[Decision] = None
        for pool, step, time_s, used_bytes, limit_bytes, *peak in readings:
            decision = self.observe(pool, step, time_s, used_bytes, limit_bytes, *peak)
            if best is None or _more_urgent(decision, best):
                best = decision
        return best if best is not None else Decision()

    def _judge_spans(self, pool: str, time_s: float, used: int, peak: Optional[int]) -> None:
        for start, end, before, highest in self._spans:
            if time_s < start:
                before[pool] = used  # a reading before the span, observed after it was reported
            elif pool not in before:
                continue  # no reading of this pool before the span: nothing to measure it against
            elif time_s <= end:
                highest[pool] = max(highest.get(pool, used), used, peak or 0)
            else:  # the first reading after the span; its peak since the reading before covers the span's end
                height = max(highest.get(pool, 0), peak or 0) - before.pop(pool)
                self._detector(pool).note_spike(end, height)
        # judged for every pool read before it (a pool no longer read: given up after an hour)
        self._spans = [span for span in self._spans if span[2] and time_s - span[1] < 3600.0]

    def state_scalars(self, pools: Iterable[str]) -> Dict[str, float]:
        """TensorBoard scalars of the guard's state for ``pools`` (those with a ready assessment):
        ``guard/<pool>/slope_mib_per_min``, ``confidence`` and, while growing, ``seconds_to_limit``.
        The training callback and the outside watch write the same tags from here."""
        scalars: Dict[str, float] = {}
        for pool in pools:
            a = self.assessments.get(pool)
            if a is None or not a.ready:
                continue
            scalars[f"guard/{pool}/slope_mib_per_min"] = a.slope_bytes_per_second * 60 / MIB
            scalars[f"guard/{pool}/confidence"] = a.trend_confidence
            if a.growing and a.seconds_to_limit is not None and math.isfinite(a.seconds_to_limit):
                scalars[f"guard/{pool}/seconds_to_limit"] = a.seconds_to_limit
        return scalars


def abort_fields(decision: Decision) -> dict:
    """The fields every ``abort_report.json`` carries about the abort decision and its assessment
    (the callback and the watch add their own: step, time, pools, checkpoint, ...)."""
    a = decision.assessment
    return {
        "reason": decision.reason,
        "pool": decision.pool,
        "used_bytes": a.used_bytes,
        "limit_bytes": a.limit_bytes,
        "slope_bytes_per_step": a.slope_bytes_per_step,
        "slope_bytes_per_second": a.slope_bytes_per_second,
        "projected_exhaustion_step": a.projected_exhaustion_step,
        "projected_exhaustion_time_s": a.projected_exhaustion_time_s,
        "seconds_to_limit": a.seconds_to_limit,
        "assessment": a.to_dict(),
    }


def run_abort_command(command: Optional[str], report: dict, report_path, run_dir) -> None:
    """Run ``guard.on_abort_command`` (a shell command; none: nothing) after an abort, with the report's
    path, the run dir, the reason and the step in its environment. It may take 2 minutes; its failure
    is a logged warning: the abort itself is done."""
    if not command:
        return
    env = dict(os.environ, TFODTRAIN_ABORT_REPORT=str(report_path), TFODTRAIN_RUN_DIR=str(run_dir),
               TFODTRAIN_ABORT_REASON=report["reason"], TFODTRAIN_ABORT_STEP=str(report["step"]))
    try:
        done = subprocess.run(command, shell=True, env=env, timeout=120)
        if done.returncode:
            log.warning("on_abort_command exited %d: %s", done.returncode, command)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("on_abort_command failed (%s): %s", error, command)


def _more_urgent(a: Decision, b: Decision) -> bool:
    if a.urgency != b.urgency:
        return a.urgency > b.urgency
    return _seconds_left(a) < _seconds_left(b)


def _seconds_left(decision: Decision) -> float:
    a = decision.assessment
    if a is None or a.seconds_to_limit is None:
        return float("inf")
    return a.seconds_to_limit
