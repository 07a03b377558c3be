"""Score the leak guard's defaults family by family on generated traces it has never seen.

    python scripts/guard_families.py --per-family 6 --seed 101[,202,...] [--set key=value ...] [--jobs 1] [--json OUT]

Every trace of every family (``tfodtrain.memory.tracegen.FAMILIES``: fast leaks that fill memory in
3-60 minutes, slow ones of 6-48 hours, stairs, accelerating leaks, and healthy runs of 6-30 hours) is
replayed through ``MemoryGuard`` as ``python -m tfodtrain.memory.replay`` does. A leak is caught when
the abort leaves at least ``--lead`` seconds (60) before the reading that died; an abort before the leak
began stopped a healthy run, and counts as a false abort (and a miss). Prints one row per
family: caught, false aborts, warnings per run, the median delay from the leak's start to the abort and
the median lead; then the misses and false aborts. Several seeds make one set. ``--json OUT`` writes
one line per trace (family, kind, leak start, death, abort time, warnings, reason) for comparing two
versions of the guard trace by trace. ``--until S`` replays only each trace's first S seconds (a change
to the run's first minutes, screened on many seeds at little cost); leaks that die later are left out of
the table. ``--range NAME=LOW,HIGH`` draws the families otherwise (``tracegen.FAMILY_RANGES``: how
often memory is read, noise, sawtooth and spikes), to see how much the scores rest on those choices,
e.g. ``--range reading_s=15,30``. ``--evaluation-stairs``: staircase leaks whose evaluation spikes
come with every stair (memory kept at each evaluation), as the families were drawn until 2026-12-01.
Exit 0 when every leak is caught and no healthy run is aborted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfodtrain.memory.replay import _settings_from, replay_detail  # noqa: E402
from tfodtrain.memory.tracegen import FAMILIES, FAMILY_RANGES, family_ranges, generate_family_trace  # noqa: E402


def score_one(job):
    family, seed, index, overrides, evaluation_stairs, until, ranges = job
    trace = generate_family_trace(family, seed * 1009 + index, name=f"{family}_{seed}_{index}",
                                  evaluation_stairs=evaluation_stairs, ranges=ranges)
    rows = trace.rows if until is None else [row for row in trace.rows if row.time_s <= until]
    result = replay_detail(rows, _settings_from(overrides))
    death = trace.rows[-1].time_s
    return {"family": family, "name": trace.name, "kind": trace.kind, "leak": trace.leak,
            "leak_start_s": trace.leak_start_s, "death_s": death, **result}


def _ranges_from(texts):
    """``NAME=LOW,HIGH`` strings as {name: (low, high)}, checked by ``family_ranges``."""
    ranges = {}
    for text in texts:
        name, _, value = text.partition("=")
        parts = value.split(",")
        if len(parts) != 2:
            raise ValueError(f"--range takes NAME=LOW,HIGH, not '{text}'")
        ranges[name.strip()] = parts
    checked = family_ranges(ranges)  # ValueError names a bad name or bound
    return {name: checked[name] for name in ranges}


def _median(values, fmt="{:.0f}"):
    return fmt.format(statistics.median(values)) if values else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=6, help="traces per family (6)")
    parser.add_argument("--seed", default="101", help="seed of the set, or several, comma-separated (101)")
    parser.add_argument("--lead", type=float, default=60.0, help="seconds an abort must leave before death (60)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families (all)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one guard setting (repeatable)")
    parser.add_argument("--json", metavar="OUT", help="write one JSON line per trace to OUT")
    parser.add_argument("--until", type=float, metavar="S", help="replay only each trace's first S seconds")
    parser.add_argument("--range", dest="ranges", action="append", default=[], metavar="NAME=LOW,HIGH",
                        help="draw the families otherwise (repeatable): " + ", ".join(FAMILY_RANGES))
    parser.add_argument("--evaluation-stairs", action="store_true",
                        help="staircase leaks' evaluation spikes come with every stair")
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in str(args.seed).split(",") if seed.strip()]
    except ValueError:
        print(f"guard_families: --seed takes integers, comma-separated, not '{args.seed}'", file=sys.stderr)
        return 2
    try:
        _settings_from(args.overrides)
    except ValueError as error:
        print(f"guard_families: {error}", file=sys.stderr)
        return 2
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"guard_families: unknown family '{unknown[0]}'; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    try:
        ranges = _ranges_from(args.ranges)
    except ValueError as error:
        print(f"guard_families: {error}", file=sys.stderr)
        return 2
    if args.until is not None and args.until <= 0:
        print(f"guard_families: --until takes a number of seconds above 0, not {args.until:g}", file=sys.stderr)
        return 2
    jobs = [(family, seed, i, args.overrides, args.evaluation_stairs, args.until, ranges)
            for seed in seeds for family in families for i in range(args.per_family)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(score_one, jobs))
    else:
        results = [score_one(job) for job in jobs]
    if args.json:
        with open(args.json, "w") as out:
            for r in results:
                out.write(json.dumps({k: v for k, v in r.items() if k != "assessment"}, default=str) + "\n")
    print(f"seed {','.join(map(str, seeds))}, {args.per_family} per family and seed, lead >= {args.lead:g} s"
          + ("" if args.until is None else f", the first {args.until:g} s of each (leaks that die later left out)")
          + "".join(f", {name} {lo:g}-{hi:g}" for name, (lo, hi) in ranges.items()))
    print("| family | caught | false aborts | warnings per run | median delay from leak start (s) | median lead (s) |")
    print("|---|---|---|---|---|---|")
    problems, total_missed, total_false = [], 0, 0
    for family in families:
        every = [r for r in results if r["family"] == family]
        # an abort before the leak began stopped a healthy run, even where the leak dies after --until
        early = [r for r in every if r["leak"] and r["abort_time_s"] is not None and r["abort_time_s"] < r["leak_start_s"]]
        rows = [r for r in every if args.until is None or not r["leak"] or r["death_s"] <= args.until or r in early]
        if not rows:
            continue
        leaks = [r for r in rows if r["leak"]]
        caught = [r for r in leaks if r["abort_time_s"] is not None and r not in early
                  and r["death_s"] - r["abort_time_s"] >= args.lead]
        false = [r for r in rows if not r["leak"] and r["abort_step"] is not None] + early
        warnings = [r["warnings"] for r in rows if not r["leak"]] or [r["warnings"] for r in rows]
        delays = [r["abort_time_s"] - r["leak_start_s"] for r in caught]
        leads = [r["death_s"] - r["abort_time_s"] for r in caught]
        total_missed += len(leaks) - len(caught)
        total_false += len(false)
        caught_text = f"{len(caught)}/{len(leaks)}" if leaks else "-"
        false_text = f"{len(false)}/{len(rows)}" if false or not leaks else "-"
        print(f"| {family} | {caught_text} | {false_text} | {_median(warnings, '{:.1f}')} (max {max(warnings)}) | "
              f"{_median(delays)} | {_median(leads)} |")
        for r in leaks:
            if r not in caught and r not in early:
                lead = None if r["abort_time_s"] is None else round(r["death_s"] - r["abort_time_s"])
                problems.append(f"MISSED {r['name']} [{r['kind']}] start {r['leak_start_s']} death {r['death_s']:.0f} "
                                f"lead {lead}")
        for r in false:
            before = f", before its leak began at {r['leak_start_s']:.0f} s" if r["leak"] else ""
            problems.append(f"FALSE  {r['name']} [{r['kind']}] at {r['abort_time_s']:.0f} s{before}: {r['reason']}")
    for line in problems:
        print(line)
    print(f"missed={total_missed} false_aborts={total_false}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
