"""A run's outcome and numbers: finished, aborted, stopped or unknown; its last step and steps/s."""

from __future__ import annotations

from tfodtrain.exit_codes import GUARD_ABORT
from tfodtrain.report.record import RunRecord


def total_steps(record: RunRecord) -> int | None:
    trainer = (record.config or {}).get("trainer") or {}
    return trainer.get("steps")


def last_step(record: RunRecord) -> int:
    steps = [view.rows[-1].step for view in record.pools.values()]
    if record.metrics and record.metrics.get("steps") is not None:
        steps.append(int(record.metrics["steps"]))
    return max(steps)


def outcome(record: RunRecord) -> str:
    """One line: finished, aborted by the guard, stopped, or unknown (killed or still running)."""
    aborts, restarts, stops = record.of_kind("abort"), record.of_kind("restart"), record.of_kind("stop")
    after = []
    for count, noun in ((len(aborts), "guard abort"), (len(stops), "other stop"),
                        (sum(m.label == "restart" for m in restarts), "restart"),
                        (sum(m.label == "resume" for m in restarts), "resume")):
        if count:
            after.append(f"{count} {noun}{'s' if count > 1 else ''}")
    after = [", ".join(after[:-1]) + " and " + after[-1]] if len(after) > 1 else after
    finished_at = record.metrics.get("steps") if record.metrics else None
    last_abort = aborts[-1] if aborts else None
    if finished_at is not None and (last_abort is None or finished_at > last_abort.step):
        return f"finished at step {finished_at}" + (f" after {after[0]}" if after else "")
    if last_abort is not None and last_abort.step >= last_step(record):
        text = f"aborted by the leak guard at step {last_abort.step} (exit {GUARD_ABORT})"
        return text + (f"; in all: {after[0]}" if len(aborts) > 1 or restarts else "")
    if stops and stops[-1].step >= last_step(record):
        final = record.process_ends[-1] if record.process_ends else {}
        note = f" ({final['note']})" if final.get("note") and not final.get("restart") else ""
        return f"stopped at step {stops[-1].step}: {stops[-1].label}{note}"
    return (f"no end recorded: last reading at step {last_step(record)} (killed, e.g. out of memory, or still "
            "running)")


def steps_per_second(record: RunRecord) -> tuple[float | None, str]:
    """metrics.json's figure; for a run without one, readings per second of the last process."""
    if record.metrics and record.metrics.get("steps_per_second"):
        return float(record.metrics["steps_per_second"]), "metrics.json"
    view = next(iter(record.pools.values()))
    start = record.segment_starts[-1] if record.segment_starts else view.rows[0].time_s
    rows = [r for r in view.rows if r.time_s >= start - 0.005]
    if len(rows) < 3:
        return None, ""
    # Skip the first reading of the process: it includes tracing the training step.
    first, end = rows[1], rows[-1]
    if end.time_s <= first.time_s:
        return None, ""
    return (end.step - first.step) / (end.time_s - first.time_s), "memory readings (evaluations included)"
