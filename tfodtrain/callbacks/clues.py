"""Leak clues for the leak guard: which Python objects accumulate, and a training function that retraces.

Both are classic sources of a slow leak: a Python container that keeps every batch's outputs, and a
`tf.function` traced again and again (a Python value or a changing shape in its inputs), each trace
keeping a new graph. `LeakGuard` owns one `LeakClues`: at each memory reading it calls `observe` (a
baseline census of Python objects once, and the training function's trace count, both cheap), adds
`describe` to its warnings and `report` to `abort_report.json` under `leak_clues`.

Example (abort_report.json of `+experiment=leak_demo`):
    "leak_clues": {"python_objects": {"since_step": 1, "step": 96,
                   "growing": [{"kind": "list of ndarray", "growth": 3040, "per_100_steps": 3200.0, ...}, ...]},
                   "retracing": {"train_function_traces": 1, "retraces": 0}}
"""

from __future__ import annotations

import logging

from tfodtrain.memory.pyobjects import ObjectGrowth, describe

log = logging.getLogger(__name__)


class RetraceWatch:
    """Warns when the Keras training function (a `tf.function`) keeps being traced: after 2 retraces,
    then each time the count doubles. Checked at memory readings, never per step."""

    def __init__(self, warn_after: int = 2):
        self.warn_after = warn_after
        self.first_count: int | None = None
        self.first_step: int | None = None
        self.count: int | None = None
        self._warned_at = 0

    def check(self, step: int, model) -> str | None:
        function = getattr(model, "train_function", None)
        if function is None or not hasattr(function, "experimental_get_tracing_count"):
            return None
        self.count = int(function.experimental_get_tracing_count())
        if self.first_count is None:
            self.first_count, self.first_step = self.count, step
            return None
        retraces = self.count - self.first_count
        if retraces < max(self.warn_after, 2 * self._warned_at):
            return None
        self._warned_at = retraces
        return (f"the training tf.function was traced {retraces} more times since step {self.first_step} "
                f"({self.count} traces in all): each trace keeps a graph in memory; inputs whose shape, dtype or "
                "Python values change from step to step cause it (pad to fixed shapes, pass tensors, not Python numbers)")

    def to_dict(self) -> dict:
        retraces = None if self.count is None or self.first_count is None else self.count - self.first_count
        return {"train_function_traces": self.count, "retraces": retraces, "since_step": self.first_step}


class LeakClues:
    def __init__(self):
        self.objects = ObjectGrowth()
        self.retracing = RetraceWatch()

    def observe(self, step: int, model, summary=None) -> None:
        """At a memory reading: the object baseline (once), the retracing check (logged, and to
        TensorBoard through `summary(tag, text, step)` when given)."""
        if self.objects.base is None:
            self.objects.baseline(step)
        warning = self.retracing.check(step, model)
        if warning:
            log.warning("Leak clue: %s", warning)
            if summary is not None:
                summary("guard/retracing", warning, step)

    def describe(self, step: int) -> str:
        """`; Python objects growing fastest: ...` for a guard warning (a census, at most once a minute)."""
        report = self.objects.report(step)
        if not report or not report["growing"]:
            return ""
        return f"; Python objects growing fastest: {describe(report['growing'][:3])}"

    def report(self, step: int) -> dict:
        objects = self.objects.report(step, force=True)
        if objects and objects["growing"]:
            log.warning("Leak clue: Python objects growing fastest since step %d: %s", objects["since_step"],
                        describe(objects["growing"]))
        return {"python_objects": objects, "retracing": self.retracing.to_dict()}
