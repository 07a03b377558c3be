"""Make the sample memory traces kept in the repository (tests/data/sample_traces), from tracegen.

Eight generated runs, each one family of `tfodtrain.memory.tracegen` drawn with a fixed seed: four
leaking to the limit (their last row is the out-of-memory reading) and four healthy, ~0.7 MB in all.
The README's replay example reads them; tests/test_sample_traces.py checks that they are exactly what
this script makes.

    python scripts/make_sample_traces.py                       # (re)writes tests/data/sample_traces
    python scripts/make_sample_traces.py --out /tmp/traces     # elsewhere
    python -m tfodtrain.memory.replay tests/data/sample_traces/*.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tfodtrain.memory.tracegen import generate_family_trace, write_set

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "sample_traces"
# (family, seed): runs of a few thousand readings each, so the folder stays small.
SAMPLES = (
    ("leak_3min", 1), ("leak_10min", 3), ("leak_60min", 2), ("staircase_leak", 3),
    ("eval_spikes", 1), ("allocator_staircase", 1), ("one_time_step", 3), ("cache_fill", 2),
)


def sample_traces():
    """The sample runs, named FAMILY_SEED.csv; labels.json says which leak and when they ran out."""
    return [generate_family_trace(family, seed) for family, seed in SAMPLES]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write (default {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    labels = write_set(str(args.out), sample_traces())
    print(f"wrote {len(SAMPLES)} traces and {labels}")


if __name__ == "__main__":
    main()
