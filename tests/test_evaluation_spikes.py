"""Evaluations the run reports to the leak guard: headroom from the first one on, never a reason to wait.

The guard-level tests replay generated readings (a plateau with 30-s evaluations every 8 minutes, then a
leak that dies at an evaluation; and, with evaluations every 25 minutes that are read but not reported, a
cache that stops minutes after one, the same growth not stopping, and a leak that dies at the next one). The callback test drives the real LeakGuard and MemorySampler with its
background thread; NVML is scripted (no GPU here) so that the evaluation lifts the GPU pool by 4 GiB.
"""

from __future__ import annotations

import random
import time

import pytest

from tfodtrain.memory.guard import MemoryGuard

GIB = 1 << 30
LIMIT = 16 * GIB
EVAL_EVERY, EVAL_S, FIRST_EVAL = 480.0, 30.0, 240.0


def readings(seed: int, leak_per_s: float, spike: float = 0.15, end_s: float = 4000.0):
    """(time, used): a floor at 60% of the limit, noise of 0.5%, readings every 4-6 s, evaluations
    lifting memory by `spike` (share of the limit) for 30 s from 240 s on, and from 300 s a leak of
    `leak_per_s` (share of the limit a second); up to the first reading at the limit."""
    rnd, rows, t = random.Random(seed), [], 0.0
    while t < end_s:
        t += rnd.uniform(4.0, 6.0)
        floor = 0.60 + leak_per_s * max(0.0, t - 300.0)
        in_eval = t >= FIRST_EVAL and (t - FIRST_EVAL) % EVAL_EVERY < EVAL_S
        rows.append((t, int((floor + (spike if in_eval else 0.0) + rnd.gauss(0.0, 0.005)) * LIMIT)))
        if rows[-1][1] >= LIMIT:
            break
    return rows


def replay(rows, report: bool):
    """Abort time (None: none) and warnings; with `report`, each evaluation is reported to the guard as
    the training callback does: after it ended, before its readings reach the guard."""
    guard, reported, warnings = MemoryGuard(), set(), 0
    for index, (t, used) in enumerate(rows):
        start = FIRST_EVAL + (t - FIRST_EVAL) // EVAL_EVERY * EVAL_EVERY
        if report and t >= FIRST_EVAL and start not in reported:
            reported.add(start)
            guard.spike_span(start, start + EVAL_S)
        decision = guard.observe("gpu0", index, t, used, LIMIT)
        warnings += decision.action == "warn"
        if decision.action == "abort":
            return t, warnings
    return None, warnings


@pytest.mark.parametrize("seed", range(4))
def test_a_leak_that_dies_at_its_second_evaluation_is_aborted_a_minute_ahead_whether_the_first_was_read_or_reported(seed):
    # 0.062% of the limit a second from 300 s: the floor is at 86% when the evaluation at 720 s lifts it by
    # 15%. The first evaluation (240 s) falls in the run's first 10 minutes, after the start-up: the
    # readings' spike counts from there on (before 2026-12-05 only after 10 minutes, and this leak was
    # aborted only when the run reported its first evaluation); a report counts the same.
    rows = readings(seed, 0.00062)
    death = rows[-1][0]
    assert 715 < death < 730
    for report in (False, True):
        aborted, _ = replay(rows, report=report)
        assert aborted is not None and death - aborted >= 60, (report, aborted, death)


@pytest.mark.parametrize("seed", range(3))
def test_a_plateau_whose_evaluations_are_reported_is_neither_aborted_nor_warned(seed):
    rows = readings(seed, 0.0, end_s=6 * 3600.0)
    assert max(used for _, used in rows) < LIMIT
    assert replay(rows, report=True) == (None, 0)


def test_a_span_is_measured_from_the_reading_before_it_and_an_allocator_peak_after_it():
    guard = MemoryGuard()
    guard.observe("gpu0", 1, 100.0, 6 * GIB, LIMIT)
    guard.observe("host", 1, 100.0, 2 * GIB, LIMIT)
    guard.spike_span(101.0, 131.0)  # reported after it ended, before its readings reach the guard
    guard.observe("host", 1, 110.0, 3 * GIB, LIMIT)  # a background reading within it (host only)
    guard.observe_many([("gpu0", 2, 140.0, 6 * GIB, LIMIT, 9 * GIB), ("host", 2, 140.0, 2 * GIB, LIMIT, None)])
    told = {pool: [h for _, h in d._spikes.told] for pool, d in guard.detectors.items()}
    assert told == {"gpu0": [3 * GIB], "host": [1 * GIB]}
    assert guard._spans == []  # judged for every pool read before it


# Periodic evaluations, read but not reported (a replay): 8% of the limit for 40 s every 25 minutes.
SPIKE, SPIKE_S, SPIKE_EVERY = 0.08, 40.0, 1500.0


def filling(seed: int, start_s: float, per_s: float, stop_at: float = 2.0, end_s: float = 4 * 3600.0):
    """(time, used): a floor at 60% of the limit that grows by `per_s` of the limit a second from `start_s`
    until it reaches `stop_at` (a cache) or the limit (a leak); the periodic evaluations on top, from
    600 s; noise of 0.5%, readings every 4-6 s; up to the first reading at the limit."""
    rnd, rows, t = random.Random(seed), [], 0.0
    while t < end_s:
        t += rnd.uniform(4.0, 6.0)
        floor = min(stop_at, 0.60 + per_s * max(0.0, t - start_s))
        in_eval = t >= 600.0 and (t - 600.0) % SPIKE_EVERY < SPIKE_S
        rows.append((t, int((floor + (SPIKE if in_eval else 0.0) + rnd.gauss(0.0, 0.005)) * LIMIT)))
        if rows[-1][1] >= LIMIT:
            break
    return rows


