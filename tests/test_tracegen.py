"""The trace generator, and the guard on a generated set of traces it has never seen."""

from __future__ import annotations

import bisect
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tfodtrain.memory.replay import replay_detail, replay_rows
from tfodtrain.memory.tracegen import (ALL_KINDS, FAMILIES, HEALTHY_KINDS, LEAK_KINDS, family_ranges,
                                       generate_families, generate_family_trace, generate_set, generate_trace,
                                       write_set)
from tfodtrain.memory.traces import read_trace

REPO = Path(__file__).resolve().parent.parent
SEED = 20260  # not a seed the defaults were looked at with


@pytest.fixture(scope="module")
def unseen():
    """Every kind once, drawn with mixtures (noise, spikes, sawtooth, outliers, jitter: whatever the draw adds)."""
    return [generate_trace(kind, SEED * 100003 + 14 + i, mixtures=True, name=f"{i:03d}_{kind}_mix.csv")
            for i, kind in enumerate(ALL_KINDS)]


def test_deterministic_and_labelled():
    a, b = generate_trace("late_leak", 5, mixtures=True), generate_trace("late_leak", 5, mixtures=True)
    assert a.rows == b.rows and a.label() == b.label()
    assert generate_trace("late_leak", 6).rows != a.rows
    with pytest.raises(ValueError, match="unknown trace kind 'leaky'"):
        generate_trace("leaky", 1)


def test_every_kind_and_mixtures(unseen):
    kinds = [trace.kind.split("+")[0] for trace in unseen]
    assert sorted(kinds) == sorted(ALL_KINDS)
    tags = {tag for trace in unseen for tag in trace.kind.split("+")[1:]}
    assert {"noisy", "eval_spikes", "gc_sawtooth", "outliers", "jitter"} <= tags
    limits = {trace.rows[0].limit_bytes >> 30 for trace in unseen}
    assert min(limits) <= 24 and max(limits) >= 64
    assert len({trace.rows[1].step - trace.rows[0].step for trace in unseen}) >= 3  # reading intervals


def test_leaks_end_at_the_limit_and_healthy_runs_stay_below(unseen):
    for trace in unseen:
        used = [row.used_bytes for row in trace.rows]
        limit = trace.rows[0].limit_bytes
        steps = [row.step for row in trace.rows]
        times = [row.time_s for row in trace.rows]
        assert steps == sorted(set(steps)) and times == sorted(times)
        if trace.leak:
            assert trace.kind.split("+")[0] in LEAK_KINDS
            assert used[-1] >= limit and max(used[:-1]) < limit and trace.oom_step == steps[-1]
        else:
            assert trace.kind.split("+")[0] in HEALTHY_KINDS
            assert max(used) < limit and trace.oom_step is None


@pytest.mark.slow
def test_guard_on_unseen_traces_catches_every_leak_a_minute_ahead_and_aborts_no_healthy_run(unseen):
    problems = []
    for trace in unseen:
        abort = replay_rows(trace.rows)["abort_step"]
        if trace.leak:
            times = {row.step: row.time_s for row in trace.rows}
            if abort is None or times[trace.oom_step] - times[abort] < 60:
                problems.append(f"missed {trace.name} ({trace.kind}): abort={abort} oom={trace.oom_step}")
        elif abort is not None:
            problems.append(f"false abort {trace.name} ({trace.kind}) at step {abort}")
    assert not problems, problems


def test_written_set_matches_the_shared_format_and_the_benchmark_scores_it(tmp_path):
    traces = generate_set(4, seed=3, mixtures=False)
    labels_path = write_set(str(tmp_path), traces)
    labels = json.loads(Path(labels_path).read_text())
    assert set(labels) == {trace.name for trace in traces}
    assert all(set(label) == {"kind", "leak", "oom_step"} for label in labels.values())
    first = (tmp_path / traces[0].name).read_text().splitlines()
    assert first[0] == "step,time_s,used_bytes,limit_bytes"
    step, time_s, used, limit = first[1].split(",")
    assert time_s.count(".") == 1 and len(time_s.split(".")[1]) == 2 and used.isdigit() and limit.isdigit()
    assert list(read_trace(tmp_path / traces[0].name)) == traces[0].rows
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "leak_benchmark.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("caught=0/0 false_aborts=0/4 ")


# --- the families the defaults are judged on: leaks that fill memory in minutes or days ------

FAMILY_SEED = 7  # not a seed the defaults were tuned on (those were 1 and 2)


@pytest.fixture(scope="module")
def families():
    return generate_families(1, seed=FAMILY_SEED)


def test_families_are_deterministic_and_labelled(families):
    again = generate_family_trace("leak_5min", FAMILY_SEED * 1009)
    assert again.rows == generate_family_trace("leak_5min", FAMILY_SEED * 1009).rows
    assert {trace.kind.split("+")[0] for trace in families} == set(FAMILIES)
    with pytest.raises(ValueError, match="unknown trace family 'leaky'"):
        generate_family_trace("leaky", 1)
    for trace in families:
        used = [row.used_bytes for row in trace.rows]
        limit = trace.rows[0].limit_bytes
        if trace.leak:
            assert used[-1] >= limit and max(used[:-1]) < limit and trace.oom_step == trace.rows[-1].step
            assert trace.rows[0].time_s < trace.leak_start_s < trace.rows[-1].time_s
            assert trace.label()["leak_start_s"] == trace.leak_start_s
        else:
            assert max(used) < limit and trace.rows[-1].time_s >= 6 * 3600 and trace.leak_start_s is None


