"""The one build sequence of a run: config -> data -> seed -> devices -> strategy -> Model Garden
params -> precision -> task [-> model, optimizer, Keras trainer].

Training (`tfodtrain.train`), the pre-flight's fresh process (`tfodtrain.preflight.fresh`), evaluation
and export (`tfodtrain.evaluate`, `tfodtrain.export`) and the benchmarks (`tfodtrain.benchmarking`) all
build through `build()` and `Experiment.build_trainer()`, so the model a pre-flight step measures in a
fresh process is the model the run trains.

Example:
    >>> exp = build(cfg, resolve_data(cfg), strategy_name=cfg.trainer.strategy, logging_dir=run_dir)
    >>> exp.build_trainer()          # detector, optimizer and the compiled Keras trainer, in the strategy
    >>> exp.trainer_model.fit(exp.task.build_inputs(exp.params.task.train_data), steps_per_epoch=10)
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
from pathlib import Path

import tf_keras
from omegaconf import DictConfig, OmegaConf

from tfodtrain import distribute
from tfodtrain.exit_codes import UserError


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

        return check_tfrecord_inputs(data, masks=bool(cfg.model.get("masks", False)))
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
    _check_input_size(size, task.model)
    _set_masks(task.model, bool(cfg.model.get("masks", False)))
    task.model.num_classes = data["num_classes"]
    task.model.input_size = [size, size, 3]
    task.annotation_file = None  # evaluate from the TFRecord groundtruths (masks: `build` adds a COCO file)
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


def _check_input_size(size: int, model) -> None:
    """The feature pyramid halves the input up to its top level: the side must divide by 2^max_level."""
    stride = 2 ** int(model.max_level)
    if size % stride:
        raise UserError(f"model.input_size={size} must be a multiple of {stride} for this model (its top level is "
                        f"{model.max_level}), e.g. {max(stride, size // stride * stride)}")


def _set_masks(model, masks: bool) -> None:
    """model.masks switches a Mask R-CNN's mask head; only two-stage models with a mask head have one."""
    if not hasattr(model, "include_mask"):
        if masks:
            raise UserError("model.masks=true needs a Mask R-CNN experiment (e.g. +experiment=maskrcnn)")
        return
    if masks and model.mask_head is None:
        raise UserError(f"model.masks=true: {model.backbone.type} model config has no mask head; "
                        "use +experiment=maskrcnn (or model.masks=false for boxes only)")
    model.include_mask = masks


