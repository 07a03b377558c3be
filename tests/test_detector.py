"""Fast tests of the framework-free leak detector, the guard policy and the multi-pool guard."""

from __future__ import annotations

import json
import math
import random

import pytest

from tfodtrain.memory import detector
from tfodtrain.memory.detector import (LONG_WINDOW_S, NOISE_PEAK_Z, TrendDetector, _change_point, _Chunk, _lags,
                                       _noise_reach, _Spikes, _stalled, _steps_up_past_a_spike, _too_few_runs,
                                       fit_trend, mann_kendall_p, theil_sen_slope)
from tfodtrain.memory.guard import MemoryGuard, run_abort_command
from tfodtrain.memory.policy import Decision, GuardPolicy, GuardSettings, sparse_readings_warning
from tfodtrain.memory.tracegen import generate_family_trace

GIB = 1 << 30
MIB = 1 << 20


def stream(level, seconds=6 * 3600, every_s=10.0, s_per_step=0.5, noise=0.1 * GIB, seed=0):
    """(step, time_s, used_bytes) every ``every_s`` seconds; ``level(t)`` in bytes plus noise."""
    rng = random.Random(seed)
    t = 20.0
    while t <= seconds:
        yield int(t / s_per_step), round(t, 2), max(0, int(level(t) + rng.gauss(0, noise)))
        t += every_s


def first_abort(level, limit=40 * GIB, settings=None, **kw):
    """(step, time_s, decision) of the first abort, or None; also stops at the limit (the run dies)."""
    guard = MemoryGuard(settings or GuardSettings())
    for step, t, used in stream(level, **kw):
        if used >= limit:
            return None
        decision = guard.observe("gpu0", step, t, used, limit)
        if decision.action == "abort":
            return step, t, decision
    return None


def warm(level, t, base=12 * GIB):
    """Allocator warm-up: memory climbs to ``base`` in the first minutes."""
    return base * (1 - math.exp(-t / 90.0)) + level


# --- statistics ------------------------------------------------------------------------------


def test_theil_sen_ignores_outliers_and_bounds_slope_below():
    xs = list(range(24))
    ys = [2.0 * x for x in xs]
    ys[5] = 500.0  # a spike
    ys[17] = -300.0  # a dip
    slope, low = theil_sen_slope(xs, ys)
    assert slope == pytest.approx(2.0)
    assert 0 < low <= slope


def test_mann_kendall():
    assert mann_kendall_p(list(range(24))) < 1e-6
    assert mann_kendall_p([5.0] * 24) == 1.0
    assert mann_kendall_p(list(range(24, 0, -1))) > 0.99
    noise = random.Random(1)
    assert mann_kendall_p([noise.gauss(0, 1) for _ in range(24)]) > 0.001


# --- the detector on shapes healthy runs show ----------------------------------------------


def test_linear_leak_is_aborted_well_before_the_limit():
    limit = 40 * GIB
    rate = 20 * GIB / (4 * 3600)  # 20 GiB in 4 h
    hit = first_abort(lambda t: warm(rate * max(0, t - 300), t), limit=limit)
    assert hit is not None
    step, t, decision = hit
    death_t = 300 + (limit - 12 * GIB) / rate
    assert death_t - t >= 300  # minutes ahead, not seconds
    a = decision.assessment
    assert a.growing and a.seconds_to_limit <= GuardSettings().long_horizon_s and a.window_seconds >= 3600
    assert a.projected_exhaustion_step > step and a.projected_exhaustion_time_s > t
    assert decision.reason.startswith("gpu0: memory grows")
    assert "40.0 GiB limit" in decision.reason
    json.dumps(a.to_dict())  # reports and the abort file take it as is


def test_stable_plateau_close_to_the_limit_is_not_aborted():
    limit = 40 * GIB
    assert first_abort(lambda t: warm(0, t, base=38.6 * GIB), limit=limit, noise=0.15 * GIB) is None


@pytest.mark.parametrize("seed,tau_s", [(0, 1500.0), (1, 3000.0)])
def test_a_noisy_plateau_whose_readings_stay_below_the_limit_is_not_projected_there_already(seed, tau_s):
    """89% of the limit, noise sigma 2% of it, the last 3% of the start settling over an hour or two: the
    readings reach 96-97% and never the limit. Peaks above chunk floors (each a chunk's deepest dip) plus a
    noise sigma put the band above the limit, so any significant drift of the floor was projected to run
    out "in 0 s" (two of these aborted); the band counts no higher than the readings seen."""
    limit, rng, guard = 12 * GIB, random.Random(seed), MemoryGuard()
    for i in range(5400):  # a reading every 4 s for 6 hours
        t = 20.0 + 4.0 * i
        used = int(10.74 * GIB - 0.03 * limit * math.exp(-t / tau_s) + rng.gauss(0, 0.24 * GIB))
        assert used < limit
        assert guard.observe("gpu0", int(t), t, used, limit).action != "abort", t


def test_one_time_step_up_is_not_a_trend():
    jump = lambda t: 14 * GIB if t > 3 * 3600 else 0  # noqa: E731
    assert first_abort(lambda t: warm(jump(t), t, base=18 * GIB), limit=40 * GIB) is None


def test_the_chunk_that_holds_a_step_up_does_not_count_the_step_as_a_peak():
    """Readings 1 GiB above each chunk's floor; a 15 GiB step up inside chunk 2. That chunk's floor is
    from before the step and its highest reading from after: measured against the floors around it
    before the step, the step itself counted as a 16 GiB peak, and the window's band of readings
    reached far above where any reading went."""
    chunks = []
    for i in range(24):
        floor = 45 * GIB if i <= 2 else 60 * GIB + (i % 3) * 200 * MIB
        high = 61 * GIB if i == 2 else floor + GIB
        t = 60.0 * i
        chunks.append(_Chunk(i, 10 * i, t, 10 * i + 9, t + 59, floor, t + 5, high, t + 40, count=10))
    trend = fit_trend(chunks, 12, 0.2, 2.326)
    assert trend.headroom < 1.6 * GIB


def test_a_plateau_whose_floor_drifts_by_chance_for_hours_close_to_the_limit_is_not_aborted():
    """A 27-hour plateau at 90% of 40 GiB with evaluation spikes and a GC sawtooth, its readings up to
    98.8% of the limit (the generated high_plateau trace of seed 909 * 1009 + 3). Over one 6.4-hour
    window its floors rose 0.8 GiB, p = 0.0009, enough to be projected past the limit "in 0 s"; the
    rise is 2.4 sigmas of the floors' own scatter, no growth."""
    trace = generate_family_trace("high_plateau", 909 * 1009 + 3)
    assert not trace.leak
    guard = MemoryGuard()
    for row in trace.rows:
        assert guard.observe("gpu0", row.step, row.time_s, row.used_bytes, row.limit_bytes).action != "abort", row.time_s


def test_gc_sawtooth_and_eval_spikes_are_not_leaks():
    sawtooth = lambda t: 4 * GIB * ((t % 900) / 900)  # noqa: E731
    spikes = lambda t: 8 * GIB if t % 1800 < 60 else 0  # noqa: E731
    assert first_abort(lambda t: warm(sawtooth(t) + spikes(t), t, base=14 * GIB), limit=32 * GIB) is None


def test_leak_that_stops_well_below_the_limit_is_not_aborted():
    rate = 40 * GIB / (6 * 3600)  # would fill the card in ~6 h, but stops after 12 GiB
    leak = lambda t: min(12 * GIB, rate * max(0, t - 2 * 3600))  # noqa: E731
    assert first_abort(lambda t: warm(leak(t), t, base=10 * GIB), limit=48 * GIB, seconds=10 * 3600) is None


