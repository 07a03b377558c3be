"""`mode=eval`: COCO metrics of a checkpoint on the validation split.

Example (shell):
    python -m tfodtrain +experiment=ssd mode=eval hydra.run.dir=RUN_DIR     # RUN_DIR/eval_<step>.json
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from tfodtrain import experiment, rundir
from tfodtrain.checkpointing import checkpoint_to_use, restore_detector

log = logging.getLogger("tfodtrain")


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """COCO metrics of a checkpoint on the validation split -> console, TensorBoard, eval_<step>.json."""
    import tensorflow as tf

    from tfodtrain.callbacks.evaluation import CocoEvaluator, write_eval_summaries

    run_dir = Path(cfg.run_dir)
    checkpoint = checkpoint_to_use(cfg)
    data = experiment.resolve_data(cfg)
    # in the precision the run trained (and evaluated) in
    exp = experiment.build(cfg, data, logging_dir=str(run_dir))
    detector = exp.build_detector()
    step = restore_detector(detector, exp.params, checkpoint)

    start = time.monotonic()
    val_ds = exp.task.build_inputs(exp.params.task.validation_data)
    metrics = CocoEvaluator(exp.task, detector, val_ds, max_batches=cfg.trainer.eval_steps).evaluate()
    seconds = time.monotonic() - start
    # Its own TensorBoard run: beside training's eval/* curves, never mixed into them.
    write_eval_summaries(tf.summary.create_file_writer(str(run_dir / rundir.TENSORBOARD / "checkpoint_eval")),
                         step, metrics)
    result = {**metrics, "step": step, "checkpoint": checkpoint, "eval_seconds": round(seconds, 2),
              "eval_steps": cfg.trainer.eval_steps, "validation_data": data["val"]}
    path = run_dir / rundir.eval_file(step)
    rundir.write_json(path, result)
    log.info("Checkpoint %s (step %d): %s; metrics in %s", checkpoint, step,
             ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), path)
    return result
