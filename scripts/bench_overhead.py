"""Overhead of the memory monitor and leak guard: one smoke-sized run, the two switched on and off in blocks.

    python scripts/bench_overhead.py                        # 30 blocks with, 30 without, 10 steps each
    python scripts/bench_overhead.py --pairs 5 --block-steps 20
    python scripts/bench_overhead.py -- memory.interval_steps=1      # Hydra overrides (worst case: every step)

One process trains `+experiment=smoke` with the default intervals of a real run (memory.interval_steps,
trainer.log_every from configs/; smoke's own are for tests; the checkpoint only at the end: a save takes
seconds here, the same with or without, and would only add noise). The memory monitor and leak guard
are wrapped in `tfodtrain.callbacks.timing.AlternatingBlocks`: after a warm-up (tracing, first readings),
blocks of steps alternate with their batch hooks run ("with") and skipped ("without", the same as
`~callbacks.memory_monitor ~callbacks.leak_guard` for those steps; their begin/end hooks run once),
in pairs whose order swaps every other pair (with, without, without, with, ...). Every step is timed
between consecutive `on_train_batch_end` calls, so process start and tracing are out of the
measurement and both modes see the same load, interleaved every second or so. A block is as many
steps as one memory reading's interval (the default 10 steps: one reading per "with" block).

Per-step time is measured twice: in CPU seconds of the process (all its threads) and in wall-clock
seconds. The monitor and guard cost host CPU work on the training thread, which the CPU time counts
exactly; other people's jobs on this shared 2-core machine swing wall-clock step times by +-30% from
one second to the next (hardly the CPU times), more than the 1% to be resolved. So the headline is
the CPU time: prints every block, the medians, `wall_overhead_ratio=Y` (median wall-clock per-step
time with over without) and last `overhead_ratio=X`: the median CPU time per step with over without.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_config(args, run_dir: Path):
    from omegaconf import OmegaConf, open_dict

    from tfodtrain.benchmarking import compose_run_config, default_value

    steps = args.warmup_steps + 2 * args.pairs * args.block_steps + 1  # +1: the last block's last step ends
    cfg = compose_run_config([
        "+experiment=smoke", f"memory.interval_steps={default_value('memory', 'interval_steps')}",
        f"trainer.log_every={default_value('trainer', 'log_every')}", f"trainer.checkpoint_every={steps + 1}",
        f"trainer.steps={steps}", "trainer.eval_every=0", "trainer.eval_steps=1", *args.overrides], run_dir)
    interval = int(cfg.memory.interval_steps)
    if args.block_steps % interval or args.warmup_steps % interval:
        sys.exit(f"bench_overhead: --block-steps and --warmup-steps must be multiples of memory.interval_steps "
                 f"({interval}), so that every block holds as many readings")
    callbacks = OmegaConf.to_container(cfg.callbacks)
    wrapped = [callbacks.pop(name) for name in ("memory_monitor", "leak_guard")]
    overhead = {"_target_": "tfodtrain.callbacks.timing.AlternatingBlocks", "_convert_": "all", "callbacks": wrapped,
                "warmup_steps": args.warmup_steps, "block_steps": args.block_steps,
                "out": str(run_dir / "overhead_blocks.json")}
    ordered = {}
    for name, spec in callbacks.items():  # the wrapper takes the monitor's place, before progress
        if name == "progress":
            ordered["overhead"] = overhead
        ordered[name] = spec
    ordered.setdefault("overhead", overhead)
    with open_dict(cfg):
        cfg.callbacks = ordered
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30, help="blocks with and blocks without (default: 30 each)")
    parser.add_argument("--block-steps", type=int, default=10, help="steps per block (default: 10)")
    parser.add_argument("--warmup-steps", type=int, default=20, help="untimed steps first (default: 20)")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (printed)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    if args.pairs < 5:
        parser.error("--pairs must be at least 5")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from tfodtrain.benchmarking import overhead_summary
    from tfodtrain.entry import execute

    run_dir = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    cfg = build_config(args, run_dir)
    print(f"bench_overhead: smoke, {args.pairs} blocks with and {args.pairs} without, {args.block_steps} steps each "
          f"after {args.warmup_steps} warm-up steps; memory.interval_steps={cfg.memory.interval_steps}; "
          f"run dir {run_dir}", flush=True)
    execute(cfg)
    blocks = json.loads((run_dir / "overhead_blocks.json").read_text())["blocks"]
    for block in blocks:
        print(f"block {block['block']:2d} {'with   ' if block['with'] else 'without'} "
              f"{1000 * block['seconds_per_step']:8.2f} ms/step, {1000 * block['cpu_seconds_per_step']:8.2f} CPU-ms/step")
    summaries = {key: overhead_summary(blocks, key) for key in ("cpu_seconds_per_step", "seconds_per_step")}
    for key, label in (("cpu_seconds_per_step", "CPU-ms/step"), ("seconds_per_step", "ms/step")):
        summary = summaries[key]
        print(f"median {label}: with {1000 * summary['median_with']:.2f} ({summary['with_blocks']} blocks), "
              f"without {1000 * summary['median_without']:.2f} ({summary['without_blocks']} blocks): "
              f"ratio {summary['overhead_ratio']:.4f}; median ratio within pairs {summary['paired_ratio_median']:.4f}")
    if args.keep:
        print(f"run dir kept: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"wall_overhead_ratio={summaries['seconds_per_step']['overhead_ratio']:.4f}")
    print(f"overhead_ratio={summaries['cpu_seconds_per_step']['overhead_ratio']:.4f}")


if __name__ == "__main__":
    main()