def test_leak_under_a_sawtooth_is_caught_before_a_tooth_reaches_the_limit():
    limit = 40 * GIB
    rate = 20 * GIB / (5 * 3600)
    sawtooth = lambda t: 5 * GIB * ((t % 300) / 300)  # noqa: E731
    level = lambda t: warm(rate * t + sawtooth(t), t)  # noqa: E731
    hit = first_abort(level, limit=limit, every_s=5.0, noise=0.05 * GIB)
    assert hit is not None
    death = next(t for _, t, used in stream(level, every_s=5.0, noise=0.05 * GIB) if used >= limit)
    assert death - hit[1] >= 60  # the run dies at a tooth's peak: the abort comes a minute before


# --- fast leaks: filling memory in minutes, judged from the first minutes ------------------


@pytest.mark.parametrize("minutes", [3, 5, 10])
@pytest.mark.parametrize("start_s", [120.0, 1800.0])
def test_a_leak_that_fills_memory_in_minutes_is_aborted_a_minute_ahead(minutes, start_s):
    limit, base = 40 * GIB, 16 * GIB
    rate = (limit - base) / (minutes * 60)
    level = lambda t: warm(rate * max(0.0, t - start_s), t, base=base)  # noqa: E731
    kw = dict(every_s=5.0, noise=0.3 * GIB, seconds=start_s + 2 * minutes * 60, seed=minutes)
    hit = first_abort(level, limit=limit, **kw)
    death = next(t for _, t, used in stream(level, **kw) if used >= limit)
    assert hit is not None and death - hit[1] >= 60, (hit and hit[1], death)
    assert hit[2].assessment.window["fast"] and hit[1] > start_s


@pytest.mark.parametrize("seed", [0, 7])
def test_a_fast_leak_read_every_second_under_heavy_noise_is_aborted_minutes_ahead(seed):
    # Read every second, the highest of three minutes of readings stands 3.5 sigmas above their mean, and a
    # 5-s chunk's floor 1.2 below it: 3 sigmas above the floors (enough for readings every 5 s or rarer) left
    # these leaks 90 and 71 s.
    limit, base, start_s = 16 * GIB, 8 * GIB, 1800.0
    rate = (limit - base) / (20 * 60)
    level = lambda t: warm(rate * max(0.0, t - start_s), t, base=base)  # noqa: E731
    kw = dict(every_s=1.0, noise=0.025 * limit, seconds=start_s + 40 * 60, seed=seed)
    hit = first_abort(level, limit=limit, **kw)
    death = next(t for _, t, used in stream(level, **kw) if used >= limit)
    assert hit is not None and death - hit[1] >= 150, (hit and hit[1], death)


def test_a_fast_windows_headroom_grows_with_how_often_memory_is_read():
    # one reading a chunk, every 20 s: no more than NOISE_PEAK_Z; every 5 s, about that; every second, more
    assert _noise_reach(readings=12, chunks=12, span_s=240.0) < NOISE_PEAK_Z
    assert abs(_noise_reach(readings=36, chunks=36, span_s=180.0) - NOISE_PEAK_Z) < 0.1
    every_second = _noise_reach(readings=120, chunks=24, span_s=120.0)  # 5 readings a 5-s chunk
    assert 4.4 < every_second < 4.8
    assert _noise_reach(readings=480, chunks=24, span_s=480.0) > every_second  # 20 a 20-s chunk: lower floors


def test_the_start_up_is_discounted_only_while_the_floor_rises_and_at_most_two_minutes():
    detector = TrendDetector("gpu0")
    notes = [detector.update(i, 5.0 * i, int((10 + 0.1 * i) * GIB), 40 * GIB).note for i in range(1, 40)]
    assert notes[0].startswith("start-up") and notes[22].startswith("start-up")  # 115 s, still rising
    assert not any(note.startswith("start-up") for note in notes[24:])  # capped at 120 s
    flat = TrendDetector("gpu0")
    notes = [flat.update(i, 5.0 * i, int(10 * GIB), 40 * GIB).note for i in range(1, 20)]
    assert not notes[10].startswith("start-up")  # levelled off: judged from the first minute


def test_a_leak_that_starts_20_s_into_a_flat_start_is_aborted_before_the_limit():
    """The watch's leaking child: flat for 20 s, then 30 MiB/s towards a 2.5 GiB budget, read every 2 s. The
    flat readings end the start-up discount; a start-up judged only after 30 s saw the leak already rising
    and lasted its full 2 minutes, past the budget."""
    limit = 2500 * MIB
    level = lambda t: 100 * MIB + 30 * MIB * max(0.0, t - 40.0)  # noqa: E731 (the readings start at 20 s)
    hit = first_abort(level, limit=limit, every_s=2.0, noise=2 * MIB, seconds=300, s_per_step=0.1)
    assert hit is not None
    death = 40.0 + (limit - 100 * MIB) / (30 * MIB)
    assert death - hit[1] >= 20, hit


def test_a_quiet_start_that_creeps_up_by_a_mebibyte_still_ends_the_start_up():
    """The watch's leaking child as one suite run read it: 14.7 MB, then 15.5, then 16.5 MB at 17 s (a 1-MiB
    creep, no noise), then 30 MiB/s from 20 s towards a 2.5 GiB budget. Eight quiet readings that each rise
    by a little are a significant rise to Mann-Kendall: the start-up discount ran on into the leak, for its
    full 2 minutes, and the child died at 103 s, never aborted. A rise of under 0.5% of the limit ends it."""
    limit = 2500 * MIB
    times = [0.7, 5.4] + [5.4 + 2.0 * i for i in range(1, 60)]
    used = [int(14.7e6), int(15.5e6)] + [int(15.5e6)] * 4 + [int(16.5e6)] * 3
    used += [int(16.5e6 + 30 * MIB * (t - 20.0)) for t in times[len(used):]]
    guard, abort_s = MemoryGuard(), None
    for step, (t, u) in enumerate(zip(times, used), start=1):
        if u >= limit:
            break
        if guard.observe("host", step, t, u, limit).action == "abort":
            abort_s = t
            break
    death_s = 20.0 + (limit - 16.5e6) / (30 * MIB)
    assert abort_s is not None and death_s - abort_s >= 30, abort_s


def test_a_noisy_ramp_does_not_end_the_start_up_by_chance():
    """The allocator's start on a noisy card (sigma 1.75% of the limit, a reading a second): eight readings
    on the ramp may set no new high and show no significant rise by chance. The start-up ended there and
    the rest of the ramp was aborted as a fast leak (3 of these 6 seeds); it must also bound its pace."""
    level = lambda t: 72 * GIB * (1 - 0.6 * math.exp(-t / 80.0))  # noqa: E731
    hits = [first_abort(level, limit=80 * GIB, every_s=1.1, noise=1.4 * GIB, seconds=900, seed=seed) for seed in range(6)]
    assert hits == [None] * 6, [hit and hit[1] for hit in hits]


def _until_abort(trace, until_s: float = math.inf):
    """(guard, decision) of the defaults replaying ``trace`` up to its first abort (None: no abort up to ``until_s``)."""
    guard = MemoryGuard()
    for row in trace.rows:
        if row.time_s > until_s:
            break
        decision = guard.observe("gpu0", row.step, row.time_s, row.used_bytes, row.limit_bytes)
        if decision.action == "abort":
            return guard, decision
    return guard, None


def family_abort(family: str, seed: int, until_s: float, **draw):
    """Time of the defaults' first abort on a generated family trace up to ``until_s``, or None."""
    _, decision = _until_abort(generate_family_trace(family, seed, **draw), until_s)
    return decision and decision.assessment.time_s


