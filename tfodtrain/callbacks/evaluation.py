"""COCO evaluation of the detector on the validation split, periodic (callback) and final (train.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import time

import tensorflow as tf

from tfodtrain.callbacks.base import RunCallback
from tfodtrain.console import verbose

log = logging.getLogger(__name__)

REPORTED_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax100")
MASK_METRICS = ("mask_AP", "mask_AP50", "mask_AP75")  # Mask R-CNN (model.masks=true): the same on the masks


class CocoEvaluator:
    """Runs Model Garden's `validation_step` over the validation split and reduces COCO metrics.

    Example:
        >>> evaluator = CocoEvaluator(task, detector, val_dataset)
        >>> evaluator.evaluate()["AP50"]
    """

    def __init__(self, task, detector, dataset, max_batches: int | None = None):
        self.task = task
        self.detector = detector
        self.dataset = dataset
        self.max_batches = max_batches
        self._step_fn = tf.function(self._validation_step)

    def _validation_step(self, inputs):
        logs = self.task.validation_step(inputs, self.detector, metrics=None)
        groundtruths, predictions = logs[self.task.coco_metric.name]
        groundtruths = dict(groundtruths)
        # COCO conversion calls int() on each image's count: give it scalars, not one-element arrays.
        groundtruths["num_detections"] = tf.reshape(groundtruths["num_detections"], [-1])
        return groundtruths, predictions

    def evaluate(self) -> dict[str, float]:
        printed = io.StringIO()
        # pycocotools prints as it loads an annotation file (Mask R-CNN) and its whole table: to the log file
        # only, unless TFODTRAIN_VERBOSE=1
        with contextlib.nullcontext() if verbose() else contextlib.redirect_stdout(printed):
            self.task.build_metrics(training=False)  # creates a fresh task.coco_metric
        dataset = self.dataset if self.max_batches is None else self.dataset.take(self.max_batches)
        state = None
        for inputs in dataset:
            outputs = self._step_fn(inputs)
            state = self.task.aggregate_logs(state, {self.task.coco_metric.name: outputs})
        if state is None:
            raise RuntimeError("the validation split produced no batch (is it smaller than eval_batch_size?)")
        with contextlib.nullcontext() if verbose() else contextlib.redirect_stdout(printed):
            results = self.task.reduce_aggregated_logs(state)
        log.debug("pycocotools:\n%s", printed.getvalue())
        return {name: float(value) for name, value in results.items() if name in REPORTED_METRICS + MASK_METRICS}


def write_eval_summaries(writer, step: int, metrics: dict[str, float]) -> None:
    with writer.as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(f"eval/{name}", value)
    writer.flush()


class PeriodicEvaluation(RunCallback):
    """COCO metrics every `every_n_steps` steps (TensorBoard `eval/*`); the final one is train.py's."""

    def __init__(self, evaluator: CocoEvaluator, every_n_steps: int):
        super().__init__()
        self.evaluator = evaluator
        self.every_n_steps = int(every_n_steps)

    def on_train_batch_end(self, batch, logs=None):
        step = self.run.step_of(batch)
        if step >= self.run.total_steps or not self.is_due(step, self.every_n_steps):
            return
        start = time.monotonic()
        metrics = self.evaluator.evaluate()
        self.run.eval_spans.append((start, time.monotonic()))
        self.run.evaluations.append({"step": step, **metrics})
        write_eval_summaries(self.run.summary_writer, step, metrics)
        log.info("Evaluation at step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
