"""The seed's leak, on purpose: every batch's detections kept in a Python list until memory runs out.

Used by `+experiment=leak_demo` to show the guard catching a real leak in a real training run.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tfodtrain.callbacks.base import RunCallback


class KeepDetections(RunCallback):
    """Runs the detector on a fixed batch after every training batch and appends the detections
    (its raw class and box outputs, as numpy) to a list that is never cleared.

    The outputs of a small model are small, so each batch's detections are kept `copies` times
    (separate arrays, as a list of per-image results would be) to reach about `mib_per_step` MiB
    per step: fast enough that a short demo reaches its memory budget.

    With the leak on, training is paced to at most `max_steps_per_s` steps a second, so the leak
    grows at most `mib_per_step * max_steps_per_s` MiB/s on any machine: a fast machine would
    otherwise fill the budget within seconds of the start, before any detector (or person) could
    have seen a trend. A slower machine leaks more slowly and the guard has more time.

    The leak starts after `start_step` batches of this process (paced like the rest): a run that
    settles first and then leaks, as most real leaks begin, and the guard's start-up discount ends on
    the flat readings instead of running to its cap.

    Example:
        python -m tfodtrain +experiment=leak_demo leak_demo.leak=false   # the same run, leak off
    """

    def __init__(self, enabled: bool = True, mib_per_step: float = 8.0, max_steps_per_s: float | None = 5.0,
                 images: int = 2, image_size: int = 128, start_step: int = 0):
        super().__init__()
        self.enabled = bool(enabled)
        self.start_step = int(start_step)
        self._batches = 0  # batches ended in this process
        self.mib_per_step = float(mib_per_step)
        self.max_steps_per_s = float(max_steps_per_s) if max_steps_per_s else None
        self._last_end: float | None = None
        self.images = int(images)
        self.image_size = int(image_size)
        self.kept: list = []
        self._predict = None
        self._copies = 1

    def on_train_begin(self, logs=None):
        if not self.enabled:
            return
        import tensorflow as tf

        detector = self.model.detector
        size = self.image_size
        batch = tf.random.stateless_uniform([self.images, size, size, 3], seed=[1, 2])
        self._predict = tf.function(lambda: detector(batch, training=True))
        nbytes = sum(t.numpy().nbytes for t in tf.nest.flatten(self._raw_outputs()))
        self._copies = max(1, math.ceil(self.mib_per_step * (1 << 20) / max(nbytes, 1)))

    def _raw_outputs(self):
        outputs = self._predict()
        return {"cls_outputs": outputs["cls_outputs"], "box_outputs": outputs["box_outputs"]}

    def on_train_batch_end(self, batch, logs=None):
        if not self.enabled:
            return
        self._batches += 1
        if self._batches <= self.start_step:
            self._pace()
            return
        import tensorflow as tf

        arrays = [t.numpy() for t in tf.nest.flatten(self._raw_outputs())]
        for _ in range(self._copies):
            self.kept.append([np.array(a, copy=True) for a in arrays])
        self._pace()

    def _pace(self) -> None:
        """Sleep what is left of this step's share of a second at `max_steps_per_s`."""
        if self.max_steps_per_s is None:
            return
        now = time.monotonic()
        if self._last_end is not None:
            wait = 1.0 / self.max_steps_per_s - (now - self._last_end)
            if wait > 0:
                time.sleep(wait)
                now += wait
        self._last_end = now