def test_a_start_that_levels_off_is_judged_by_the_lowest_level_that_fits_it_as_well():
    """A plateau at 91% of the limit, reached by a slow, noisy start (time constant about 80 s): the best
    fit's level overshoots (15.8 of 16 GiB, where it levels at 14.5; a time constant 25% shorter fits as
    well and levels at 15.1), and the rest of the start was aborted as a fast leak."""
    assert family_abort("high_plateau", 4444 * 1009 + 3, 600) is None


def test_a_start_that_takes_minutes_to_level_off_is_a_start_not_a_fast_leak():
    """Allocators and first evaluations may take minutes to reach their plateau: the starts of long runs' traces
    level off with time constants up to about 130 s. Plateaus at 88-94% of the limit reached so (100-150 s) were
    aborted 3-4 minutes in, 3 of these 12, while the curves tried for the start bent over within 2 minutes at most.
    They now bend over within 3.8 minutes."""
    hits = {seed: family_abort("high_plateau", seed, 1500, ranges={"start_tau_s": (100, 150)}) for seed in range(12)}
    assert all(hit is None for hit in hits.values()), hits


def test_residuals_in_a_few_long_runs_of_one_sign_are_a_shape_the_curve_missed():
    """A curve through a fast start and a leak's line after it leaves residuals below, above, below it in long runs;
    scatter about the right curve changes sign at random."""
    rng = random.Random(3)
    scatter = [rng.gauss(0, 1) for _ in range(40)]
    assert not _too_few_runs(scatter)
    kinked = [-1.0] * 12 + [1.0] * 14 + [-1.0] * 14
    assert _too_few_runs([r + 0.3 * e for r, e in zip(kinked, scatter)])
    assert not _too_few_runs([1.0, -1.0, -1.0, 1.0])  # too few to tell


@pytest.mark.parametrize("seed", [12121 * 1009 + 5, 12323 * 1009 + 4])
def test_a_slow_start_under_heavy_noise_is_not_held_to_a_pace_its_noise_allows(seed):
    """Plateaus at 90% of the limit reached by a start with a time constant of about 90 s, under noise
    of 3% of the limit (and a GC sawtooth): the last third of the start's bins rose 1-3%/min faster
    than the curve, one and two standard errors of their pace, and the start was taken for a leak after
    it and aborted at 6-9 minutes. Its pace must now exceed the curve's by three standard errors."""
    assert family_abort("high_plateau", seed, 1800) is None


def test_a_noisy_leak_that_continues_the_start_is_not_taken_for_a_start_with_a_step():
    """A 3-minute leak from 2 minutes into the run, continuing the start's rise under noise of 3-4.5% of
    the limit, read every 7.5 s. The start's fit is tried again without its largest jump (an evaluation
    spike or a step on top of the rise): taken out, a rise of 7.5% of the limit between two readings, less
    than two sigmas of their difference, left a ramp that bent over, and the leak was taken for the start
    until 45 s before it died. A jump taken out must stand out of the noise."""
    trace = generate_family_trace("leak_3min", 7272 * 1009 + 1)
    abort = family_abort("leak_3min", 7272 * 1009 + 1, math.inf)
    assert abort is not None and trace.rows[-1].time_s - abort >= 60.0, abort


def test_the_few_latest_bins_of_a_start_may_stray_from_its_curve_by_their_noise():
    """A plateau at 92% of 80 GiB, read every 14 s: 4 minutes in, the median of the start's three latest
    bins lay 1.1 noise sigmas above its curve (the median of three readings strays a sigma one time in
    fifteen, and the check runs at every bin). The start was no longer taken for one, and the fast
    windows' growth, seen all along, aborted it "in 2.0 min". The latest bins' median may now stray by
    two of its standard errors."""
    assert family_abort("high_plateau", 13131 * 1009 + 1, 1800) is None


def test_the_tail_of_the_start_is_not_growth_to_the_long_windows():
    """A plateau at 92% of 48 GiB under noise of 2.4% of the limit, reached by a start with a time
    constant of about 90 s. The 24-minute window began after the start-up (2 minutes) and, when it
    first held enough chunks at 14 minutes, fitted the start's tail as growth of 1%/min and aborted
    it, "in 3 s". A start that levelled off in the first ten minutes is not in the long windows."""
    assert family_abort("high_plateau", 12626 * 1009 + 4, 3 * 3600) is None


def test_the_tail_of_the_start_is_not_growth_to_the_fast_windows():
    """A plateau at 92% of the limit reached by a start with a time constant of about 80 s, under a GC
    sawtooth of 2% every 12 minutes (its first ramp under way). The start levelled off in its first ten
    minutes, but the 8-minute fast window still held its tail (7% of the limit from 200 s on) and, its
    settling gate shut at 10 minutes, aborted it at 628 s. The fast windows now judge growth only from
    where the start's curve came within the noise of its level."""
    assert family_abort("high_plateau", 605305 * 1009 + 1, 1800) is None


@pytest.mark.parametrize("seed", [605305 * 1009 + 5, 900014 * 1009 + 3])
def test_a_starts_pace_is_judged_by_four_standard_errors_and_the_readings_own_scatter(seed):
    """Plateaus at 89-90% of the limit, reached by starts with time constants of 60-90 s under a GC
    sawtooth's first ramp: at one bin of the first ten minutes the latest third of the start's bins rose
    three standard errors faster than its curve, with the noise, estimated from a few dozen changes,
    20-35% low by chance; the settling gate opened for that bin and the fast windows' growth, seen all
    along, aborted them at 290 s and 442 s. The test runs at every bin: the pace must now exceed the
    curve's by four standard errors, from the larger of that estimate and the bins' own scatter."""
    assert family_abort("high_plateau", seed, 1800) is None


def test_chunk_floors_that_drift_apart_from_their_mean_are_not_growth():
    """A plateau at 90% whose noise narrows from 2.5% to 1% of the limit over half an hour: the chunks' deepest
    dips rise while their mean stays put. Aborted in 7 of these 8 seeds before the means had to rise too."""
    def run(seed):
        rng, guard, limit, t = random.Random(seed), MemoryGuard(), 40 * GIB, 20.0
        while t < 3600:
            sigma = 0.025 - 0.015 * min(1.0, max(0.0, (t - 600) / 1800))
            used = int(limit * (0.9 + rng.gauss(0, sigma)))
            if used < limit and guard.observe("gpu0", int(t), t, used, limit).action == "abort":
                return t
            t += 2.0
        return None

    hits = [run(seed) for seed in range(8)]
    assert hits == [None] * 8, hits


def test_a_run_settling_after_a_slow_start_near_the_limit_is_not_aborted():
    # the allocator grows into a working set 3% below the limit for 4 minutes
    level = lambda t: 38.8 * GIB * (1 - 0.8 * math.exp(-t / 70.0))  # noqa: E731
    assert first_abort(level, limit=40 * GIB, every_s=4.0, noise=0.02 * GIB, seconds=3 * 3600) is None


def test_an_evaluation_spike_near_the_limit_is_not_a_fast_leak():
    spikes = lambda t: 7 * GIB if (t + 700) % 1500 < 50 else 0  # noqa: E731
    assert first_abort(lambda t: warm(spikes(t), t, base=30 * GIB), limit=40 * GIB, every_s=3.0,
                       noise=0.3 * GIB, seconds=8 * 3600) is None