@pytest.mark.parametrize("seed", range(3))
def test_a_cache_that_stops_at_85_percent_minutes_after_an_evaluation_is_not_aborted(seed):
    # 25% of the limit in 9 minutes, stopping 3 minutes after the evaluation at 6600 s: with that
    # evaluation's 8% on top the floor would reach the limit within 3 minutes, but the next one is not
    # due for 22 minutes, and without it the cache has 5 minutes left when it stops.
    rows = filling(seed, 6240.0, 0.25 / 540.0, stop_at=0.85)
    assert max(used for _, used in rows) < LIMIT
    assert replay(rows, report=False)[0] is None


@pytest.mark.parametrize("seed", range(3))
def test_the_same_growth_that_does_not_stop_is_aborted_minutes_ahead(seed):
    rows = filling(seed, 6240.0, 0.25 / 540.0)
    death = rows[-1][0]
    assert 7000 < death < 7200  # the floor's noise, not the next evaluation (8100 s), kills it
    aborted, _ = replay(rows, report=False)
    assert aborted is not None and death - aborted >= 120


@pytest.mark.parametrize("seed", range(3))
def test_a_leak_that_dies_at_the_next_evaluation_is_aborted_before_it(seed):
    # From 6700 s, just after an evaluation, at 1.5% of the limit a minute: the floor alone stays below
    # the limit until after 8100 s, where the next evaluation's 8% kills it.
    rows = filling(seed, 6700.0, 0.000255)
    death = rows[-1][0]
    assert 8100 <= death < 8100 + SPIKE_S
    aborted, _ = replay(rows, report=False)
    assert aborted is not None and death - aborted >= 120


def test_spikes_at_a_regular_interval_leave_the_time_before_the_next_one_quiet():
    from tfodtrain.memory.detector import SPIKE_BIN_S, SPIKE_QUIET_SHARE, _Spikes

    def spikes(*times, height=GIB):
        kept = _Spikes()
        for t in times:
            kept.tell(t, height)
        return kept

    assert spikes(1000.0, 2500.0).quiet_until(2600.0) is None  # two: no interval yet
    quiet = spikes(1000.0, 2500.0, 4000.0).quiet_until(4100.0)
    assert quiet == 4000.0 + SPIKE_QUIET_SHARE * 1500.0 - SPIKE_BIN_S
    # one missed between two others: a gap twice as long keeps the interval seen twice
    assert spikes(1000.0, 2500.0, 4000.0, 7000.0).quiet_until(7100.0) == 7000.0 + SPIKE_QUIET_SHARE * 1500.0 - SPIKE_BIN_S
    assert spikes(1000.0, 2500.0, 5500.0).quiet_until(5600.0) is None  # an interval seen once
    assert spikes(1000.0, 2500.0, 3700.0).quiet_until(3800.0) is None  # 25 then 20 minutes: no interval
    assert spikes(1000.0, 1300.0, 1600.0).quiet_until(1700.0) is None  # 5 minutes apart: not evaluations
    kept = spikes(1000.0, 2500.0, 4000.0)
    kept.tell(4100.0, 0.2 * GIB)  # a small one does not count
    assert kept.quiet_until(4200.0) == quiet
    for t in (4300.0, 4360.0, 4420.0, 4480.0):  # high in four bins in a row: a rise under noise, no spike
        kept.tell(t, GIB)
    assert kept.quiet_until(4500.0) is None


tf = pytest.importorskip("tensorflow")


class ScriptedNvml:
    """NVML stand-in (mocked: no GPU here): one card whose per-process bytes the test sets."""

    def __init__(self, process_bytes: int):
        self.process_bytes = process_bytes

    def read(self):
        from tfodtrain.memory.probes import GpuReading

        used = self.process_bytes + GIB
        return [GpuReading(0, 0, "Scripted", "GPU-scripted", used_bytes=used, total_bytes=LIMIT,
                           free_bytes=LIMIT - used, process_bytes=self.process_bytes, other_processes_bytes=0)]

    def status(self):
        return {"available": True}


def test_the_callback_reports_each_evaluation_with_the_readings_clock(tmp_path):
    from tfodtrain.callbacks.base import RunContext
    from tfodtrain.callbacks.guard import LeakGuard
    from tfodtrain.callbacks.monitor import MemorySampler

    nvml = ScriptedNvml(2 * GIB)
    sampler = MemorySampler(interval_steps=1, run_dir=tmp_path, nvml_probe=nvml, interval_s=0.05)
    run = RunContext(run_dir=tmp_path, config={}, checkpointer=None,
                     summary_writer=tf.summary.create_file_writer(str(tmp_path / "tensorboard")),
                     initial_step=0, total_steps=10, memory=sampler)
    guard = LeakGuard(mode="warn", insurance_every_s=None)
    guard.attach(run)
    guard.on_train_begin()
    try:
        guard.on_train_batch_end(0)  # step 1's reading: 2 GiB
        # An evaluation (as PeriodicEvaluation runs one): 6 GiB while it runs. A reading is stamped before its
        # probes read, so the bytes change under the sampler's lock: no reading in flight straddles the edges.
        with sampler._lock:
            start = time.monotonic()
            nvml.process_bytes = 6 * GIB
        time.sleep(0.5)  # the background thread reads meanwhile
        with sampler._lock:
            nvml.process_bytes = 2 * GIB
            end = time.monotonic()
        run.eval_spans.append((start, end))
        time.sleep(0.1)
        guard.on_train_batch_end(1)
    finally:
        guard.on_train_end()
    told = guard.guard.detectors["gpu0"]._spikes.told
    assert [h for _, h in told] == [4 * GIB]
    assert told[0][0] == pytest.approx(sampler.run_time_s(run.eval_spans[0][1]))
