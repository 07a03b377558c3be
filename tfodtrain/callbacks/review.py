"""TensorBoard review summaries: the resolved config, why a run stopped, and hparams for sweeps.

Written to RUN_DIR/tensorboard beside the memory tags of `MemoryMonitor` and the `guard/abort` text of
`LeakGuard`, so `tensorboard --logdir RUN_DIR` (or a Hydra multirun dir) shows them:

| tag                          | kind   | when                                                          |
|------------------------------|--------|---------------------------------------------------------------|
| `config/resolved`            | text   | every (re)start: the resolved config as YAML                  |
| `run/stopped`                | text   | training stopped early (guard abort, signal): exit code, why  |
| `run/peak_used_mib/<pool>`   | scalar | end of training: this process's highest used memory           |
|                              |        | (the allocator's peak on GPUs)                                |
| `run/steps_per_second`       | scalar | end of the run (`metrics.json`'s figure)                      |
| hparams plugin               | -      | start: experiment and swept/overridden values; metrics        |
|                              |        | `eval/AP`, `eval/AP50`, `run/steps_per_second`, peaks         |

Example:
    python -m tfodtrain -m +experiment=smoke trainer.learning_rate=0.01,0.02
    tensorboard --logdir multirun/smoke      # HPARAMS tab: one row per job, AP and steps/s side by side
"""

from __future__ import annotations

import logging
from typing import Iterable

from omegaconf import OmegaConf

from tfodtrain.callbacks.base import RunCallback
from tfodtrain.units import MIB

log = logging.getLogger(__name__)

# Reported by every run, overridden or not. The rest of the config is in the `config/resolved` text: the
# HPARAMS table shows its first columns (by name) by default, and they should be what the sweep varied.
CORE_HPARAMS = ("experiment_name",)
# Override keys that are where/how a run is stored, not what it trains.
IGNORED_OVERRIDES = ("run_dir", "hydra.")
# Config-group overrides whose choice a core setting already shows (+experiment=smoke: experiment_name).
SHOWN_GROUPS = ("experiment",)
FINAL_METRICS = ("eval/AP", "eval/AP50", "run/steps_per_second")


def _lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    return node, True


def _hparam_value(value):
    """hparams accept bool, int, float and str; None is shown as "null"."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def run_hparams(config: dict, overrides: Iterable[str] = ()) -> dict:
    """The hparams of a run: the experiment and every command-line override, as resolved in `config`.

    Example:
        >>> run_hparams({"experiment_name": "ssd", "trainer": {"learning_rate": 0.02}},
        ...             ["+experiment=ssd", "trainer.learning_rate=0.02"])
        {'experiment_name': 'ssd', 'trainer.learning_rate': 0.02}
    """
    values = {}
    for key in CORE_HPARAMS:
        value, found = _lookup(config, key)
        if found:
            values[key] = _hparam_value(value)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or key.startswith("~"):
            continue
        key = key.lstrip("+")
        if key.startswith(IGNORED_OVERRIDES) or key in SHOWN_GROUPS:
            continue
        value, found = _lookup(config, key)
        # A group choice (data=tfrecord) or a list resolves to a section: the override's text says it best.
        values[key] = _hparam_value(value) if found and not isinstance(value, (dict, list)) else raw
    return values


def hydra_overrides() -> list[str]:
    """The task overrides of the Hydra job this process runs (empty outside the CLI, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def expected_pools(sampler) -> list[str]:
    """The pools the memory sampler will watch (known before the first reading)."""
    if sampler is None:
        return []
    pools = [f"gpu{index}" for index in range(len(sampler.tf_gpus))]
    return pools + (["host"] if sampler.watch_host else [])


class ReviewSummaries(RunCallback):
    """Resolved config and hparams at train start, per-pool peak memory and the stop reason at its end.

    Example (configs/callbacks/review.yaml):
        review:
          _target_: tfodtrain.callbacks.review.ReviewSummaries
    """

    def __init__(self, overrides: list[str] | None = None):
        super().__init__()
        self.overrides = overrides
        self.peaks_mib: dict[str, float] = {}
        self._seen_sample = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        config = self.run.config
        overrides = self.overrides if self.overrides is not None else hydra_overrides()
        hparams = run_hparams(config, overrides)
        metrics = list(FINAL_METRICS) + [f"run/peak_used_mib/{pool}" for pool in expected_pools(self.run.memory)]
        with self.run.summary_writer.as_default(step=self.run.initial_step):
            tf.summary.text("config/resolved", "```yaml\n" + OmegaConf.to_yaml(config) + "```")
            hp.hparams_config(hparams=[hp.HParam(name) for name in hparams],
                              metrics=[hp.Metric(tag) for tag in metrics])
            hp.hparams(hparams, trial_id=str(self.run.run_dir))
        self.run.summary_writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._note_peaks()

    def _note_peaks(self) -> None:
        # The sampler's own peaks: every reading counts, background ones between step ends included.
        sample = self.run.memory.last if self.run.memory is not None else None
        if sample is None or sample is self._seen_sample:
            return
        self._seen_sample = sample
        for pool, peak in self.run.memory.peak_bytes.items():
            self.peaks_mib[pool] = max(self.peaks_mib.get(pool, 0.0), peak / MIB)

    def on_train_end(self, logs=None):
        import tensorflow as tf

        self._seen_sample = None  # readings recorded at train end (the monitor's) count too
        self._note_peaks()
        step = int(self.model.optimizer.iterations.numpy())
        abort = self.run.abort
        with self.run.summary_writer.as_default(step=step):
            for pool, peak in self.peaks_mib.items():
                tf.summary.scalar(f"run/peak_used_mib/{pool}", peak)
            if abort is not None:
                tf.summary.text("run/stopped", f"exit {abort.exit_code}: {abort.reason}")
        self.run.summary_writer.flush()


def write_final_summaries(writer, step: int, result: dict) -> None:
    """The run's throughput as a scalar, for the hparams table (called by train.py after metrics.json)."""
    import tensorflow as tf

    if result.get("steps_per_second") is None:
        return
    with writer.as_default(step=step):
        tf.summary.scalar("run/steps_per_second", float(result["steps_per_second"]))
    writer.flush()
