"""report.md: the run's numbers: outcome, AP, steps/s, memory per pool, aborts, leak clues, restarts, evaluations."""

from __future__ import annotations

import math
from pathlib import Path

from tfodtrain.report.clues import leak_clue_lines
from tfodtrain.report.outcome import last_step, outcome, steps_per_second, total_steps
from tfodtrain.report.record import RunRecord
from tfodtrain.report.replay import assessment_text
from tfodtrain.units import GIB


def _gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f} GiB"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_markdown(record: RunRecord, path: Path, image_name: str) -> Path:
    m = record.metrics or {}
    rate, rate_source = steps_per_second(record)
    experiment = (record.config or {}).get("experiment_name") or "?"
    total = total_steps(record)
    lines = [f"# Run report: {record.run_dir.name}", "", f"![memory report]({image_name})", "",
             "| | |", "|---|---|",
             f"| experiment | {experiment} |",
             f"| outcome | {outcome(record)} |",
             f"| steps | {last_step(record)}" + (f" of {total}" if total else "") + " |",
             f"| AP / AP50 / AP75 | {_fmt(m.get('AP'))} / {_fmt(m.get('AP50'))} / {_fmt(m.get('AP75'))}"
             + ("" if m else " (no final evaluation)") + " |",
             *([f"| mask AP / AP50 / AP75 | {_fmt(m.get('mask_AP'))} / {_fmt(m.get('mask_AP50'))} / "
                f"{_fmt(m.get('mask_AP75'))} |"] if "mask_AP" in m else []),
             f"| steps/s | {_fmt(rate, 2)}" + (f" ({rate_source})" if rate_source else "") + " |",
             f"| guard | {record.settings_note}; horizon {record.settings.horizon_s:g} s |",
             f"| restarts (supervisor) / resumes | {sum(m.label == 'restart' for m in record.of_kind('restart'))} / "
             f"{sum(m.label == 'resume' for m in record.of_kind('restart'))} |", "",
             "## Memory per pool", "",
             "| pool | peak used | limit | peak / limit | last used | guard's last assessment |",
             "|---|---|---|---|---|---|"]
    for view in sorted(record.pools.values(), key=lambda v: (v.name == "host", v.name)):
        lines.append(f"| {view.name} | {_gib(view.peak_used)} | {_gib(view.limit)} | "
                     f"{100.0 * view.peak_used / view.limit:.0f}% | {_gib(view.rows[-1].used_bytes)} | "
                     f"{assessment_text(view.last, record.settings)} |")
    aborts = record.of_kind("abort")
    lines += ["", "## Aborts", ""]
    if aborts:
        lines += ["| step | pool | reason | checkpoint |", "|---|---|---|---|"]
        for marker in aborts:
            d = marker.details
            lines.append(f"| {marker.step} | {d.get('pool', '?')} | {d.get('reason', '?')} | "
                         f"{d.get('checkpoint') or '-'} |")
        replayed = [(step, view.name) for view in record.pools.values() for step, _ in view.replayed_aborts]
        if replayed:
            lines += ["", "Replaying the traces with the run's guard settings (this version of the detector) aborts "
                      "at: " + ", ".join(f"step {step} ({pool})" for step, pool in sorted(replayed)) + "."]
    else:
        lines.append("None.")
    lines += leak_clue_lines(record)
    stops = record.of_kind("stop")
    if stops:
        lines += ["", "## Other stops", ""] + [f"- step {s.step}: {s.label}" for s in stops]
    restarts = record.of_kind("restart")
    lines += ["", "## Restarts and resumes", ""]
    if restarts:
        lines += ["| at step | time | kind | why |", "|---|---|---|---|"]
        lines += [f"| {r.step} | {_fmt(r.time_s, 1)} s | {r.label} | {r.details.get('reason', '')} |" for r in restarts]
    else:
        lines.append("None.")
    evals = record.of_kind("eval")
    if evals:
        names = ["AP", "AP50"] + (["mask_AP", "mask_AP50"] if any("mask_AP" in e.details for e in evals) else [])
        lines += ["", "## Evaluations", "", "| step | " + " | ".join(n.replace("_", " ") for n in names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        lines += [f"| {e.step} | " + " | ".join(_fmt(e.details.get(n)) for n in names) + " |" for e in evals]
    path.write_text("\n".join(lines) + "\n")
    return path
