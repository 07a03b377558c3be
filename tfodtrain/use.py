"""Using a trained detector: evaluate a checkpoint, export a SavedModel, warm-start from a checkpoint.

`train.train(cfg)` hands `mode=eval` and `mode=export` to `run_mode(cfg)`; train.py calls `warm_start`
instead of the task's bare `initialize`, and `check_config` calls `check_use_settings`.

Example (shell):
    python -m tfodtrain +experiment=ssd mode=eval hydra.run.dir=RUN_DIR     # RUN_DIR/eval_<step>.json
    python -m tfodtrain +experiment=ssd mode=export hydra.run.dir=RUN_DIR   # RUN_DIR/export/saved_model
    python -m tfodtrain +experiment=ssd model.init_checkpoint=OTHER_RUN model.init_checkpoint_modules=backbone
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig

from tfodtrain.exit_codes import UserError, first_line
from tfodtrain.train import build_experiment, configure_devices, resolve_data, write_json

log = logging.getLogger("tfodtrain")

SERVING_OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
INIT_MODULES = ("backbone", "decoder")  # what Model Garden's detection tasks restore besides "all"


def find_checkpoint(path: str | os.PathLike, what: str) -> str:
    """The checkpoint prefix named by `path`: a prefix (…/ckpt-600), a checkpoints dir or a run dir.

    Example:
        >>> find_checkpoint("runs/ssd1", "checkpoint")   # -> 'runs/ssd1/checkpoints/ckpt-600'
    """
    import tensorflow as tf

    path = Path(path).expanduser()
    if Path(f"{path}.index").is_file():
        return str(path)
    for directory in (path, path / "checkpoints"):
        latest = tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None
        if latest:
            return latest
    if not path.exists():
        raise UserError(f"{what}={path} does not exist: give a checkpoint (RUN_DIR/checkpoints/ckpt-N), "
                        "a checkpoints dir or a run dir")
    raise UserError(f"{what}={path} holds no checkpoint (no ckpt-N.index, no checkpoints/ with one): "
                    "train it first or point at another run")


def check_use_settings(cfg: DictConfig) -> None:
    """Config checks of the warm start (called by `check_config`): modules known, checkpoint there."""
    modules = cfg.model.get("init_checkpoint_modules", "all")
    names = [modules] if isinstance(modules, str) else list(modules or [])
    if names != ["all"] and (not names or any(name not in INIT_MODULES for name in names)):
        raise UserError(f"model.init_checkpoint_modules={modules} is not one of: all, backbone, decoder, "
                        "[backbone,decoder]")
    if cfg.model.get("init_checkpoint"):
        find_checkpoint(cfg.model.init_checkpoint, "model.init_checkpoint")


def build_variables(detector, input_size) -> None:
    """Create every variable now (the head's are made on first call), so a checkpoint restores, or
    fails to match, at once instead of silently at the first training or evaluation step."""
    import tensorflow as tf

    # RetinaNetModel.call without its post-processing, which has no variables (and NMS is slow eagerly).
    features = detector.backbone(tf.zeros([1, int(input_size[0]), int(input_size[1]), 3]), training=False)
    if detector.decoder is not None:
        features = detector.decoder(features, training=False)
    detector.head(features, training=False)


def warm_start(task, detector) -> str | None:
    """The task's `initialize` (its `init_checkpoint` / `init_checkpoint_modules`), with one clear line
    when the checkpoint does not fit. Returns the checkpoint used, or None without one.

    Example:
        >>> warm_start(task, detector)   # in strategy scope, after task.build_model()
        '/runs/ssd1/checkpoints/ckpt-600'
    """
    import tensorflow as tf

    config = task.task_config
    if not config.init_checkpoint:
        return None
    config.init_checkpoint = find_checkpoint(config.init_checkpoint, "model.init_checkpoint")
    modules = config.init_checkpoint_modules
    build_variables(detector, config.model.input_size)
    try:
        task.initialize(detector)
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        hint = ("; with another head or class count take only model.init_checkpoint_modules=backbone"
                if modules == "all" else "")
        raise UserError(f"model.init_checkpoint={config.init_checkpoint} does not match this model "
                        f"(modules: {modules}): {first_line(error)}{hint}") from None
    log.info("Warm start: %s restored from %s", modules, config.init_checkpoint)
    return config.init_checkpoint


def restore_detector(detector, params, checkpoint: str) -> int:
    """Load the model weights of a run's checkpoint into `detector` (read-only); returns its step.

    Training resumes through `Checkpointer`; using a model needs no optimizer, so this reads the
    checkpoint's `model` and `global_step` only, as Model Garden's export does (`expect_partial`).
    """
    import tensorflow as tf

    build_variables(detector, params.task.model.input_size)
    step = tf.Variable(0, dtype=tf.int64)
    try:
        tf.train.Checkpoint(model=detector, global_step=step).read(checkpoint).expect_partial() \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise UserError(f"the checkpoint {checkpoint} does not fit this configuration (another model or other "
                        f"classes?): {first_line(error)}. Give the overrides it was trained with") from None
    return int(step.numpy())


def _checkpoint_of(cfg: DictConfig) -> str:
    if cfg.get("checkpoint"):
        return find_checkpoint(cfg.checkpoint, "checkpoint")
    try:
        return find_checkpoint(Path(cfg.run_dir) / "checkpoints", "checkpoint")
    except UserError:
        raise UserError(f"no checkpoint in {Path(cfg.run_dir) / 'checkpoints'}: train this run first "
                        "(mode=train), point hydra.run.dir at a trained run, or give checkpoint=PATH") from None


# --------------------------------------------------------------------------------------------------


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """COCO metrics of a checkpoint on the validation split -> console, TensorBoard, eval_<step>.json."""
    run_dir = Path(cfg.run_dir)
    checkpoint = _checkpoint_of(cfg)
    data = resolve_data(cfg)

    import tensorflow as tf
    import tf_keras
    from official.core import task_factory

    from tfodtrain.callbacks.evaluation import CocoEvaluator, write_eval_summaries

    configure_devices(cfg.memory)
    params = build_experiment(cfg, data)
    if cfg.trainer.mixed_precision:  # evaluate in the precision the run trained (and evaluated) in
        tf_keras.mixed_precision.set_global_policy(cfg.trainer.mixed_precision)
    task = task_factory.get_task(params.task, logging_dir=str(run_dir))
    detector = task.build_model()
    step = restore_detector(detector, params, checkpoint)

    start = time.monotonic()
    val_ds = task.build_inputs(params.task.validation_data)
    metrics = CocoEvaluator(task, detector, val_ds, max_batches=cfg.trainer.eval_steps).evaluate()
    seconds = time.monotonic() - start
    # Its own TensorBoard run: beside training's eval/* curves, never mixed into them.
    write_eval_summaries(tf.summary.create_file_writer(str(run_dir / "tensorboard" / "checkpoint_eval")),
                         step, metrics)
    result = {**metrics, "step": step, "checkpoint": checkpoint, "eval_seconds": round(seconds, 2),
              "eval_steps": cfg.trainer.eval_steps, "validation_data": data["val"]}
    path = run_dir / f"eval_{step}.json"
    write_json(path, result)
    log.info("Checkpoint %s (step %d): %s; metrics in %s", checkpoint, step,
             ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), path)
    return result


def load_serving_module(cfg: DictConfig, checkpoint: str, data: dict | None = None):
    """Model Garden's `DetectionModule` (uint8 images in; normalized boxes, classes, scores out) with the
    weights of `checkpoint`. Returns (module, params, step).

    Example:
        >>> module, params, step = load_serving_module(cfg, "runs/ssd1/checkpoints/ckpt-600")
        >>> module.inference_from_image_tensors(tf.zeros([1, 480, 640, 3], tf.uint8))["detection_boxes"]
    """
    from official.vision.serving import detection

    data = data or resolve_data(cfg)
    params = build_experiment(cfg, data)
    params.task.export_config.output_normalized_coordinates = True  # boxes in [0, 1] of any input size
    size = list(params.task.model.input_size[:2])
    module = detection.DetectionModule(params, batch_size=None, input_image_size=size, input_type="image_tensor")
    step = restore_detector(module.model, params, checkpoint)
    return module, params, step


def export_saved_model(cfg: DictConfig) -> dict:
    """A SavedModel via Model Garden's export code into EXPORT_DIR/saved_model, replaced atomically."""
    run_dir = Path(cfg.run_dir)
    checkpoint = _checkpoint_of(cfg)
    export_root = Path(cfg.export_dir or run_dir / "export").expanduser()
    if export_root.exists() and not (export_root / "export_info.json").is_file():
        raise UserError(f"export_dir={export_root} exists and is not a tfodtrain export: give a new directory")
    data = resolve_data(cfg)

    from official.vision.serving import export_saved_model_lib

    configure_devices(cfg.memory)
    module, params, step = load_serving_module(cfg, checkpoint, data)
    staging = export_root.with_name(f"{export_root.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor", batch_size=None, input_image_size=list(params.task.model.input_size[:2]),
        params=params,
        checkpoint_path=None, export_dir=str(staging), export_module=module, export_saved_model_subdir="saved_model")
    label_map = data.get("label_map") or {}
    (staging / "label_map.json").write_text(json.dumps({str(k): v for k, v in label_map.items()}, indent=2) + "\n")
    info = {"checkpoint": checkpoint, "step": step, "experiment": cfg.experiment_name,
            "saved_model": str(export_root / "saved_model"), "signature": "serving_default",
            "input": {"name": "inputs", "dtype": "uint8", "shape": [None, None, None, 3]},
            "outputs": {"detection_boxes": "float32 [batch, 100, 4] ymin, xmin, ymax, xmax in [0, 1]",
                        "detection_classes": "int [batch, 100] class ids (label_map.json)",
                        "detection_scores": "float32 [batch, 100]", "num_detections": "int [batch]"}}
    write_json(staging / "export_info.json", info)
    # Swap in the new export only when complete: a failed export never leaves half a SavedModel.
    previous = export_root.with_name(f"{export_root.name}.old{os.getpid()}")
    if export_root.exists():
        export_root.rename(previous)
    staging.rename(export_root)
    shutil.rmtree(previous, ignore_errors=True)
    log.info("Exported checkpoint %s (step %d) to %s", checkpoint, step, export_root / "saved_model")
    return info


def run_mode(cfg: DictConfig) -> dict:
    """`mode=eval` or `mode=export` (train.py runs `mode=train` itself)."""
    if cfg.mode == "eval":
        return evaluate_checkpoint(cfg)
    if cfg.mode == "export":
        return export_saved_model(cfg)
    raise UserError(f"mode={cfg.mode} is not one of: train, eval, export")
