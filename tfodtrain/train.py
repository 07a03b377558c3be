"""Training: a Model Garden detection task driven by Keras `fit`, so every Keras callback fires per batch.

`train(cfg)` is the training loop over a checked, composed config (tests call it directly): it builds
through `tfodtrain.experiment`, resumes through `tfodtrain.checkpointing`, runs the pre-flight
(`tfodtrain.preflight`), then `fit` with the configured callbacks, and evaluates at the end. Stopping
early raises `TrainingStopped`; `tfodtrain.entry` maps outcomes to exit codes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tfodtrain import distribute, exit_codes, experiment, rundir
from tfodtrain.exit_codes import TrainingStopped, UserError, first_line
from tfodtrain.memory.limits import MemorySettings
from tfodtrain.memory.policy import sparse_readings_warning

log = logging.getLogger("tfodtrain")


def make_sampler(memory: MemorySettings, run_dir: Path, gpus: list):
    from tfodtrain.callbacks.monitor import MemorySampler

    return MemorySampler(
        interval_steps=memory.interval_steps, interval_s=memory.interval_s, run_dir=run_dir,
        gpu_cap_bytes=memory.gpu_cap_bytes, budget_bytes=memory.budget_bytes,
        watch_host=memory.watch_host, tf_gpus=[f"GPU:{i}" for i in range(len(gpus))])


def startup_lines(cfg: DictConfig, exp, run_dir: Path, strategy: dict) -> list[str]:
    """What runs, in a few lines: experiment and model, data, devices and pools watched, run dir, guard."""
    from tfodtrain.memory.limits import pool_limits
    from tfodtrain.memory.policy import GuardSettings
    from tfodtrain.units import gib

    model = exp.params.task.model
    backbone = model.backbone.get()
    backbone_name = getattr(backbone, "model_id", None) or model.backbone.type
    data = exp.data
    memory = MemorySettings.from_config(cfg.memory)
    limits = pool_limits(len(exp.gpus), memory.gpu_cap_bytes, memory.budget_bytes)
    pools = ", ".join(f"{p} (limit {gib(l.limit_bytes)}: {l.source})" for p, l in limits.items()
                      if p != "host" or memory.watch_host)
    devices = f"{len(exp.gpus)} GPU" if exp.gpus else "CPU only"
    guard = cfg.guard
    if guard.mode == "off":
        guard_line = "leak guard: off"
    else:
        settings = OmegaConf.to_container(guard.settings, resolve=True) if guard.get("settings") else {}
        horizon = GuardSettings.from_mapping({**(settings or {}), "mode": guard.mode}).horizon_s
        guard_line = (f"leak guard: {guard.mode}, {'abort' if guard.mode == 'abort' else 'warning'} when memory "
                      f"would run out within {horizon:.0f} s")
    return [f"{cfg.experiment_name}: {cfg.mode} {model.backbone.type} {backbone_name} + {model.decoder.type}, "
            f"{int(cfg.model.input_size)} px, batch {cfg.trainer.batch_size}, {int(cfg.trainer.steps)} steps, seed {cfg.seed}",
            f"data: {cfg.data.name}, {data['num_classes']} classes (with background), train {data['train']}",
            f"devices: {devices}, {strategy['strategy']} strategy, {strategy['replicas']} replica(s); "
            f"memory watched: {pools}",
            f"run dir: {run_dir}",
            guard_line]


def build_callbacks(cfg: DictConfig, run) -> list:
    """The callbacks of `cfg.callbacks`, built by Hydra; RunCallbacks are attached to the run."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from tfodtrain.callbacks.base import RunCallback

    callbacks = []
    for name, spec in (cfg.callbacks or {}).items():
        if spec is None:
            continue
        if "_target_" not in spec:
            raise UserError(f"callbacks.{name} has no _target_ (the class to build, e.g. tf_keras.callbacks.CSVLogger)")
        try:
            callback = instantiate(spec)
        except InstantiationException as error:
            cause = error.__cause__ or error
            if isinstance(cause, UserError):
                raise cause from None
            raise UserError(f"callbacks.{name}: cannot build {spec['_target_']}: {first_line(cause)}") from None
        if isinstance(callback, RunCallback):
            callback.attach(run)
        callbacks.append(callback)
    return callbacks


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the configured experiment in `cfg.run_dir`; returns the final metrics."""
    run_dir = distribute.worker_run_dir(Path(cfg.run_dir))  # other workers than the chief: RUN_DIR/worker-i
    run_dir.mkdir(parents=True, exist_ok=True)
    data = experiment.resolve_data(cfg)  # bad paths fail here, before TensorFlow builds anything

    import tensorflow as tf

    from tfodtrain.callbacks.agreement import agreement_callbacks
    from tfodtrain.callbacks.base import RunContext
    from tfodtrain.callbacks.evaluation import CocoEvaluator, PeriodicEvaluation, write_eval_summaries
    from tfodtrain.callbacks.review import write_final_summaries
    from tfodtrain.callbacks.signals import SignalCheckpoint
    from tfodtrain.callbacks.throughput import ThroughputMeter
    from tfodtrain.checkpointing import Checkpointer, warm_start
    from tfodtrain.preemption import raise_if_received
    from tfodtrain.preflight import before_fit, take_auto_batch_size

    memory = MemorySettings.from_config(cfg.memory)
    if memory.kill_over_budget and memory.budget_bytes:
        from tfodtrain.memory.budget import OomKillerEmulator

        OomKillerEmulator(memory.budget_bytes).start()
    auto_batch = take_auto_batch_size(cfg)  # trainer.batch_size=auto: a provisional size until the pre-flight
    exp = experiment.build(cfg, data, strategy_name=cfg.trainer.strategy, logging_dir=str(run_dir)).build_trainer()
    strategy, detector, optimizer, trainer_model = exp.strategy, exp.detector, exp.optimizer, exp.trainer_model
    for line in startup_lines(cfg, exp, run_dir, distribute.describe(strategy)):
        log.info("%s", line)
    sparse = sparse_readings_warning(memory.interval_s, "memory.interval_s") if cfg.guard.mode != "off" else None
    if sparse:
        log.warning("%s", sparse)
    with strategy.scope():
        warm_start(exp.task, detector)  # the task's initialize (model.init_checkpoint), one line if it does not fit
    raise_if_received()  # a signal during the build whose exception a library swallowed

    checkpointer = Checkpointer(Path(cfg.run_dir) / rundir.CHECKPOINTS, detector, optimizer,
                                keep=int(cfg.trainer.keep_checkpoints),
                                write_directory=distribute.scratch_checkpoint_dir(Path(cfg.run_dir)))
    restored = checkpointer.restore_latest()
    initial_step = restored or 0
    total_steps = int(cfg.trainer.steps)
    if restored is not None:
        log.info("Resuming from checkpoint %s at step %d of %d", checkpointer.latest, restored, total_steps)

    train_ds = exp.task.build_inputs(exp.params.task.train_data)
    val_ds = exp.task.build_inputs(exp.params.task.validation_data)
    # float64 check, then one real step (undone) whose peak memory must fit each pool's limit (exit 2 if not)
    train_ds, val_ds = before_fit(cfg, exp.params, trainer_model, train_ds, val_ds, exp.gpus, auto_batch, data)
    raise_if_received()

    # Written once the checkpoint is known to fit: a mismatched config leaves the run dir as it was.
    OmegaConf.save(cfg, run_dir / rundir.CONFIG, resolve=True)
    rundir.write_json(run_dir / rundir.RUN_INFO, rundir.run_info(cfg, data, distribute.describe(strategy)))

    evaluator = CocoEvaluator(exp.task, detector, val_ds, max_batches=cfg.trainer.eval_steps)
    writer = tf.summary.create_file_writer(str(run_dir / rundir.TENSORBOARD))
    run = RunContext(run_dir=run_dir, config=OmegaConf.to_container(cfg, resolve=True), checkpointer=checkpointer,
                     summary_writer=writer, initial_step=initial_step, total_steps=total_steps,
                     steps_per_execution=int(cfg.trainer.steps_per_execution))
    run.memory = make_sampler(memory, run_dir, exp.gpus)
    throughput, signals = ThroughputMeter(), SignalCheckpoint()
    internal = [throughput, signals]
    if cfg.trainer.eval_every:
        internal.append(PeriodicEvaluation(evaluator, int(cfg.trainer.eval_every)))
    for callback in internal:
        callback.attach(run)
    agreement = agreement_callbacks(strategy)  # several workers: stop and save together, last
    for callback in agreement:
        callback.attach(run)
    callbacks = internal[:2] + build_callbacks(cfg, run) + internal[2:] + agreement

    remaining = total_steps - initial_step
    if remaining > 0:
        log.info("Training %s for %d steps (%d to %d), run dir %s", cfg.experiment_name, remaining,
                 initial_step, total_steps, run_dir)
        try:
            trainer_model.fit(train_ds, epochs=1, steps_per_epoch=remaining, callbacks=callbacks, verbose=0)
        except tf.errors.ResourceExhaustedError as error:
            path = _emergency_checkpoint(checkpointer)
            raise TrainingStopped(exit_codes.OUT_OF_MEMORY,
                                  f"out of memory at step {int(optimizer.iterations.numpy())}: "
                                  f"{first_line(error, 200)}; emergency checkpoint: {path}") from None
        finally:
            run.memory.stop_background()  # the callbacks stop it at train end; fit may end without that
        if run.abort is not None:
            writer.flush()
            raise TrainingStopped(run.abort.exit_code, run.abort.reason)
    else:
        log.info("Already trained to step %d of %d; evaluating only", initial_step, total_steps)

    final_step = int(optimizer.iterations.numpy())
    metrics = evaluator.evaluate()
    write_eval_summaries(writer, final_step, metrics)
    summary = throughput.summary() if remaining > 0 else {"train_seconds": 0.0, "steps_per_second": None,
                                                        "steps_trained": 0}
    result = {**metrics, "steps": final_step, **summary, "resumed_from_step": restored,
              "evaluations": run.evaluations + [{"step": final_step, **metrics}],
              "checkpoint": checkpointer.latest}
    rundir.write_json(run_dir / rundir.METRICS, result)
    write_final_summaries(writer, final_step, result)  # run/steps_per_second for the hparams table
    writer.flush()
    masks = (f", mask AP {metrics['mask_AP']:.3f}, mask AP50 {metrics['mask_AP50']:.3f}, "
             f"mask AP75 {metrics['mask_AP75']:.3f}" if "mask_AP" in metrics else "")
    pace = f"{summary['steps_per_second']} steps/s" if remaining > 0 else "no steps left to train"
    log.info("Finished at step %d: AP %.3f, AP50 %.3f, AP75 %.3f%s; %s; metrics in %s", final_step,
             metrics.get("AP", float("nan")), metrics.get("AP50", float("nan")), metrics.get("AP75", float("nan")),
             masks, pace, run_dir / rundir.METRICS)
    return result


def _emergency_checkpoint(checkpointer) -> str | None:
    try:
        return checkpointer.save(force=True)
    except Exception as error:  # memory is exhausted: the save itself may fail; say so, don't mask the OOM
        log.error("Emergency checkpoint failed: %s", error)
        return None
