"""The leak guard in training: the framework-free MemoryGuard decides, this callback acts.

Condition and action are kept apart (as in Model Garden's orbit actions): `MemoryGuard` (tfodtrain.memory)
turns each reading of every pool into ok / warn / abort, exactly as `python -m tfodtrain.memory.replay`
does on a trace; on abort this callback checkpoints through the run's Checkpointer, writes
`abort_report.json`, a TensorBoard text summary and marker, runs `on_abort_command`, and stops training;
train.py then exits with code 75.

At a warning it saves an insurance checkpoint at once (at most every `insurance_every_s` seconds): should
the run be killed before the guard aborts (a leak faster than the guard's evidence, `guard=warn`), the
resumed run loses only the steps since the warning. It is an ordinary numbered checkpoint of the same
CheckpointManager (`ckpt-<step>`), kept under the same `trainer.keep_checkpoints` newest-N policy; a
failed one is a logged warning, and training goes on.

Each periodic evaluation (`run.eval_spans`) is reported to the guard (`MemoryGuard.spike_span`): how high it
lifted each pool counts as headroom of the growth the guard projects for the next two hours, even in the run's
first minutes and when readings are sparse, so a leak that would die at the next evaluation is aborted before it.

TensorBoard, per pool, at every reading the guard judged: `guard/<pool>/slope_mib_per_min`,
`guard/<pool>/confidence` (of growth) and, while it grows, `guard/<pool>/seconds_to_limit`; texts and
markers `guard/warning`, `guard/insurance`, `guard/abort`, `guard/leak_clues`.

Leak clues (tfodtrain.callbacks.clues): at each warning and at the abort a census names the object that
holds the growth (its path, items, bytes, growth per 100 steps and the line that adds to it), live
TensorFlow tensors and variables, and retraced tf.functions: in the warning line (short), the TensorBoard
text `guard/leak_clues` and `abort_report.json`'s `leak_clues`. It pauses training about a second on the
smoke model (at most `max_seconds`, 20 s, after one pass over the objects); nothing of it runs before the
first warning but a baseline at the first reading.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time

from tfodtrain import exit_codes
from tfodtrain.callbacks.base import AbortRequest, RunCallback
from tfodtrain.callbacks.clues import LeakClues, markdown
from tfodtrain.exit_codes import UserError
from tfodtrain.memory.guard import MemoryGuard, abort_fields, run_abort_command
from tfodtrain.memory.policy import GuardSettings

log = logging.getLogger(__name__)


def guard_settings(mode: str = "abort", settings: dict | None = None, on_abort_command: str | None = None):
    """GuardSettings from the `guard` config group; a bad key or value is the user's one-line error."""
    values = dict(settings or {})
    values.update(mode=mode, on_abort_command=on_abort_command)
    try:
        return GuardSettings.from_mapping(values)
    except ValueError as error:
        raise UserError(f"guard.settings: {str(error).removeprefix('leak guard: ')}") from None