@pytest.mark.parametrize("family, seed, until_s", [("cache_fill", 23737 * 1009 + 1, 3000),
                                                   ("eval_spikes", 17272 * 1009 + 3, 9000),
                                                   ("fragmentation_creep", 22424 * 1009 + 3, 23400),
                                                   ("one_time_step", 27474 * 1009 + 3, 45900),
                                                   ("fragmentation_creep", 30303 * 1009 + 0, 50000)])
def test_an_evaluation_spike_like_those_remembered_is_not_a_fast_leaks_first_minute(family, seed, until_s):
    """Evaluation spikes of 7-10% of the limit for about a minute, under noise of 1.5-2.7%: the readings
    climbing to the spike look like a ramp, and a fast window took it for a leak's first minute (aborted
    at 2652, 8756, 23323 and 45818 s). Growth that stands no higher than the spikes remembered, after readings
    that did not rise a minute before, now waits until it outlasts a spike or outgrows one. The last one's
    latest three readings stood 13.5% above those before, 10.2% remembered plus 2.1 noise sigmas (1.5%):
    three sigmas are allowed. The last: a spike of 6% under noise of 2%, whose minute before it stood 1.3% above
    the readings before (within their scatter; 27% of the rise since, where a leak's is about all of it): with a
    quarter as the bound it was aborted at 49820 s; now half."""
    assert family_abort(family, seed, until_s) is None


@pytest.mark.parametrize("minutes", [5, 10, 20])
def test_a_fast_leak_after_evaluation_spikes_as_high_as_its_first_minutes_is_aborted_a_minute_ahead(minutes):
    """Spikes of 10% of the limit every 25 minutes, remembered when a leak starts at 2 hours and more, under
    noise of 2%: the leak's first minutes rise no higher than a spike. It rose a minute earlier too, which
    a spike does not: it is not held back as one (a check of the rise a minute before against two noise
    sigmas alone held back 20-minute leaks for good: one of these six died 45 s after its abort)."""
    limit, base = 40 * GIB, 24 * GIB
    for seed in range(6):
        start, rate = 7200.0 + 300 * seed, (limit - base) / (minutes * 60)
        level = lambda t: base + (4 * GIB if (t - 600) % 1500 < 50 else 0) + rate * max(0.0, t - start)  # noqa: E731
        kw = dict(every_s=3.0, noise=0.8 * GIB, seconds=start + 3 * minutes * 60, seed=seed)
        hit = first_abort(level, limit=limit, **kw)
        death = next(t for _, t, used in stream(level, **kw) if used >= limit)
        assert hit is not None and death - hit[1] >= 60, (seed, hit and hit[1], death)


@pytest.mark.parametrize("seed", [12525 * 1009 + 5, 20404 * 1009 + 4])
def test_a_fast_leak_whose_quarters_fail_one_fit_in_three_by_chance_is_confirmed_by_three_of_four(seed):
    """3-minute leaks from 30 minutes into the run, under noise of 1.8-2% of the limit, read every 7 s: the
    fast windows' rising-quarters test failed one fit in two or three, and each failure started the streak
    of 3 fits in a row over. They were aborted 50 and 68 s before they died (99 and 105 s now)."""
    trace = generate_family_trace("leak_3min", seed)
    abort = family_abort("leak_3min", seed, math.inf)
    assert abort is not None and trace.rows[-1].time_s - abort >= 90.0, abort


def test_a_leak_that_begins_as_the_start_levels_off_is_no_start_when_a_line_fits_it_best():
    """A 3-minute leak from 2 minutes in (the start-up's cap), read every 4.5 s under noise of about 2%: a start that
    bends over to 92% of the limit fits the readings since the first about as well as a line, and the leak was taken
    for the start until 36 s before it died. A line fits them best: no start."""
    trace = generate_family_trace("leak_3min", 37575 * 1009 + 3)
    _, decision = _until_abort(trace)
    assert trace.leak_start_s == 120.0 and decision is not None
    assert trace.rows[-1].time_s - decision.assessment.time_s >= 60.0


def test_a_fast_windows_change_point_splits_the_old_level_from_the_line_after_it():
    """Floors at a level, then a line of their own: the span since the split is the line's six chunks. Too short a
    window for a level of three chunks and a line of six has none."""
    def chunks(levels, every=18.0):
        return [_Chunk.start(i, i, i * every, int(level * GIB / 100)) for i, level in enumerate(levels)]

    assert _change_point(chunks([50.0, 50.6, 49.5, 50.3, 49.8, 50.1, 53.0, 55.1, 56.9, 59.0, 61.2, 62.9]), 6) == 6
    assert _change_point(chunks([50.0, 50.6, 49.5, 53.0, 55.1, 56.9, 59.0, 61.2, 62.9]), 6) == 6
    assert _change_point(chunks([50.0, 50.6, 53.0, 55.1, 56.9, 59.0, 61.2, 62.9]), 6) is None


def test_a_leak_that_begins_between_the_fixed_spans_is_fitted_from_its_change_point():
    """A 3-minute leak from 30 minutes in, read every 8.5 s under noise of about 2.5%: the last 6 floors were too
    few to pass the tests under that noise, the last 12 held the old level too (their quarters do not all rise), and
    it was aborted 42 s before it died. The span since the change point is aborted 85 s before."""
    trace = generate_family_trace("leak_3min", 39393 * 1009 + 5)
    _, decision = _until_abort(trace)
    assert trace.leak_start_s == 1800.0 and decision is not None
    assert trace.rows[-1].time_s - decision.assessment.time_s >= 60.0


def test_growth_since_a_change_point_counts_only_above_the_last_sawtooth_tooth():
    """A plateau at 94% of the limit under a GC sawtooth: the span since a change point begins where a tooth's ramp
    begins and fits it as a leak. Topping everything before it by only minus two sigmas, as the fixed spans must,
    the ramp was aborted at 307 s, just below the last tooth's top."""
    assert family_abort("high_plateau", 12323 * 1009 + 5, 1200) is None


def test_one_fit_of_sparse_readings_rising_twice_as_much_as_required_confirms_growth():
    """A 3-minute leak from 30 minutes in, read every 18 s: the fit that first saw it rose 27 noise sigmas where 6
    are required, and waiting for a second fit, 18 s later, left 57 s before it died. After the run's first 10
    minutes such a fit confirms growth by itself."""
    trace = generate_family_trace("leak_3min", 413113 * 1009 + 1)
    _, decision = _until_abort(trace)
    assert trace.leak_start_s == 1800.0 and decision is not None
    assert trace.rows[-1].time_s - decision.assessment.time_s >= 60.0


def test_a_fast_window_half_of_three_floors_is_too_few_to_show_growth_slowing_down():
    """The floors of a 3-minute leak read every 18.6 s, from 2 minutes in (percent of the limit): the early half's
    three rise 6-7% a reading, the recent four 2.3-5.6%. The band of three floors' slope is their slopes' whole range,
    which holds the true slope two times in three: the halves' bands parted by chance, and the leak, taken to be
    levelling off, was aborted 36 s before it died. With four floors a half, the same shape a window later does count."""
    def chunks(levels, every=18.6):
        return [_Chunk.start(i, i, i * every, int(level * GIB / 100)) for i, level in enumerate(levels)]

    leak = fit_trend(chunks([54.1, 61.1, 67.0, 74.7, 77.0, 79.3, 84.9]), 6, 0.2, 2.326, fast=True)
    assert leak is not None and math.isinf(leak.settle_s)
    slowing = fit_trend(chunks([40.0, 50.0, 58.0, 64.0, 68.0, 70.5, 72.5, 74.0]), 6, 0.2, 2.326, fast=True)
    assert slowing is not None and math.isfinite(slowing.settle_s)


