"""Cost of the leak guard per reading: microseconds of MemoryGuard.observe_many for 1 pool and for 8.

    python scripts/bench_guard_cost.py [--hours 6] [--every-s 2]

Feeds a generated healthy run (``tracegen`` family ``eval_spikes``) and a generated fast leak to a
fresh guard, one reading every ``--every-s`` seconds, each reading copied to N pools, and prints the
mean and the 99th-percentile microseconds per reading (all pools together) for N = 1 and 8, measured
in this one run: ``pools=1 mean_us=.. p99_us=..``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfodtrain.memory.guard import MemoryGuard  # noqa: E402
from tfodtrain.memory.tracegen import generate_family_trace  # noqa: E402


def measure(rows, pools: int) -> list:
    guard = MemoryGuard()
    names = [f"gpu{i}" for i in range(pools)]
    costs = []
    for row in rows:
        readings = [(name, row.step, row.time_s, row.used_bytes, row.limit_bytes) for name in names]
        start = time.perf_counter()
        guard.observe_many(readings)
        costs.append((time.perf_counter() - start) * 1e6)
    return costs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    for family in ("eval_spikes", "leak_10min"):
        rows = generate_family_trace(family, args.seed).rows
        span = (rows[-1].time_s - rows[0].time_s) / max(1, len(rows) - 1)
        for pools in (1, 8):
            costs = sorted(measure(rows, pools))
            p99 = costs[int(0.99 * (len(costs) - 1))]
            print(f"{family} ({len(rows)} readings, one every {span:.1f} s): pools={pools} "
                  f"mean_us={statistics.fmean(costs):.0f} p99_us={p99:.0f} max_us={costs[-1]:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