def mask_annotation_file(data: dict, include_mask: bool) -> tuple[str, int]:
    """A COCO annotation file of the validation TFRecords (boxes and masks) and their number of examples,
    made once per set of files by Model Garden's own generator into the data cache; Model Garden's mask
    evaluation reads its groundtruth masks from it."""
    from official.vision.evaluation import coco_utils

    from tfodtrain.data.validate import iter_records

    files = sorted(f for pattern in data["val"].split(",") for f in glob.glob(pattern))
    key = json.dumps([(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
                     + [include_mask])
    root = Path(os.environ.get("TFODTRAIN_CACHE") or "~/.cache/tfodtrain").expanduser()
    path = root / "annotations" / f"val-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    count_path = path.with_suffix(".count")
    if not (path.is_file() and count_path.is_file()):
        count = sum(1 for f in files for _, record in iter_records(f) if isinstance(record, bytes))
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f"{path.name}.tmp{os.getpid()}")
        coco_utils.scan_and_generator_annotation_file(data["val"], "tfrecord", count, include_mask, str(staging))
        count_path.write_text(str(count))
        os.replace(staging, path)
    return str(path), int(count_path.read_text())


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


def without_unused_levels(backbone):
    """`backbone` as a functional model whose outputs are the levels of its `output_specs`, and no more.

    Model Garden's MobileNet returns its last layer (the 1x1 convolution to 1280 channels) as one more
    level, "6" after levels 2 to 5, and leaves it out of its `output_specs`, so the FPN decoder never
    reads it. Built as is, every step computes that layer for nothing, Keras warns "Input dict contained
    keys ['6'] which did not match any model input" when the decoder is called, and the optimizer warns
    "Gradients do not exist" for its weights. The model returned here shares the backbone's layers; the
    unused one is not part of it. A backbone whose outputs all are levels the decoder reads is returned as is.
    """
    specs = getattr(backbone, "output_specs", None)
    outputs = getattr(backbone, "output", None)
    if not specs or not isinstance(outputs, dict) or set(outputs) <= set(specs):
        return backbone
    trimmed = tf_keras.Model(inputs=backbone.inputs, outputs={level: outputs[level] for level in specs},
                             name=backbone.name)
    trimmed.output_specs = dict(specs)  # what Model Garden's decoder factory reads
    return trimmed


def _build_mobilenet_without_unused_levels(original):
    @functools.wraps(original)
    def build(*args, **kwargs):
        return without_unused_levels(original(*args, **kwargs))

    build.tfodtrain_trimmed = True
    return build


def use_backbones_without_unused_levels() -> None:
    """Make Model Garden's registered `mobilenet` backbone builder return `without_unused_levels(...)`,
    so the task's model, the serving module and a pre-flight's fresh process all build the backbone the
    decoder reads, before the decoder is built. Idempotent."""
    from official.vision.modeling.backbones import factory

    original = factory._REGISTERED_BACKBONE_CLS.get("mobilenet")
    if original is not None and not getattr(original, "tfodtrain_trimmed", False):
        factory._REGISTERED_BACKBONE_CLS["mobilenet"] = _build_mobilenet_without_unused_levels(original)


class TaskTrainer(tf_keras.Model):
    """`fit()` calls the Model Garden task's own `train_step`, so its losses and optimizer logic
    (loss scaling, weight decay) stay Model Garden's while Keras callbacks fire per batch."""

    def __init__(self, task, detector):
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


@dataclasses.dataclass
class Experiment:
    """What `build()` made; `build_trainer()` adds the model, optimizer and Keras trainer."""

    cfg: DictConfig
    data: dict
    params: object  # Model Garden's ExperimentConfig
    gpus: list
    strategy: object  # tf.distribute strategy
    task: object | None = None
    detector: object | None = None
    optimizer: object | None = None
    trainer_model: TaskTrainer | None = None

    def build_detector(self):
        """The task's detector (its backbone without unused levels: `use_backbones_without_unused_levels`)."""
        return self.task.build_model()

    def build_trainer(self) -> "Experiment":
        """The detector, its optimizer and the compiled `TaskTrainer`, in the strategy's scope."""
        trainer = self.cfg.trainer
        with self.strategy.scope():
            self.detector = self.build_detector()
            self.optimizer = self.task.create_optimizer(self.params.trainer.optimizer_config, self.params.runtime)
            self.trainer_model = TaskTrainer(self.task, self.detector)
            self.trainer_model.compile(optimizer=self.optimizer, steps_per_execution=int(trainer.steps_per_execution),
                                       jit_compile=bool(trainer.jit_compile))
        return self


def build(cfg: DictConfig, data: dict, *, strategy_name: str | None = None, logging_dir: str | None = None,
          precision: bool = True, with_task: bool = True) -> Experiment:
    """Seed, devices, strategy, Model Garden params, precision policy and task, in that order.

    `strategy_name` (trainer.strategy) makes the run's distribution strategy, before any TensorFlow op;
    None keeps TensorFlow's default (one device: evaluation, export, a pre-flight's fresh process).
    `precision=False` keeps float32 (export: the serving graph Model Garden exports); `with_task=False`
    stops after the params (export builds Model Garden's serving module instead of a task).
    """
    import tensorflow as tf
    from official.core import task_factory

    use_backbones_without_unused_levels()
    tf_keras.utils.set_random_seed(int(cfg.seed))
    gpus = configure_devices(cfg.memory)
    strategy = distribute.make_strategy(strategy_name, gpus) if strategy_name else tf.distribute.get_strategy()
    params = build_experiment(cfg, data)
    if with_task and getattr(params.task.model, "include_mask", False):
        params.task.annotation_file, params.task.validation_data.num_examples = mask_annotation_file(data, True)
    if precision and cfg.trainer.mixed_precision:
        tf_keras.mixed_precision.set_global_policy(cfg.trainer.mixed_precision)
    task = task_factory.get_task(params.task, logging_dir=logging_dir) if with_task else None
    return Experiment(cfg=cfg, data=data, params=params, gpus=gpus, strategy=strategy, task=task)
