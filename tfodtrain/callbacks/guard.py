"""The leak guard in training: the framework-free MemoryGuard decides, this callback acts.

Condition and action are kept apart (as in Model Garden's orbit actions): `MemoryGuard` (tfodtrain.memory)
turns each reading of every pool into ok / warn / abort, exactly as `python -m tfodtrain.memory.replay`
does on a trace; on abort this callback checkpoints through the run's Checkpointer, writes
`abort_report.json`, a TensorBoard text summary and marker, runs `on_abort_command`, and stops training;
train.py then exits with code 75.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess

from tfodtrain import exit_codes
from tfodtrain.callbacks.base import AbortRequest, RunCallback
from tfodtrain.callbacks.clues import LeakClues
from tfodtrain.exit_codes import UserError
from tfodtrain.memory.guard import MemoryGuard
from tfodtrain.memory.policy import GuardSettings

log = logging.getLogger(__name__)
MIB = float(1 << 20)


def guard_settings(mode: str = "abort", settings: dict | None = None, on_abort_command: str | None = None):
    """GuardSettings from the `guard` config group; a bad key or value is the user's one-line error."""
    values = dict(settings or {})
    values.update(mode=mode, on_abort_command=on_abort_command)
    try:
        return GuardSettings.from_mapping(values)
    except ValueError as error:
        raise UserError(f"guard.settings: {str(error).removeprefix('leak guard: ')}") from None


class LeakGuard(RunCallback):
    """Checkpoint-and-abort (exit 75) when a pool's memory is projected to run out within the horizon.

    Example:
        python -m tfodtrain +experiment=ssd guard=warn            # warn only
        python -m tfodtrain +experiment=ssd guard.settings.horizon_s=1800 \
            guard.on_abort_command='notify-send "$TFODTRAIN_ABORT_REASON"'
    """

    def __init__(self, mode: str = "abort", settings: dict | None = None, on_abort_command: str | None = None):
        super().__init__()
        self.settings = guard_settings(mode, settings, on_abort_command)
        self.guard = MemoryGuard(self.settings)
        self.clues = LeakClues()  # growing Python objects and retracing, for warnings and the abort report
        self.last_decision = None

    def on_train_batch_end(self, batch, logs=None):
        if self.settings.mode == "off":
            return
        step = self.run.step_of(batch)
        sample = self.run.memory.sample_if_due(step, self.run.execution_steps(step))
        if sample is None:
            return
        self.clues.observe(sample.step, self.model, self._summary)
        decision = self.guard.observe_many(sample.guard_readings())
        self.last_decision = decision
        if decision.action == "warn":
            reason = decision.reason + self.clues.describe(sample.step)
            log.warning("Leak guard: %s", reason)
            self._summary("guard/warning", reason, sample.step)
        elif decision.action == "abort":
            self._abort(decision, sample)

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
        self.run.request_abort(AbortRequest(exit_codes.GUARD_ABORT, decision.reason, report))
        self.model.stop_training = True
        self._run_abort_command(report, path)

    def abort_report(self, decision, sample, checkpoint) -> dict:
        a = decision.assessment
        return {
            "reason": decision.reason,
            "pool": decision.pool,
            "exit_code": exit_codes.GUARD_ABORT,
            "step": sample.step,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "time_s": round(sample.time_s, 2),
            "used_bytes": a.used_bytes,
            "limit_bytes": a.limit_bytes,
            "slope_bytes_per_step": a.slope_bytes_per_step,
            "slope_bytes_per_second": a.slope_bytes_per_second,
            "projected_exhaustion_step": a.projected_exhaustion_step,
            "projected_exhaustion_time_s": a.projected_exhaustion_time_s,
            "seconds_to_limit": a.seconds_to_limit,
            "assessment": a.to_dict(),
            "pools": {name: {"used_bytes": p.used_bytes, "limit_bytes": p.limit_bytes}
                      for name, p in sample.pools.items()},
            "checkpoint": checkpoint,
            "settings": self.settings.to_dict(),
            "leak_clues": self.clues.report(sample.step),
        }

    def _run_abort_command(self, report: dict, report_path) -> None:
        command = self.settings.on_abort_command
        if not command:
            return
        env = dict(os.environ, TFODTRAIN_ABORT_REPORT=str(report_path), TFODTRAIN_RUN_DIR=str(self.run.run_dir),
                   TFODTRAIN_ABORT_REASON=report["reason"], TFODTRAIN_ABORT_STEP=str(report["step"]))
        try:
            done = subprocess.run(command, shell=True, env=env, timeout=120)
            if done.returncode:
                log.warning("on_abort_command exited %d: %s", done.returncode, command)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("on_abort_command failed (%s): %s", error, command)
