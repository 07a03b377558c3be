"""Training: a Model Garden detection task driven by Keras `fit`, so every Keras callback fires per batch.

`train(cfg)` is plain Python over a composed config (tests call it directly); `run(cfg)` maps its
outcome to tfodtrain's exit codes; `__main__.py` is the thin Hydra entry point around `run`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import tfodtrain
from tfodtrain import exit_codes
from tfodtrain.config_checks import check_config
from tfodtrain.exit_codes import UserError, first_line

log = logging.getLogger("tfodtrain")
MIB = 1 << 20


class TrainingStopped(Exception):
    """Training stopped early on purpose (guard abort, signal, OOM); carries the exit code."""

    def __init__(self, exit_code: int, reason: str):
        super().__init__(reason)
        self.exit_code = exit_code


# --------------------------------------------------------------------------------------------------
# Configuration -> Model Garden experiment


def resolve_data(cfg: DictConfig) -> dict:
    """Input paths, class count and label map of the configured data; checks paths before any model."""
    data = cfg.data
    if data.name == "shapes":
        from tfodtrain.data.shapes import ensure_shapes_dataset

        paths = ensure_shapes_dataset(
            data.cache_dir, num_train=data.num_train, num_val=data.num_val,
            image_size=data.image_size, seed=data.generator_seed,
        )
        return {"train": paths.train_pattern, "val": paths.val_pattern,
                "num_classes": int(data.num_classes), "label_map": paths.label_map}
    if data.name == "tfrecord":
        from tfodtrain.data.tfrecord import check_tfrecord_inputs

        return check_tfrecord_inputs(data)
    raise UserError(f"unknown data '{data.name}': choose data=shapes or data=tfrecord")


def build_experiment(cfg: DictConfig, data: dict):
    """Model Garden's registered experiment config, overridden from the Hydra values."""
    from official.core import exp_factory
    from official.modeling import optimization
    import official.vision  # noqa: F401  registers the vision experiments

    params = exp_factory.get_exp_config(cfg.model.base_experiment)
    overrides = OmegaConf.to_container(cfg.model.task_overrides, resolve=True) or {}
    try:
        params.override({"task": overrides}, is_strict=True)
    except (KeyError, ValueError, AttributeError) as error:
        raise UserError(f"model.task_overrides does not fit Model Garden's task config: {error}") from None

    trainer = cfg.trainer
    size = int(cfg.model.input_size)
    compute_dtype = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(
        trainer.mixed_precision or "", "float32")
    task = params.task
    task.model.num_classes = data["num_classes"]
    task.model.input_size = [size, size, 3]
    task.annotation_file = None  # evaluate from the TFRecord groundtruths
    task.init_checkpoint = cfg.model.init_checkpoint
    modules = cfg.model.init_checkpoint_modules
    task.init_checkpoint_modules = modules if isinstance(modules, str) else list(modules)  # not a ListConfig
    task.losses.l2_weight_decay = float(trainer.weight_decay)
    task.train_data.input_path = data["train"]
    task.train_data.global_batch_size = int(trainer.batch_size)
    task.train_data.dtype = compute_dtype
    task.train_data.shuffle_buffer_size = int(trainer.shuffle_buffer)
    task.train_data.seed = int(cfg.seed)
    task.validation_data.input_path = data["val"]
    task.validation_data.global_batch_size = int(trainer.eval_batch_size)
    task.validation_data.dtype = compute_dtype
    task.validation_data.drop_remainder = False
    # Model Garden's names ("float16", not "mixed_float16"): create_optimizer adds loss scaling for float16
    params.runtime.mixed_precision_dtype = compute_dtype

    optimizer = {"type": trainer.optimizer, trainer.optimizer: {}}
    if trainer.optimizer == "sgd":
        optimizer["sgd"] = {"momentum": float(trainer.momentum)}
    warmup = int(trainer.warmup_steps)
    params.trainer.optimizer_config = optimization.OptimizationConfig({
        "optimizer": optimizer,
        # The warm-up wrapper calls the cosine with the global step: the offset starts it where the
        # warm-up ends, so it reaches 0 at the last step rather than `warmup` steps before it.
        "learning_rate": {"type": "cosine", "cosine": {
            "initial_learning_rate": float(trainer.learning_rate),
            "decay_steps": max(int(trainer.steps) - warmup, 1), "offset": warmup}},
        "warmup": {"type": "linear", "linear": {
            "warmup_steps": warmup, "warmup_learning_rate": float(trainer.learning_rate) * 0.1}},
    })
    params.trainer.train_steps = int(trainer.steps)
    params.validate()
    return params