def test_a_linear_leak_family_fills_memory_in_its_minutes():
    trace = generate_family_trace("leak_10min", 3)
    lasted = trace.rows[-1].time_s - trace.leak_start_s
    assert 6 * 60 <= lasted <= 10 * 60 + 30  # noise and peaks may kill it sooner, never later


def test_families_drawn_otherwise_where_asked_and_only_there():
    """``ranges`` moves one draw and leaves the rest of the family as it was: the same limit, leak and length,
    read about every 30 s instead of every 1-20 s."""
    for seed in range(6):
        usual = generate_family_trace("high_plateau", seed)
        sparse = generate_family_trace("high_plateau", seed, ranges={"reading_s": (30, 30)})
        gaps = sorted(b.time_s - a.time_s for a, b in zip(sparse.rows, sparse.rows[1:]))
        usual_gaps = sorted(b.time_s - a.time_s for a, b in zip(usual.rows, usual.rows[1:]))
        assert 25 <= gaps[len(gaps) // 2] <= 35 and usual_gaps[len(usual_gaps) // 2] <= 21
        assert sparse.rows[0].limit_bytes == usual.rows[0].limit_bytes and sparse.kind == usual.kind
        assert generate_family_trace("high_plateau", seed, ranges={}).rows == usual.rows


def test_a_slower_start_is_drawn_where_asked():
    """``start_tau_s``: the start's rise to its plateau. With a time constant of 200 s a plateau that starts
    at 5% of its level is still a fifth below it after 5 minutes; with 10 s it is there within a minute."""
    for seed in range(4):
        ranges = {"noise": (0.001, 0.001), "start_share": (0.05, 0.05)}
        fast = generate_family_trace("high_plateau", seed, ranges={**ranges, "start_tau_s": (10, 10)})
        slow = generate_family_trace("high_plateau", seed, ranges={**ranges, "start_tau_s": (200, 200)})
        level = min(r.used_bytes for r in fast.rows if 1800 <= r.time_s <= 1900)
        at_300 = [r.used_bytes for r in slow.rows if 290 <= r.time_s <= 310]
        assert all(u < 0.82 * level for u in at_300), (seed, at_300, level)
        assert all(r.used_bytes > 0.95 * level for r in fast.rows if 60 <= r.time_s <= 300)


@pytest.mark.parametrize("ranges, message", [
    ({"period": (1, 2)}, "unknown family range 'period'; known: reading_s, noise"),
    ({"noise": (0.03, 0.01)}, "family range 'noise' needs 0 <= low <= high: 0.03, 0.01"),
    ({"spike_every_s": (0, 600)}, "family range 'spike_every_s' needs 0 < low <= high: 0, 600"),
    ({"start_tau_s": (0, 60)}, "family range 'start_tau_s' needs 0 < low <= high: 0, 60"),
    ({"reading_s": ("a", 2)}, "family range 'reading_s' needs two numbers, low and high"),
])
def test_a_bad_family_range_is_named(ranges, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        family_ranges(ranges)


def _spike_starts(trace, length_s=70.0, least=0.029):
    """Times where a noise-free trace climbs at least ``least`` of its limit above where it is
    ``length_s`` before and after (an evaluation spike lasts 20-60 s; a stair stays up)."""
    rows, limit = trace.rows, trace.rows[0].limit_bytes
    times = [row.time_s for row in rows]
    starts = []
    for i, row in enumerate(rows):
        b, a = bisect.bisect_right(times, row.time_s - length_s) - 1, bisect.bisect_left(times, row.time_s + length_s)
        if b < 0 or a >= len(rows):
            continue
        if min(row.used_bytes - rows[b].used_bytes, row.used_bytes - rows[a].used_bytes) >= least * limit:
            if not starts or row.time_s - starts[-1] > 2 * length_s:
                starts.append(row.time_s)
    return starts


def test_a_staircase_leaks_evaluation_spikes_keep_their_own_schedule(monkeypatch):
    """Evaluation spikes come every 20-40 minutes in every family. The staircase's interval once shared the
    spikes' variable name, and the spikes' function read it when called: in staircase leaks they came at the
    stairs' interval (2-20 minutes), at a fixed time before every stair; ``evaluation_stairs`` still draws
    them so. Drawn without noise or time jitter (the generator's Gaussian draws patched to their mean), the
    spikes keep at least 20 minutes apart."""
    monkeypatch.setattr(random.Random, "gauss", lambda self, mu=0.0, sigma=1.0: mu)
    checked = 0
    for seed in range(40):
        trace = generate_family_trace("staircase_leak", seed)
        if "eval_spikes" not in trace.kind:
            continue
        starts = _spike_starts(trace)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        # never closer than 20 minutes (one that abuts a stair is not seen, so a gap may be a double one)
        assert all(gap >= 1200.0 - 30 for gap in gaps), (seed, gaps)
        checked += len(gaps)
        # as drawn before: every stair comes with an evaluation
        again = _spike_starts(generate_family_trace("staircase_leak", seed, evaluation_stairs=True))
        assert all(gap < 1200.0 for gap in [b - a for a, b in zip(again, again[1:])]), seed
    assert checked >= 10, checked


@pytest.mark.slow
def test_guard_defaults_on_unseen_families(families):
    """Every family at least once, from a seed never used while designing: each leak aborted a
    minute before it dies, no healthy run aborted."""
    problems = []
    for trace in families:
        result = replay_detail(trace.rows)
        if trace.leak:
            death = trace.rows[-1].time_s
            if result["abort_time_s"] is None or death - result["abort_time_s"] < 60:
                problems.append(f"missed {trace.name}: abort at {result['abort_time_s']}, death at {death}")
        elif result["abort_step"] is not None:
            problems.append(f"false abort {trace.name} at {result['abort_time_s']} s: {result['reason']}")
    assert not problems, problems