def insurance_interval(value) -> float | None:
    """`insurance_every_s`: seconds >= 0, or null for no insurance checkpoints; else the user's one-line error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise UserError(f"callbacks.leak_guard.insurance_every_s={value!r} must be seconds >= 0 (e.g. 600), "
                        "or null for no insurance checkpoints")
    return float(value)


class LeakGuard(RunCallback):
    """Checkpoint-and-abort (exit 75) when a pool's memory is projected to run out within the horizon;
    an insurance checkpoint at a warning.

    Example:
        python -m tfodtrain +experiment=ssd guard=warn            # warn only (insurance checkpoints still)
        python -m tfodtrain +experiment=ssd guard.settings.horizon_s=1800 \
            guard.on_abort_command='notify-send "$TFODTRAIN_ABORT_REASON"'
        python -m tfodtrain +experiment=ssd callbacks.leak_guard.insurance_every_s=null   # no insurance saves
    """

    def __init__(self, mode: str = "abort", settings: dict | None = None, on_abort_command: str | None = None,
                 insurance_every_s: float | None = 600.0):
        super().__init__()
        self.settings = guard_settings(mode, settings, on_abort_command)
        self.insurance_every_s = insurance_interval(insurance_every_s)
        self.guard = MemoryGuard(self.settings)
        self.clues = LeakClues()  # a census at warnings and the abort: holders, lines, tensors, retracing
        self.last_decision = None
        self.insurance: list[dict] = []  # every insurance save: step, pool, path, seconds, error
        self._insured_at: float | None = None  # monotonic time of the last insurance save (attempt)
        self._spans_told = 0  # the run's evaluations (run.eval_spans) reported to the guard
        self._scalars = None  # tfodtrain.callbacks.scalars.ScalarWriter, made on the first reading

    def on_train_begin(self, logs=None):
        if self.settings.mode != "off":
            self.run.memory.start_background()

    def on_train_end(self, logs=None):
        self.run.memory.stop_background()
        self.clues.stop()  # tracemalloc off, if a warning's census started it

    def on_train_batch_end(self, batch, logs=None):
        if self.settings.mode == "off":
            return
        step = self.run.step_of(batch)
        samples = self.run.memory.due_samples(step, self.run.execution_steps(step))
        while self._spans_told < len(self.run.eval_spans):  # evaluations since: spikes to expect again
            start, end = self.run.eval_spans[self._spans_told]
            self._spans_told += 1
            self.guard.spike_span(self.run.memory.run_time_s(start), self.run.memory.run_time_s(end))
        if not samples:
            return
        self.clues.observe(samples[-1].step, self.model, self._summary)
        for sample in samples:  # queued background readings first, in time order, then the step's own
            decision = self.guard.observe_many(sample.guard_readings())
            self.last_decision = decision
            self._write_state(sample)
            if decision.action == "warn":
                reason = decision.reason + self.clues.describe(sample.step)  # a census: holder, line, retracing
                log.warning("Leak guard at step %d: %s", sample.step, reason)
                self._summary("guard/warning", reason, sample.step)
                self._summary("guard/leak_clues", markdown(self.clues.last or {}), sample.step)
                self._insure(decision)
            elif decision.action == "abort":
                self._abort(decision, sample)
                return

    def _write_state(self, sample) -> None:
        """Per pool: slope, confidence and (while growing) seconds to the limit, as one event."""
        scalars = self.guard.state_scalars(pool for pool, *_ in sample.guard_readings())  # the pools just judged
        if not scalars:
            return
        if self._scalars is None:
            from tfodtrain.callbacks.scalars import ScalarWriter

            self._scalars = ScalarWriter(self.run.summary_writer)
        self._scalars.write(sample.step, scalars)

    def _insure(self, decision) -> None:
        """The insurance checkpoint of a warning, unless one was made less than `insurance_every_s` ago.

        With several workers the Checkpointer holds saves: this only requests it, and every worker saves
        it together at this step's end (tfodtrain.callbacks.agreement), as for an abort."""
        if self.insurance_every_s is None:
            return
        now = time.monotonic()
        if self._insured_at is not None and now - self._insured_at < self.insurance_every_s:
            return
        self._insured_at = now
        checkpointer = self.run.checkpointer
        step = int(checkpointer.step.numpy())
        record = {"step": step, "pool": decision.pool, "path": None, "seconds": None, "error": None}
        self.insurance.append(record)
        try:
            record["path"] = checkpointer.save(force=True, insurance=True)
        except Exception as error:  # noqa: BLE001 - insurance is best effort: a failed save must not end the run
            record["error"] = f"{type(error).__name__}: {error}"
            log.warning("Leak guard: the insurance checkpoint at step %d failed (%s); training goes on",
                        step, record["error"])
            self._summary("guard/insurance", f"step {step}: insurance checkpoint FAILED ({record['error']})", step)
            return
        record["seconds"] = round(time.monotonic() - now, 3)
        how = "requested: every worker saves it at this step" if checkpointer.holding else f"saved in {record['seconds']:.2f} s"
        log.warning("Leak guard: insurance checkpoint %s at step %d (%s), after the warning for %s",
                    record["path"], step, how, decision.pool)
        self._summary("guard/insurance", f"step {step}: insurance checkpoint {record['path']} ({how}); "
                      f"warning: {decision.reason}", step)

    def _summary(self, tag: str, text: str, step: int) -> None:
        import tensorflow as tf

        with self.run.summary_writer.as_default(step=step):
            tf.summary.text(tag, text)
            tf.summary.scalar(f"{tag}_marker", 1.0)
        self.run.summary_writer.flush()

    def _abort(self, decision, sample) -> None:
        log.error("Leak guard: %s; saving a checkpoint and stopping (exit %d)", decision.reason, exit_codes.GUARD_ABORT)
        checkpoint = self.run.checkpointer.save(force=True)
        report = self.abort_report(decision, sample, checkpoint)
        path = self.run.run_dir / "abort_report.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        self._summary("guard/abort", "```\n" + json.dumps(report, indent=2, default=str) + "\n```", sample.step)
        self._summary("guard/leak_clues", markdown(report["leak_clues"]), sample.step)
        self.run.request_abort(AbortRequest(exit_codes.GUARD_ABORT, decision.reason, report))
        self.model.stop_training = True
        run_abort_command(self.settings.on_abort_command, report, path, self.run.run_dir)

    def abort_report(self, decision, sample, checkpoint) -> dict:
        return {
            **abort_fields(decision),
            "exit_code": exit_codes.GUARD_ABORT,
            "step": sample.step,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "time_s": round(sample.time_s, 2),
            "pools": {name: {"used_bytes": p.used_bytes, "limit_bytes": p.limit_bytes}
                      for name, p in sample.pools.items()},
            "checkpoint": checkpoint,
            "insurance_checkpoints": self.insurance,  # saved at this process's warnings: step, pool, path, seconds, error
            "settings": self.settings.to_dict(),
            "leak_clues": self.clues.report(sample.step),
        }
