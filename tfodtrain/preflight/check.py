"""The pre-flight's hooks for training: the float64 check, one measured step (undone), the search.

See the package docstring (tfodtrain.preflight) and docs/preflight.md.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from tfodtrain import rundir
from tfodtrain.exit_codes import UserError
from tfodtrain.memory.limits import MemorySettings, PoolLimit, pool_limits
from tfodtrain.preflight.fresh import FreshProcessStep
from tfodtrain.preflight.search import NOISE_MARGIN, SearchFailed, Trial, fits, largest_fitting
from tfodtrain.preflight.step import (StepTrials, TrainingState, create_optimizer_variables, dataset_preparer,
                                      prepare_train_dataset)
from tfodtrain.units import gib

log = logging.getLogger("tfodtrain")
PROVISIONAL_AUTO_BATCH = 2  # trainer.batch_size=auto: the first step's batch size


def take_auto_batch_size(cfg) -> bool:
    """`trainer.batch_size=auto`: put a provisional size in the config (the pre-flight replaces it);
    a resumed run keeps the size it was trained with (its run dir's config.yaml). True when searching."""
    if cfg.trainer.batch_size != "auto":
        return False
    previous = Path(cfg.run_dir) / rundir.CONFIG
    size = PROVISIONAL_AUTO_BATCH
    searching = True
    if previous.exists() and any((Path(cfg.run_dir) / "checkpoints").glob("ckpt-*.index")):
        recorded = OmegaConf.load(previous).trainer.get("batch_size")
        if isinstance(recorded, int) and recorded > 0:
            size, searching = recorded, False
            log.info("trainer.batch_size=auto: resuming with batch size %d, found by the first run", size)
    with open_dict(cfg):
        cfg.trainer.batch_size = size
    return searching


def before_fit(cfg, params, trainer_model, train_ds, val_ds, gpus, auto_batch: bool = False, data: dict | None = None):
    """float64 check, then the memory pre-flight (one real step, undone); returns (train_ds, val_ds).

    Called before the run dir's config.yaml is written: a UserError here (float64 with data.float64=error,
    a step that does not fit) leaves an existing run dir as it was. With `auto_batch` the batch size found
    is put in `cfg` and `params`, so config.yaml records it. Writes `preflight.json` to the run dir.
    """
    from tfodtrain.dtypes import apply_float64_policy

    run_dir = Path(cfg.run_dir)
    float64_mode = cfg.data.get("float64", "cast")
    train_ds = prepare_train_dataset(cfg, train_ds)
    batch_sizes = {"train": int(cfg.trainer.batch_size), "val": int(cfg.trainer.eval_batch_size)}
    datasets, float64_report = apply_float64_policy(float64_mode, {"train": train_ds, "val": val_ds}, batch_sizes,
                                                    trainer_model.detector)
    train_ds, val_ds = datasets["train"], datasets["val"]
    report = {"float64": float64_report, "memory": None, "bad_records": (data or {}).get("bad_records")}
    if cfg.trainer.get("preflight", True):
        trials = StepTrials(trainer_model, trainer_model.task, params.task.train_data, dataset_preparer(cfg),
                            [f"GPU:{i}" for i in range(len(gpus))])
        report["memory"], chosen = check_memory(cfg, trials, len(gpus), auto_batch, data)
        if chosen is not None and chosen != int(cfg.trainer.batch_size):
            with open_dict(cfg):
                cfg.trainer.batch_size = chosen
            params.task.train_data.global_batch_size = chosen
            train_ds = trials.fresh_dataset(chosen)
            # A new trace for the new batch size: retraced, Keras's train function would relax the batch
            # dimension to None, which Faster/Mask R-CNN's samplers cannot take (they loop over the batch).
            trainer_model.train_function = None
    rundir.write_json(run_dir / rundir.PREFLIGHT, report)
    _log_skipped_records(run_dir, report["bad_records"])
    return train_ds, val_ds


def _log_skipped_records(run_dir: Path, skipped: dict | None) -> None:
    """TensorBoard scalars data/skipped_records/<split> (data.bad_records=skip), at step 0."""
    if not skipped or not any(skipped.values()):
        return
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default(step=0):
        for split, count in skipped.items():
            tf.summary.scalar(f"data/skipped_records/{split}", count)
    writer.close()


def check_memory(cfg, trials: StepTrials, gpu_count: int, auto_batch: bool, data: dict | None = None):
    """Run the pre-flight step (and the search when needed); returns (report, batch size to use or None)."""
    headroom = float(cfg.trainer.get("preflight_headroom", 0.1))
    memory = MemorySettings.from_config(cfg.memory)
    limits = pool_limits(gpu_count, memory.gpu_cap_bytes, memory.budget_bytes)
    targets = {p: l.target(headroom) for p, l in limits.items()}
    search_targets = {p: int(l.limit_bytes * (1 - headroom - NOISE_MARGIN)) for p, l in limits.items()}
    batch_size = int(cfg.trainer.batch_size)
    create_optimizer_variables(trials.model)
    state = TrainingState(trials.model, trials.model.optimizer)
    started = time.monotonic()
    found, search_failed = None, False
    try:
        first = trials.run(batch_size)
        if auto_batch or not fits(first, targets):
            # GPU allocator peaks are exact in this process; host RSS needs a fresh process per step
            run_step = trials.run if gpu_count else FreshProcessStep(cfg, data, trials.probe.before.get("host", 0))
            if auto_batch:
                upper = int(cfg.trainer.get("auto_batch_max", 64))
            else:
                log.warning("Pre-flight: one step at batch size %d does not fit; searching the largest that does",
                            batch_size)
                upper = batch_size - 1
            found = largest_fitting([first], run_step, search_targets, upper)
    except SearchFailed as error:
        log.warning("Pre-flight: the batch size search failed: %s", error)
        found, search_failed = None, True
    finally:
        state.restore()
    seconds = round(time.monotonic() - started, 2)
    report = {"batch_size": batch_size, "peaks": first.peaks, "seconds": seconds,
              "limits": {p: dataclasses.asdict(l) for p, l in limits.items()}, "headroom": headroom,
              "fits": fits(first, targets), "auto": auto_batch, "largest_fitting_batch_size": found}
    if auto_batch:
        if found is None:
            raise UserError(_does_not_fit(first, limits, targets, None, search_failed)
                            + "; trainer.batch_size=auto found no size that fits")
        log.info("Pre-flight: trainer.batch_size=auto chose %d (the largest that fits; %s)", found,
                 _describe(first, limits))
        return report, found
    if not fits(first, targets):
        raise UserError(_does_not_fit(first, limits, targets, found, search_failed))
    log.info("Pre-flight: one step at batch size %d fits: %s (%.1f s)", batch_size, _describe(first, limits), seconds)
    return report, None


def _describe(trial: Trial, limits: dict[str, PoolLimit]) -> str:
    if trial.peaks is None:
        return "out of memory"
    return ", ".join(f"{p} peak {gib(trial.peaks[p])} of {gib(l.limit_bytes)}" for p, l in limits.items()
                     if p in trial.peaks)


def _does_not_fit(first: Trial, limits: dict[str, PoolLimit], targets: dict[str, int], found: int | None,
                  search_failed: bool = False) -> str:
    if first.peaks is None:
        need = f"one training step at batch size {first.batch_size} ran out of GPU memory"
    else:
        pool = max(targets, key=lambda p: first.peaks.get(p, 0) / targets[p])
        limit = limits[pool]
        need = (f"one training step at batch size {first.batch_size} needs {gib(first.peaks[pool])} of {pool} memory "
                f"(its peak), more than {gib(targets[pool])} ({100 * targets[pool] / limit.limit_bytes:.0f}% of the "
                f"{gib(limit.limit_bytes)} limit set by {limit.source})")
    if search_failed:
        return need + "; the search for a batch size that fits failed (its log lines are above): lower trainer.batch_size"
    if found is None:
        return (need + "; even batch size 1 does not fit: raise the limit (memory.budget_mb, memory.gpu_limit_mb), "
                       "lower model.input_size, or use a smaller model")
    return (need + f"; the largest batch size that fits is {found}: run with trainer.batch_size={found} "
                   "(or trainer.batch_size=auto), or raise the limit")
