"""Measuring the training loop: tfodtrain against Model Garden's own trainer, and the monitor+guard overhead.

The two benchmark scripts are thin command lines over this module:

- `scripts/bench_throughput.py` trains one experiment config through tfodtrain (`python -m tfodtrain`,
  default callbacks) and through Model Garden's `train_lib.run_experiment` (orbit), each run in a fresh
  process. `tfodtrain.bench_model_garden.train_model_garden` is the Model Garden side: the same `build_experiment` params, timed by
  a `LoopTimer` orbit action, with two one-step loops first (`single_step_loops_controller`) so the
  tracing step and the checkpoint orbit saves after a fresh run's first loop are left out, as the
  tracing step and other one-time work are left out of tfodtrain's rate (`StepClock`).
- `scripts/bench_overhead.py` runs one smoke-sized training in one process; the callback
  `tfodtrain.callbacks.timing.AlternatingBlocks` switches the memory monitor and leak guard on and off
  in blocks of steps and times every step; `overhead_summary` reduces its blocks.

Nothing here imports TensorFlow at module level (the scripts' parent processes stay light).

Example:
    >>> cfg = compose_run_config(["+experiment=smoke", "trainer.steps=22"], run_dir="/tmp/mg")
    >>> overhead_summary(blocks)["overhead_ratio"]
"""

from __future__ import annotations

import statistics
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def compose_run_config(overrides: list[str], run_dir: str | Path) -> DictConfig:
    """The config `python -m tfodtrain OVERRIDES hydra.run.dir=RUN_DIR` runs (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    from tfodtrain.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="bench"):
        return compose(config_name="config", overrides=[*overrides, f"run_dir={run_dir}"])


def default_value(group: str, key: str):
    """A value of a config group's default file, e.g. `default_value("memory", "interval_steps")` -> 10."""
    from tfodtrain.paths import config_dir

    return OmegaConf.load(config_dir() / group / "default.yaml")[key]


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)


# --------------------------------------------------------------------------------------------------
# Monitor + guard overhead (the callback that switches them: tfodtrain.callbacks.timing)


def overhead_summary(blocks: list[dict], key: str = "seconds_per_step") -> dict:
    """Median per-step time (`key`: wall `seconds_per_step` or `cpu_seconds_per_step`) with and without,
    their ratio, and the median with/without ratio within each pair of blocks (2i, 2i+1)."""
    with_times = [b[key] for b in blocks if b["with"]]
    without_times = [b[key] for b in blocks if not b["with"]]
    by_index = {b["block"]: b for b in blocks}
    pairs = []
    for first in range(0, max(by_index, default=0), 2):
        pair = [by_index.get(first), by_index.get(first + 1)]
        if None not in pair and pair[0]["with"] != pair[1]["with"]:
            with_block, without_block = sorted(pair, key=lambda b: not b["with"])
            pairs.append(with_block[key] / without_block[key])
    with_median, without_median = statistics.median(with_times), statistics.median(without_times)
    return {"with_blocks": len(with_times), "without_blocks": len(without_times),
            "median_with": with_median, "median_without": without_median,
            "overhead_ratio": with_median / without_median,
            "paired_ratio_median": statistics.median(pairs) if pairs else None}