def configure_devices(memory_cfg) -> list:
    """GPU memory growth (default) or a per-GPU cap; TensorFlow allows one or the other, not both."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if memory_cfg.gpu_limit_mb:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(memory_cfg.gpu_limit_mb))])
        elif memory_cfg.gpu_growth:
            tf.config.experimental.set_memory_growth(gpu, True)
    return gpus


# --------------------------------------------------------------------------------------------------
# The Keras face of a Model Garden task


def make_trainer_model(task, detector):
    import tf_keras

    class TaskTrainer(tf_keras.Model):
        """`fit()` calls the Model Garden task's own `train_step`, so its losses and optimizer logic
        (loss scaling, weight decay) stay Model Garden's while Keras callbacks fire per batch."""

        def __init__(self):
            super().__init__()
            self.task = task
            self.detector = detector
            self.task_metrics = task.build_metrics(training=True)

        def train_step(self, data):
            return self.task.train_step(data, self.detector, self.optimizer, metrics=self.task_metrics)

        def call(self, inputs, training=False):
            return self.detector(inputs, training=training)

        @property
        def metrics(self):
            return list(self.task_metrics)

    return TaskTrainer()


def _versions() -> dict:
    import tensorflow as tf

    versions = {"tfodtrain": tfodtrain.__version__, "tensorflow": tf.__version__, "python": platform.python_version()}
    for dist in ("tf-models-official", "tf_keras", "hydra-core"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _git_commit() -> str | None:
    source_root = Path(tfodtrain.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source_root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically: a reader (or a kill mid-write) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Internal callbacks: throughput and signals


def _internal_callbacks():
    from tfodtrain.callbacks.base import AbortRequest, RunCallback

    class ThroughputMeter(RunCallback):
        """Steps/s from the end of the first (tracing) execution to the end of the last, evals excluded.

        It is the first callback: its marks bracket whole executions (step and every callback's hooks);
        what follows the last step (final checkpoint, final evaluation) is not training time."""

        def on_train_begin(self, logs=None):
            self.start = time.monotonic()
            self.first_end = None
            self.last_step = self.run.initial_step
            self.last_end = self.start

        def on_train_batch_end(self, batch, logs=None):
            self.last_step = self.run.step_of(batch)
            self.last_end = time.monotonic()
            if self.first_end is None:
                self.first_end = (self.last_end, self.last_step)

        def summary(self) -> dict:
            end = self.last_end
            train_seconds = end - self.start - self.run.eval_seconds_since(self.start)
            rate = None
            if self.first_end is not None and self.last_step > self.first_end[1]:
                seconds = end - self.first_end[0] - self.run.eval_seconds_since(self.first_end[0])
                rate = (self.last_step - self.first_end[1]) / seconds
            return {"train_seconds": round(train_seconds, 2),
                    "steps_per_second": round(rate, 4) if rate else None,
                    "steps_trained": self.last_step - self.run.initial_step}

    class SignalCheckpoint(RunCallback):
        """SIGTERM / SIGINT: finish the current step, checkpoint, stop; the process exits 143 / 130."""

        def __init__(self):
            super().__init__()
            self.received = None
            self._previous = {}

        def on_train_begin(self, logs=None):
            from tfodtrain.preemption import raise_if_received

            raise_if_received()  # a signal before fit whose exception a library swallowed
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

        def _handle(self, signum, frame):
            # Only record it: the step's end acts (and, with several workers, all workers agree first).
            self.received = signum

        def on_train_batch_end(self, batch, logs=None):
            self._checkpoint_and_stop()

        def _checkpoint_and_stop(self):
            if self.received is not None and self.run.abort is None:
                name = signal.Signals(self.received).name
                path = self.run.checkpointer.save()
                self.run.request_abort(AbortRequest(128 + self.received, f"{name} received; checkpoint {path}"))
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self._checkpoint_and_stop()  # a signal that came after the last step's check
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    return ThroughputMeter(), SignalCheckpoint()


def make_sampler(cfg: DictConfig, run_dir: Path, gpus: list):
    from tfodtrain.callbacks.monitor import MemorySampler

    memory = cfg.memory
    return MemorySampler(
        interval_steps=int(memory.interval_steps), interval_s=float(memory.interval_s), run_dir=run_dir,
        gpu_cap_bytes=int(memory.gpu_limit_mb * MIB) if memory.gpu_limit_mb else None,
        budget_bytes=int(memory.budget_mb * MIB) if memory.budget_mb else None,
        watch_host=bool(memory.watch_host), tf_gpus=[f"GPU:{i}" for i in range(len(gpus))])


def build_callbacks(cfg: DictConfig, run) -> list:
    from hydra.utils import instantiate
    from hydra.errors import InstantiationException

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


# --------------------------------------------------------------------------------------------------


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the configured experiment in `cfg.run_dir`; returns the final metrics."""
    check_config(cfg)
    if cfg.mode != "train":
        from tfodtrain import use

        return use.run_mode(cfg)
    from tfodtrain import distribute

    run_dir = distribute.worker_run_dir(Path(cfg.run_dir))  # other workers than the chief: RUN_DIR/worker-i
    run_dir.mkdir(parents=True, exist_ok=True)
    data = resolve_data(cfg)  # bad paths fail here, before TensorFlow builds anything

    import tensorflow as tf
    import tf_keras

    from tfodtrain.callbacks.base import RunContext
    from tfodtrain.callbacks.evaluation import CocoEvaluator, PeriodicEvaluation, write_eval_summaries
    from tfodtrain.checkpointing import Checkpointer
    from tfodtrain.preemption import raise_if_received
    from tfodtrain.use import warm_start
    from official.core import task_factory

    tf_keras.utils.set_random_seed(int(cfg.seed))
    gpus = configure_devices(cfg.memory)
    strategy = distribute.make_strategy(cfg.trainer.strategy, gpus)  # before any op (multi-worker needs it)
    if cfg.memory.kill_over_budget and cfg.memory.budget_mb:
        from tfodtrain.memory.budget import OomKillerEmulator

        OomKillerEmulator(int(cfg.memory.budget_mb * MIB)).start()
    from tfodtrain.preflight import before_fit, take_auto_batch_size

    auto_batch = take_auto_batch_size(cfg)  # trainer.batch_size=auto: a provisional size until the pre-flight
    params = build_experiment(cfg, data)
    if cfg.trainer.mixed_precision:
        tf_keras.mixed_precision.set_global_policy(cfg.trainer.mixed_precision)

    task = task_factory.get_task(params.task, logging_dir=str(run_dir))
    with strategy.scope():
        detector = task.build_model()
        warm_start(task, detector)  # the task's initialize (model.init_checkpoint), one line if it does not fit
        optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
        trainer_model = make_trainer_model(task, detector)
        trainer_model.compile(optimizer=optimizer, steps_per_execution=int(cfg.trainer.steps_per_execution),
                              jit_compile=bool(cfg.trainer.jit_compile))
    raise_if_received()  # a signal during the build whose exception a library swallowed

    checkpointer = Checkpointer(Path(cfg.run_dir) / "checkpoints", detector, optimizer,
                                keep=int(cfg.trainer.keep_checkpoints),
                                write_directory=distribute.scratch_checkpoint_dir(Path(cfg.run_dir)))
    restored = checkpointer.restore_latest()
    initial_step = restored or 0
    total_steps = int(cfg.trainer.steps)
    if restored is not None:
        log.info("Resuming from checkpoint %s at step %d of %d", checkpointer.latest, restored, total_steps)

    train_ds = task.build_inputs(params.task.train_data)
    val_ds = task.build_inputs(params.task.validation_data)
    # float64 check, then one real step (undone) whose peak memory must fit each pool's limit (exit 2 if not)
    train_ds, val_ds = before_fit(cfg, params, trainer_model, train_ds, val_ds, gpus, auto_batch, data)
    raise_if_received()

    # Written once the checkpoint is known to fit: a mismatched config leaves the run dir as it was.
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    run_info = {"experiment": cfg.experiment_name, "seed": int(cfg.seed), "versions": _versions(),
                "git_commit": _git_commit(), "argv": sys.argv, "host": platform.node(),
                "data": {k: v for k, v in data.items() if k != "label_map"},
                "distribution": distribute.describe(strategy)}
    write_json(run_dir / "run_info.json", run_info)

    evaluator = CocoEvaluator(task, detector, val_ds, max_batches=cfg.trainer.eval_steps)
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    run = RunContext(run_dir=run_dir, config=OmegaConf.to_container(cfg, resolve=True), checkpointer=checkpointer,
                     summary_writer=writer, initial_step=initial_step, total_steps=total_steps,
                     steps_per_execution=int(cfg.trainer.steps_per_execution))
    run.memory = make_sampler(cfg, run_dir, gpus)
    throughput, signals = _internal_callbacks()
    internal = [throughput, signals]
    if cfg.trainer.eval_every:
        internal.append(PeriodicEvaluation(evaluator, int(cfg.trainer.eval_every)))
    for callback in internal:
        callback.attach(run)
    agreement = distribute.agreement_callbacks(strategy)  # several workers: stop and save together, last
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
    write_json(run_dir / "metrics.json", result)
    from tfodtrain.callbacks.review import write_final_summaries  # run/steps_per_second for the hparams table

    write_final_summaries(writer, final_step, result)
    writer.flush()
    log.info("Finished at step %d: AP %.3f, AP50 %.3f, AP75 %.3f; %s steps/s; metrics in %s", final_step,
             metrics.get("AP", float("nan")), metrics.get("AP50", float("nan")), metrics.get("AP75", float("nan")),
             summary["steps_per_second"], run_dir / "metrics.json")
    return result


def _emergency_checkpoint(checkpointer) -> str | None:
    try:
        return checkpointer.save(force=True)
    except Exception as error:  # memory is exhausted: the save itself may fail; say so, don't mask the OOM
        log.error("Emergency checkpoint failed: %s", error)
        return None


def run(cfg: DictConfig) -> int:
    """Train and map the outcome to an exit code (see tfodtrain.exit_codes)."""
    from tfodtrain.preemption import Preempted, stop_on_signals

    try:
        with stop_on_signals():  # SIGTERM / SIGINT outside fit: exit 143 / 130, no traceback
            train(cfg)
    except UserError as error:
        print(f"tfodtrain: error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except (TrainingStopped, Preempted) as stop:
        log.warning("Training stopped: %s (exit %d)", stop, stop.exit_code)
        return stop.exit_code
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    return exit_codes.OK