def test_a_plateaus_start_that_flickers_near_its_level_is_not_confirmed_by_three_of_four():
    """A plateau at 94% of the limit under a GC sawtooth, 4-5 minutes in: its start's tail passes the fast
    windows' tests in 4 fits of 5. Three of the last four fits would abort it at 328 s: they confirm growth
    only after the run's first 10 minutes."""
    assert family_abort("high_plateau", 7171 * 1009 + 4, 1800) is None


def test_a_cache_that_fills_in_twenty_minutes_and_stops_at_85_percent_is_not_aborted():
    fill = lambda t: 10 * GIB * min(1.0, max(0.0, (t - 3 * 3600) / 1200))  # noqa: E731
    assert first_abort(lambda t: warm(fill(t), t, base=24 * GIB), limit=40 * GIB, every_s=5.0,
                       noise=0.2 * GIB, seconds=6 * 3600) is None


def _minute_chunks(level, seed, n=24, noise=0.3 * GIB, chunk_s=60.0):
    """``n`` chunks of ``chunk_s`` (one minute) of readings every 5 s of ``level(t)`` plus noise."""
    rng, chunks = random.Random(seed), []
    for i in range(n):
        chunk = None
        for j in range(int(chunk_s // 5)):
            t = i * chunk_s + j * 5.0
            used = int(level(t) + rng.gauss(0.0, noise))
            chunk = _Chunk.start(i, int(t), t, used) if chunk is None else chunk
            if j:
                chunk.add(int(t), t, used)
        chunks.append(chunk)
    return chunks


def test_a_window_whose_latest_means_fall_behind_its_pace_lags():
    """A cache that fills 0.5 GiB a minute and stops 3.5 chunks before the window's end lags, on every seed; a
    leak at that pace, read alike, never does."""
    leak = lambda t: 20 * GIB + 0.5 * GIB * t / 60.0  # noqa: E731
    stops = lambda t: 20 * GIB + 0.5 * GIB * min(t, 20.5 * 60.0) / 60.0  # noqa: E731
    assert not any(_lags(_minute_chunks(leak, seed)) for seed in range(30))
    assert all(_lags(_minute_chunks(stops, seed)) for seed in range(30))


def test_a_staircase_that_stopped_half_an_hour_ago_has_stalled():
    """A 96-minute window of 4-minute chunks: three stairs of 1.2 GiB in its first hour, then 36 minutes flat
    (an allocator's staircase, over). The floors' line still rises 2.2 GiB an hour; the latest half hour of mean
    readings, at the top of its 99% band, rises less than half that: stalled, on every seed. A leak that rises
    as much, steadily, never is."""
    def chunks(level, seed):
        return _minute_chunks(level, seed, n=24, noise=0.3 * GIB, chunk_s=240.0)

    stairs = lambda t: 20 * GIB + 1.2 * GIB * sum(t >= at for at in (900.0, 2100.0, 3600.0))  # noqa: E731
    leak = lambda t: 20 * GIB + 3.6 * GIB * t / 5760.0  # noqa: E731
    for seed in range(20):
        stopped, steady = chunks(stairs, seed), chunks(leak, seed)
        slope = theil_sen_slope([c.min_time for c in stopped], [c.min_used for c in stopped])[0]
        assert slope > 0 and _stalled(stopped, slope), seed
        slope = theil_sen_slope([c.min_time for c in steady], [c.min_used for c in steady])[0]
        assert not _stalled(steady, slope), seed


def test_an_allocator_staircase_over_for_half_an_hour_is_not_projected_on():
    """Stairs of 5-7% of 24 GiB at 50, 62 and 156 minutes into the run, under a GC sawtooth and evaluation spikes
    of about 8%: 37 minutes after the last stair, the 96-minute window's line still rose 6% an hour, and with the stairs
    and peaks as headroom the run was aborted, "in 5.0 min"."""
    assert family_abort("allocator_staircase", 8383 * 1009, math.inf) is None


def test_an_allocator_staircase_over_for_a_quarter_hour_is_not_projected_on():
    """Six stairs of 3.5% of 16 GiB every 2-12 minutes, the last 50 minutes in, under noise of 2% of the limit:
    17 minutes after the last stair, the 96-minute window's line still rose 26% of the limit an hour, its own
    latest half hour still held three stairs, and the run was aborted, "in 5.0 min". The 24-minute window's last
    15 one-minute chunks had stayed flat."""
    assert family_abort("allocator_staircase", 900341 * 1009 + 4, math.inf) is None


@pytest.mark.parametrize("seed", range(4))
def test_stairs_at_random_gaps_that_go_on_are_aborted_by_the_windows(seed):
    """Stairs of 2-3% of 32 GiB 1-8 minutes apart, on and on, read every 5 s under noise of 1% of the limit: too
    irregular for a staircase, so the windows must see them; a finer window's flat last minutes between two
    stairs (the check above) must not blind them. Aborted at least a minute before they die."""
    rng = random.Random(seed)
    times = [600.0]
    while times[-1] < 4 * 3600:
        times.append(times[-1] + rng.uniform(60.0, 480.0))
    heights = [rng.uniform(0.02, 0.03) * 32 * GIB for _ in times]
    level = lambda t: warm(sum(h for at, h in zip(times, heights) if t >= at), t, base=16 * GIB)  # noqa: E731
    readings = dict(every_s=5.0, noise=0.32 * GIB, seconds=4 * 3600, seed=seed)
    death = next(t for _, t, used in stream(level, **readings) if used >= 32 * GIB)
    aborted = first_abort(level, limit=32 * GIB, **readings)
    assert aborted is not None and death - aborted[1] >= 60.0, (aborted and aborted[1], death)


def test_a_cache_that_stops_is_not_projected_on_by_the_long_windows_line():
    """A cache under noise of 2.4% of the limit, a GC sawtooth and evaluation spikes, filling 29% of 40 GiB
    in 18 minutes to 82%: one minute after its fill ended, the 24-minute window still projected the fill's pace
    and aborted it, "in 2.9 min". Its latest chunks' mean readings had fallen behind that pace."""
    assert family_abort("cache_fill", 404 * 1009 + 4, 24 * 3600) is None


def test_a_short_windows_later_projection_does_not_hide_a_long_windows_abort():
    """A 60-minute leak from the run's second minute: at 3347 s the 1.6-hour window projected under 5 minutes
    to the limit (an abort, on the horizon of growth seen over an hour or more), but a fast window, its
    headroom the reach of readings every 7 s, projected 290 s and spoke first, on the 3-minute horizon: the
    abort came 104 s later. Windows are ranked by their time to the limit less the longer horizon's extra."""
    trace = generate_family_trace("leak_60min", 505 * 1009 + 1)
    _, decision = _until_abort(trace)
    assert decision is not None and decision.assessment.window_seconds >= LONG_WINDOW_S
    assert trace.rows[-1].time_s - decision.assessment.time_s >= 300


def test_an_explicit_warm_up_is_ignored():
    detector = TrendDetector("gpu0", warmup_s=600)
    a = detector.update(10, 30.0, 5 * GIB, 40 * GIB)
    assert not a.ready and a.note == "warming up"


def test_a_leak_that_dies_at_an_evaluation_spike_is_aborted_a_minute_ahead():
    """A 20-minute leak on a run with an evaluation spike of 8% of the limit every 30 minutes dies at the
    first spike that lands on its floor 2.6 GiB below the limit. The spikes seen in the last hours count as
    headroom; with only the readings' noise as headroom it was aborted after its death."""
    rng, guard = random.Random(7), MemoryGuard()
    limit, base, rate, height = 32 * GIB, 16 * GIB, 0.8 * GIB / 60, 0.08 * 32 * GIB
    leak_start = 3 * 3600.0
    death_floor_s = leak_start + (limit - height - base) / rate  # when floor + spike reach the limit
    t, abort = 0.0, None
    while True:
        t += 5.0
        floor = base + rate * max(0.0, t - leak_start)
        spike = height if (t - death_floor_s) % 1800.0 < 40.0 else 0.0
        used = int(floor + spike + rng.gauss(0.0, 0.003 * limit))
        if used >= limit:
            break
        if abort is None and guard.observe("gpu0", int(t), t, used, limit).action == "abort":
            abort = t
    assert abort is not None and t - abort >= 60.0, (abort, t)


def _staircase(height, every_stair, seed, limit=40 * GIB, start=3 * 3600.0, every_s=5.0, noise=0.005, spike=0.0,
               spike_s=50.0, spike_ends_s=35.0):
    """(abort time, death time) of a run whose floor steps up by ``height`` of the limit every
    ``every_stair`` seconds from ``start`` (readings every ``every_s``, noise ``noise`` of the limit).
    ``spike``: each stair comes with an evaluation (it holds what the evaluation kept): memory rises by
    ``spike`` of the limit for ``spike_s`` seconds, ending ``spike_ends_s`` before the stair."""
    rng, guard, t, abort = random.Random(seed), MemoryGuard(), 0.0, None
    while True:
        t += every_s
        stairs = int((t - start) // every_stair) + 1 if t >= start else 0
        to_next = every_stair - (t - start) % every_stair if t >= start - every_stair else math.inf
        up = spike if spike_ends_s <= to_next < spike_ends_s + spike_s else 0.0
        used = int(limit * (0.6 + height * stairs + up + rng.gauss(0, noise)))
        if used >= limit:
            return abort, t
        if abort is None and guard.observe("gpu0", int(t), t, used, limit).action == "abort":
            abort = t


def test_a_staircase_whose_stairs_are_rarer_than_a_windows_quarter_is_aborted_before_its_last_stair():
    """Stairs of 8% of the limit every 15 minutes (memory kept at every evaluation): no long window's
    quarters each hold a stair until the hour-long one has seen five, and the run dies at its fifth.
    Found stair by stair, the staircase is projected to die at its next stair; before, these were
    aborted 10 s, 5 s and never before their death."""
    for seed in range(3):
        abort, death = _staircase(0.08, 900.0, seed)
        assert abort is not None and death - abort >= 60.0, (seed, abort, death)


def test_stairs_under_heavy_noise_are_found_from_the_mean_of_their_bins():
    """Stairs of 7% of the limit every 15 minutes under reading noise of 2% of the limit, read every
    1.5 s: the lowest reading of a 30-s bin scatters by 1.2% of the limit, its mean by 0.5%. Judged
    on the bins' lowest readings, against the reading noise, no stair stood out, and the run was
    aborted at its fifth stair, 39-330 s before it died; judged on their means, the staircase is
    projected to die at that stair and aborted three minutes before it."""
    for seed in range(4):
        abort, death = _staircase(0.07, 900.0, seed, every_s=1.5, noise=0.02)
        assert abort is not None and death - abort >= 180.0, (seed, abort, death)


def test_stairs_that_come_with_a_spike_are_found_from_the_bins_lowest_readings():
    """Stairs of 8% of the limit every 2 minutes from 30 minutes into the run, under a GC sawtooth and
    evaluation spikes, one with every stair (``evaluation_stairs``): the first bins after each stair read
    higher than the ones after them, which breaks the flat run of the bins' means, while their lowest
    readings stay flat. Found on the means alone, the staircase was missed."""
    trace = generate_family_trace("staircase_leak", 6363 * 1009 + 4, evaluation_stairs=True)
    abort = family_abort("staircase_leak", 6363 * 1009 + 4, math.inf, evaluation_stairs=True)
    assert abort is not None and trace.rows[-1].time_s - abort >= 60.0, abort


@pytest.mark.parametrize("spike_ends_s", [35.0, 700.0])
def test_a_stair_whose_flat_side_holds_an_evaluation_spike_is_found_past_it(spike_ends_s):
    """Stairs of 8% of the limit every 818 s, each with an evaluation spike of 8% for 50 s, ending 35 s before
    the stair or 68 s after the one before: the spike fills a whole 30-s bin of the 90 s flat on one side of
    every stair, and lifts its lowest reading too. No stair was found, and the run died at its fifth spike
    without an abort. The bin is now left out of that side."""
    for seed in range(3):
        abort, death = _staircase(0.08, 818.0, seed, spike=0.08, spike_s=50.0, spike_ends_s=spike_ends_s)
        assert abort is not None and death - abort >= 60.0, (seed, abort, death)


def test_two_bins_of_a_ramp_are_no_flat_side():
    """A ramp rising 1% of the limit per bin: its highest bin stands above the next, like a spike, but the two
    bins left rise a third of the jump between the sides."""
    ramp = [float(i) for i in range(7)]
    assert not _steps_up_past_a_spike(ramp, 1.0, 100)
    stair = [0.0, 0.2, 8.0, 4.0, 8.1, 8.0, 8.2]  # a spike in the side before a stair of 8
    assert _steps_up_past_a_spike(stair, 1.0, 100)


def test_a_stair_found_from_the_bins_lowest_readings_is_measured_on_them():
    """Stairs of 8.6% of the limit every 8 minutes, 4 hours into the run, an evaluation spike with every stair
    (``evaluation_stairs``): a spike just before a stair lifts the means of the bins before it, so the stair is
    found on the bins' lowest readings.
    Measured on the means all the same, the stairs came to 8.6%, 4.1% and 6.7%, too unequal for a staircase,
    and the run was never aborted. Measured on the readings it was found on, they agree."""
    seed = 32 * 1009 + 6
    trace = generate_family_trace("staircase_leak", seed, evaluation_stairs=True)
    guard, decision = _until_abort(trace)
    limit = trace.rows[-1].limit_bytes
    heights = [height / limit for _, height, _, _ in guard.detectors["gpu0"]._stairs.stairs]
    assert len(heights) >= 2 and max(heights) <= 1.2 * min(heights), heights
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision


@pytest.mark.parametrize("seed", [9292 * 1009 + 2, 14444 * 1009 + 4])
def test_a_staircase_two_stairs_from_its_limit_is_aborted_before_the_next(seed, monkeypatch):
    """Noisy staircase leaks (stairs of 8% of the limit every 18 minutes; of 6% every 5 minutes under a GC
    sawtooth and evaluation spikes) whose next stair leaves the floor 4-5% below the limit, a little more than
    the highest reading above its stair so far: projected to survive that stair, they died of a reading just
    after it (aborted 4 s before their death, or never). Two stairs reach the limit: the run is aborted before
    the next. (The first, read every 15 s, climbs into a stair over two minutes: one fast fit now aborts it a
    stair earlier. The stairs are judged here as they would be without that fit.)"""
    trace = generate_family_trace("staircase_leak", seed)
    _, decision = _until_abort(trace)
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision
    monkeypatch.setattr(detector, "FAST_DECISIVE", math.inf)
    _, decision = _until_abort(trace)
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision
    assert decision.assessment.window["stairs_to_limit"] == 2
    assert "projected to leave less than a stair below the" in decision.reason, decision.reason


def test_a_staircase_between_evaluations_is_aborted_before_the_stair_that_a_spike_kills():
    """Stairs of about 5% of the limit every 12 minutes from 36% to 87% under a GC sawtooth of 3%, evaluation
    spikes of 10% every 40 minutes or so: the last three stairs span 24 minutes, often without a spike, and the
    level plus a stair plus the highest reading above the stairs since the first of them stayed below the
    limit. The next stair and a spike killed the run, never aborted (three warnings from the long windows). The
    highest spike of the last two hours counts above the stairs, as it does above a growing window."""
    trace = generate_family_trace("staircase_leak", 28686 * 1009 + 0)
    _, decision = _until_abort(trace)
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision
    # two stairs and the readings' excursion above them reach the limit (a stair before one stair and the spike)
    assert decision.assessment.window["stairs_to_limit"] == 2
    assert decision.assessment.peak_headroom_bytes >= decision.assessment.window["stair_bytes"] + 0.08 * trace.rows[-1].limit_bytes


def test_a_staircase_whose_readings_reach_the_limit_from_its_level_is_aborted_before_its_next_stair():
    """Stairs of 7-10% every 17 minutes under noise of 2%: after a stair the level stood at 97% of the limit, and
    its readings had gone 10% above their stairs. It was projected to die at its next stair, 15 minutes away, and
    died of its noise 4 minutes after the stair, never aborted. It is at the limit by its readings now."""
    trace = generate_family_trace("staircase_leak", 30505 * 1009 + 2)
    _, decision = _until_abort(trace)
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision
    assert decision.assessment.window["stairs_to_limit"] == 0
    assert "projected to reach the" in decision.reason, decision.reason


def test_a_staircase_two_stairs_and_a_reading_as_high_as_before_from_the_limit_is_aborted():
    """Stairs of 8.7% every 9 minutes, an evaluation spike of 8.8% 18 minutes in: two stairs from the level took
    it to 99.7% of the limit, one stair and the spike to 99.8%, so neither counted, and the run died 4 s after the
    stair after next, the spike on top of it. Two stairs count with the readings' excursion above their stairs."""
    trace = generate_family_trace("staircase_leak", 32727 * 1009 + 1)
    _, decision = _until_abort(trace)
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision
    assert decision.assessment.window["stairs_to_limit"] == 2


def test_a_staircase_with_a_stair_not_found_is_still_one():
    """Stairs of about 5% of the limit every 3 minutes from 30 minutes in, under heavy noise and evaluation
    spikes: one stair in the middle was not found, the last three found were 6 and 3 minutes apart, too unequal
    for a staircase, and the run died at a stair without an abort. A gap about twice the other counts as two."""
    trace = generate_family_trace("staircase_leak", 22424 * 1009 + 1)
    _, decision = _until_abort(trace)
    assert decision is not None and trace.rows[-1].time_s - decision.assessment.time_s >= 60.0, decision
    assert decision.assessment.window["stair_every_s"] == pytest.approx(180, abs=15)


def test_a_cache_filling_between_two_jumps_is_no_staircase():
    """A cache that fills 28% of the limit in 25 minutes, 17 hours into the run, under noise of 2% of the
    limit: the start and the end of its fill each passed for a stair of 2-3% between flat bins, 22 minutes
    apart, and the ramp between them counted as the readings' excursion above the first stair, so the
    "staircase" was projected past the limit at its next stair. A staircase is flat between its stairs."""
    assert family_abort("cache_fill", 4242 * 1009, 62000) is None


def test_a_staircase_whose_first_stair_falls_in_the_start_up_is_aborted_before_its_third():
    """A leak from the run's start: stairs of 9% of the limit every 13 minutes, the first at 120 s on top of
    the start's rise (so not found), read every 8 s. Two stairs are found before the one that kills; with three
    needed, none of these seeds was aborted before its death."""
    def lead(seed, limit=32 * GIB):
        rng, guard, t, abort = random.Random(seed), MemoryGuard(), 10.0, None
        while True:
            t += 8.0
            stairs = int((t - 120.0) // 780.0) + 1 if t >= 120.0 else 0
            used = int(limit * (0.63 - 0.25 * math.exp(-t / 40.0) + 0.09 * stairs + rng.gauss(0, 0.01)))
            if used >= limit:
                return abort and t - abort
            if abort is None and guard.observe("gpu0", int(t), t, used, limit).action == "abort":
                abort = t

    leads = [lead(seed) for seed in range(4)]
    assert all(lead is not None and lead >= 60 for lead in leads), leads


def test_a_long_evaluation_that_comes_back_down_is_no_staircase():
    """An evaluation that holds 25% more of the limit for 5 minutes every 20 minutes rises like a
    regular stair each time; but it comes back down, and a staircase never steps down. Without that
    rule all three seeds were aborted (the evaluations' height counted as the next stair)."""
    def run(seed, limit=40 * GIB):
        rng, guard, t = random.Random(seed), MemoryGuard(), 0.0
        while t < 8 * 3600:
            t += 5.0
            evaluating = t > 1800 and t % 1200.0 < 300.0
            used = int(limit * (0.6 + (0.25 if evaluating else 0.0) + rng.gauss(0, 0.005)))
            if guard.observe("gpu0", int(t), t, used, limit).action == "abort":
                return t
        return None

    assert [run(seed) for seed in range(3)] == [None] * 3


def test_the_abort_of_a_staircase_says_its_stairs():
    guard, limit, t = MemoryGuard(), 40 * GIB, 0.0
    while True:
        t += 5.0
        stairs = int((t - 3 * 3600) // 900) + 1 if t >= 3 * 3600 else 0
        decision = guard.observe("gpu0", int(t), t, int(limit * (0.6 + 0.08 * stairs)), limit)
        if decision.action == "abort":
            break
    assert decision.assessment.window["stair_every_s"] == pytest.approx(900, abs=60)
    assert "memory grows in stairs of 3.20 GiB every 15 min" in decision.reason, decision.reason


def _height(values, every=5.0):
    spikes = _Spikes()
    for i, used in enumerate(values):
        spikes.add(i, i * every, int(used))
    return spikes.height()


def test_spike_heights_are_transient_excursions_not_growth_steps_or_a_sawtooth():
    n = 2400  # 200 minutes of readings every 5 s
    flat = [10 * GIB] * n
    spike = [10 * GIB + (2 * GIB if 1000 <= i < 1008 else 0) for i in range(n)]  # 40 s up
    step = [10 * GIB + (2 * GIB if i >= 1000 else 0) for i in range(n)]
    leak = [10 * GIB + i * 8 * (1 << 20) for i in range(n)]  # 96 MiB a minute
    saw = [10 * GIB + GIB * ((i * 5.0) % 600.0) / 600.0 for i in range(n)]  # 1 GiB teeth, 10 minutes each
    assert _height(flat) == 0
    assert abs(_height(spike) - 2 * GIB) < 1
    assert _height(step) < 1
    assert _height(leak) <= 0
    assert _height(saw) <= 0.11 * GIB  # one minute of its ramp, not its whole tooth
    # Two hours on, the spike is forgotten.
    assert _height(spike + [10 * GIB] * 1500) == 0


def test_window_never_exceeds_its_size():
    detector = TrendDetector("gpu0", window_chunks=12, chunk_seconds=(60.0, 240.0), fast_chunk_seconds=(5.0,))
    for step, t, used in stream(lambda t: warm(0, t), seconds=12 * 3600, every_s=5.0):
        detector.update(step, t, used, 40 * GIB)
        for window in detector.windows:
            size = 4 * 6 if window.fast else 12  # a fast window: its longest span, 4 x fast_min_chunks
            assert len(window.chunks) <= size
            assert len(window.slopes) <= size * (size - 1) // 2  # the pairwise slopes kept for the fit
    assert [len(w.chunks) for w in detector.windows] == [12, 12, 24]


def test_time_going_backwards_restarts_the_detector():
    detector = TrendDetector("gpu0", warmup_s=60, min_readings=3)
    for step, t, used in stream(lambda t: warm(0, t), seconds=3600):
        detector.update(step, t, used, 40 * GIB)
    assert detector.readings > 100
    a = detector.update(100, 5.0, 10 * GIB, 40 * GIB)  # a new process appends to the same trace
    assert detector.readings == 0 and a.note == "warming up"


# --- policy ----------------------------------------------------------------------------------


def test_settings_defaults_and_validation():
    s = GuardSettings()
    assert s.mode == "abort" and s.horizon_s == 180 and s.long_horizon_s == 300 and s.warmup_s == 0
    assert s.startup_s == 120 and s.fast_chunk_seconds == (5.0, 20.0)
    assert GuardSettings.from_mapping({"mode": "WARN", "horizon_s": "600", "chunk_seconds": [30, 120]}) == \
        GuardSettings(mode="warn", horizon_s=600.0, chunk_seconds=(30.0, 120.0))
    assert GuardSettings.from_mapping(None) == s
    for bad, words in [({"horizon": 600}, "unknown setting 'horizon'"),
                       ({"mode": "kill"}, "mode must be one of abort, warn, off"),
                       ({"horizon_s": "soon"}, "horizon_s must be a number"),
                       ({"window_chunks": 2.5}, "window_chunks must be a whole number"),
                       ({"confidence": 1.5}, "confidence must be in [0.5, 1)"),
                       ({"warn_horizon_s": 60}, "warn_horizon_s (60.0) must be >= horizon_s"),
                       ({"fast_chunk_seconds": [5, -1]}, "fast_chunk_seconds must be a list of positive seconds"),
                       ({"on_abort_command": 3}, "on_abort_command must be"),
                       ({"min_readings": True}, "min_readings must be")]:
        with pytest.raises(ValueError) as error:
            GuardSettings.from_mapping(bad)
        message = str(error.value)
        assert words in message and "\n" not in message


def test_abort_command_gets_the_report_in_its_environment_and_its_failure_is_a_warning(tmp_path, caplog):
    """The callback and the watch both run `guard.on_abort_command` through run_abort_command."""
    report = {"reason": "gpu0: memory grows", "step": 812}
    out = tmp_path / "env.txt"
    command = f'echo "$TFODTRAIN_ABORT_REPORT|$TFODTRAIN_RUN_DIR|$TFODTRAIN_ABORT_REASON|$TFODTRAIN_ABORT_STEP" > {out}'
    run_abort_command(command, report, tmp_path / "abort_report.json", tmp_path)
    assert out.read_text().strip() == f"{tmp_path / 'abort_report.json'}|{tmp_path}|gpu0: memory grows|812"
    assert not caplog.records
    run_abort_command("exit 3", report, tmp_path / "abort_report.json", tmp_path)
    assert [r.getMessage() for r in caplog.records] == ["on_abort_command exited 3: exit 3"]
    run_abort_command(None, report, tmp_path / "abort_report.json", tmp_path)  # none set: nothing runs
    assert len(caplog.records) == 1


def _growing_assessment(seconds_to_limit, time_s=5000.0, pool="gpu1"):
    detector = TrendDetector(pool)
    a = detector.update(1000, time_s, 30 * GIB, 40 * GIB)
    a.growing, a.seconds_to_limit = True, seconds_to_limit
    a.slope_bytes_per_step, a.trend_p_value = 3.1 * MIB, 1e-5
    a.projected_exhaustion_step = 1000 + int(seconds_to_limit / 0.5)
    return a


def test_policy_actions_and_reason_name_the_pool():
    policy = GuardPolicy(GuardSettings())
    decision = policy.decide(_growing_assessment(150.0))
    assert decision.action == "abort"
    assert decision.reason.startswith("gpu1: memory grows 3.1 MiB/step (p<0.001)")
    assert "in 2.5 min (< 3 min horizon)" in decision.reason
    assert GuardPolicy(GuardSettings()).decide(_growing_assessment(570.0)).action == "warn"
    long = _growing_assessment(250.0)
    long.window_seconds = 4 * 3600  # growth sustained for hours: aborted on the long horizon
    assert GuardPolicy(GuardSettings()).decide(long).action == "abort"
    longer = _growing_assessment(570.0)
    longer.window_seconds = 4 * 3600
    assert GuardPolicy(GuardSettings()).decide(longer).action == "warn"
    assert GuardPolicy(GuardSettings()).decide(_growing_assessment(1700.0)).action == "warn"
    assert GuardPolicy(GuardSettings()).decide(_growing_assessment(10 * 3600.0)).action == "ok"


def test_warn_mode_never_aborts_and_warnings_are_rate_limited():
    policy = GuardPolicy(GuardSettings(mode="warn", warn_every_s=600))
    actions = [policy.decide(_growing_assessment(100.0, time_s=5000.0 + 10 * i)).action for i in range(120)]
    assert "abort" not in actions
    assert actions.count("warn") == 2  # at 5000 s and again 600 s later, not every reading
    assert GuardPolicy(GuardSettings(mode="off")).decide(_growing_assessment(0.0)).action == "ok"


def test_warn_mode_never_aborts_a_real_leak():
    rate = 20 * GIB / (3 * 3600)
    guard = MemoryGuard(GuardSettings(mode="warn"))
    actions = set()
    for step, t, used in stream(lambda t: warm(rate * t, t)):
        if used >= 40 * GIB:
            break
        actions.add(guard.observe("gpu0", step, t, used, 40 * GIB).action)
    assert actions == {"ok", "warn"}


# --- the multi-pool guard --------------------------------------------------------------------


def test_guard_acts_on_the_pool_that_runs_out_first():
    guard = MemoryGuard()
    fast = 30 * GIB / (3 * 3600)
    slow = 30 * GIB / (4 * 3600)
    rng = random.Random(3)
    decision = Decision()
    for i in range(6 * 360):
        t = 20.0 + 10 * i
        step = int(t / 0.5)
        readings = [("gpu0", step, t, int(warm(slow * t, t) + rng.gauss(0, 0.1 * GIB)), 48 * GIB),
                    ("gpu1", step, t, int(warm(fast * t, t) + rng.gauss(0, 0.1 * GIB)), 48 * GIB),
                    ("host", step, t, int(warm(0, t, base=20 * GIB) + rng.gauss(0, 0.1 * GIB)), 64 * GIB)]
        decision = guard.observe_many(readings)
        if decision.action == "abort":
            break
    assert decision.action == "abort" and decision.pool == "gpu1"
    assert decision.reason.startswith("gpu1: ")
    assert set(guard.assessments) == {"gpu0", "gpu1", "host"}
    assert guard.assessments["gpu0"].seconds_to_limit > guard.assessments["gpu1"].seconds_to_limit
    assert not guard.assessments["host"].growing


def test_guard_off_watches_nothing():
    guard = MemoryGuard(GuardSettings(mode="off"))
    assert guard.observe("gpu0", 1, 1.0, 39 * GIB, 40 * GIB).action == "ok"
    assert guard.detectors == {}


def test_sparse_readings_are_named_with_the_setting_that_makes_them():
    # The defaults (5 s in training, 2 s in the watch) and denser readings say nothing.
    assert sparse_readings_warning(5.0, "memory.interval_s") is None
    assert sparse_readings_warning(2.0, "--interval-s") is None
    assert sparse_readings_warning(None, "memory.interval_s") is None
    line = sparse_readings_warning(20.0, "memory.interval_s")
    assert line.startswith("memory.interval_s=20: ") and "every 20 s" in line and "\n" not in line
