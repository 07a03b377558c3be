"""`python -m tfodtrain.report RUN_DIR`: what memory did in a run, in one picture and one page.

Writes into RUN_DIR (or `--out DIR`):

* `memory_report.png`: for every memory pool (`gpu0`, ..., `host`), used memory, its peak and its limit
  over steps (left) and over time (right); the leak guard's trend line and projected exhaustion;
  guard aborts, restarts/resumes, guard warnings and evaluation points as markers.
* `report.md`: the run's numbers: outcome, AP/AP50, steps/s, peak memory per pool, the guard's last
  assessment, aborts and their reasons, restarts, evaluations.

It reads only files: the traces (`memory_trace_<pool>.csv`), `memory_readings.jsonl`, `config.yaml`,
`metrics.json`, `abort_report.json`, the supervisor's `restarts.jsonl` (tfodtrain.supervise) and the
TensorBoard event files (guard texts, evaluations). No TensorFlow import: it works on a copied run dir anywhere.

The trends are the guard's, not fitted here: at each abort, the assessment the guard wrote into its report;
at the end of the run, the one `tfodtrain.memory.guard.MemoryGuard` gives when each pool's trace is replayed
with the run's guard settings (config.yaml), a fresh guard per training process as in training. Where that
replay aborts is listed too: with the detector version that recorded the run, it is where the run aborted.

Example:
    python -m tfodtrain.report outputs/leak_demo/2026-11-25_12-00-00
    python -m tfodtrain.report RUN_DIR --out /tmp/review     # RUN_DIR stays untouched

Bad input (no such directory, a directory without a run, a damaged file) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import json
import math
import os
import sys
import types
from pathlib import Path

from tfodtrain.exit_codes import BAD_INPUT, GUARD_ABORT, UserError, first_line
from tfodtrain.memory.detector import Assessment
from tfodtrain.memory.guard import MemoryGuard
from tfodtrain.memory.policy import GuardSettings, describe
from tfodtrain.memory.traces import TraceFormatError, read_trace
from tfodtrain.supervise import RESTARTS_FILE  # one JSON line per ended training process

GIB = float(1 << 30)
MIB = float(1 << 20)
EVENT_TAGS = ("guard/abort", "guard/warning", "run/stopped", "eval/AP", "eval/AP50")


@dataclasses.dataclass
class Marker:
    """Something that happened at a step (and a time, when known): an abort, a restart, an evaluation."""

    kind: str  # abort | stop | restart | warning | eval
    step: int
    time_s: float | None = None
    label: str = ""
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PoolView:
    """One memory pool: its trace, peaks, and the guard's replayed assessments."""

    name: str
    rows: list  # TraceRow, in file order (a resumed run appends)
    allocator_peaks: list  # (step, time_s, peak_bytes) of the allocator (GPU pools only)
    last: Assessment | None = None  # the guard's assessment at the last reading
    shown: Assessment | None = None  # the latest assessment with a fitted trend (drawn)
    replayed_aborts: list = dataclasses.field(default_factory=list)  # (step, reason) where the replay aborts
    recorded: list = dataclasses.field(default_factory=list)  # the guard's own Assessment at each of its aborts

    def drawn_assessments(self) -> list:
        """The trends the picture shows: what the guard saw at each abort (from its report, whatever the
        detector's version now), and the replay's latest one."""
        drawn = list(self.recorded)
        if self.shown is not None and all(a.step != self.shown.step for a in drawn):
            drawn.append(self.shown)
        return drawn

    @property
    def peak_used(self) -> int:
        used = max(r.used_bytes for r in self.rows)
        return max([used] + [peak for _, _, peak in self.allocator_peaks])

    @property
    def limit(self) -> int:
        return self.rows[-1].limit_bytes


@dataclasses.dataclass
class RunRecord:
    run_dir: Path
    config: dict | None
    metrics: dict | None
    run_info: dict | None
    abort_report: dict | None
    settings: GuardSettings
    settings_note: str
    pools: dict  # name -> PoolView
    markers: list  # Marker
    segment_starts: list  # time_s at which a new training process started (after the first)
    process_ends: list  # the supervisor's restarts.jsonl records (one per ended process)

    def of_kind(self, kind: str) -> list:
        return [m for m in self.markers if m.kind == kind]


# --------------------------------------------------------------------------------------------------
# Reading a run dir


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def _read_jsonl(path: Path) -> list[dict]:
    """Every complete line; a last line cut short by a kill mid-write is skipped."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UserError(f"{path}: line {number} is not valid JSON") from None
    return rows


def _read_config(path: Path) -> dict | None:
    if not path.exists():
        return None
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, ValueError, OSError) as error:
        raise UserError(f"{path}: cannot read the run's config ({first_line(error)})") from None


def guard_settings_of(config: dict | None) -> tuple[GuardSettings, str]:
    """The run's guard settings (config.yaml's `guard` group), and a note on how they are used here.

    A guard that was `off` is replayed in `warn` mode: it still shows the trend it would have seen.
    """
    guard = (config or {}).get("guard") or {}
    values = dict(guard.get("settings") or {})
    mode = guard.get("mode", "abort")
    values["mode"] = "warn" if mode == "off" else mode
    # A run dir of another version may name settings this detector no longer has: they are left out (and
    # said), so old run dirs stay readable; a value this version does not accept is still an error.
    known = {field.name for field in dataclasses.fields(GuardSettings)}
    dropped = sorted(set(values) - known)
    values = {key: value for key, value in values.items() if key in known}
    try:
        settings = GuardSettings.from_mapping(values)
    except ValueError as error:
        raise UserError(f"config.yaml guard.settings: {error}") from None
    if config is None:
        return settings, "no config.yaml: default guard settings"
    note = "guard was off; trend replayed as warn-only" if mode == "off" else f"guard mode {mode}"
    if dropped:
        note += f"; settings of another version ignored: {', '.join(dropped)}"
    return settings, note


def read_events(tensorboard_dir: Path) -> list[tuple[str, int, float, object]]:
    """(tag, step, wall_time, value) of the review tags in RUN_DIR/tensorboard, in file order."""
    files = sorted(tensorboard_dir.glob("events.out.tfevents.*")) if tensorboard_dir.is_dir() else []
    if not files:
        return []
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    found = []
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.tag not in EVENT_TAGS or not value.HasField("tensor"):
                    continue
                array = tensor_util.make_ndarray(value.tensor)
                item = array.reshape(-1)[0] if array.size else None
                if isinstance(item, bytes):
                    item = item.decode("utf-8", errors="replace")
                elif item is not None:
                    item = float(item)
                found.append((value.tag, int(event.step), float(event.wall_time), item))
    return found


def _abort_from_text(text: str) -> dict | None:
    """The abort report LeakGuard wrote as a ```-fenced JSON text summary."""
    body = text.strip().strip("`").strip()
    try:
        report = json.loads(body)
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def _assessment_of(report: dict) -> Assessment | None:
    """The detector's assessment an abort report carries (fields of other detector versions ignored)."""
    values = report.get("assessment")
    if not isinstance(values, dict):
        return None
    known = {f.name for f in dataclasses.fields(Assessment)}
    try:
        return Assessment(**{k: v for k, v in values.items() if k in known})
    except TypeError:  # a report of a version without a field this one needs
        return None


def _abort_marker(report: dict) -> Marker:
    return Marker("abort", int(report.get("step", 0)), report.get("time_s"),
                  f"guard abort (exit {report.get('exit_code', GUARD_ABORT)})", report)


@dataclasses.dataclass
class Process:
    """The readings of one training process (a run dir holds one more per restart or resume)."""

    pid: int | None
    first: tuple  # (step, time_s) of its first reading
    last: tuple  # (step, time_s) of its last reading


def _processes(readings: list[dict]) -> list[Process]:
    """The training processes that wrote `memory_readings.jsonl`, in order (told apart by their pid)."""
    processes: list[Process] = []
    for reading in readings:
        pid = (reading.get("host") or {}).get("pid")
        at = (int(reading["step"]), float(reading["time_s"]))
        if not processes or (pid is not None and pid != processes[-1].pid):
            processes.append(Process(pid, at, at))
        else:
            processes[-1].last = at
    return processes


def _restart_markers(processes: list[Process], ends: list[dict]) -> list[Marker]:
    """A marker where each later process started, and one where a process died by other means than the
    guard (e.g. SIGKILL by the OOM killer), from the supervisor's `restarts.jsonl` (one line per
    process end, in order; without it every later process is a manual resume)."""
    markers = []
    for index, process in enumerate(processes):
        end = ends[index] if index < len(ends) else None
        if end is not None and end.get("exit_code") not in (0, GUARD_ABORT, None):
            label = f"exit {end['exit_code']}: {end.get('cause', '')}".strip().rstrip(":")
            markers.append(Marker("stop", process.last[0], process.last[1], label, end))
        if index == 0:
            continue
        previous = ends[index - 1] if index - 1 < len(ends) else None
        supervised = previous is not None and previous.get("restart")
        if supervised:
            why = (f"attempt {previous.get('attempt', index)} ended: {previous.get('cause', '?')}; "
                   f"{previous.get('note', '')}").strip().rstrip(";")
        elif previous is not None:
            why = f"resumed by a new command after: {previous.get('note', previous.get('cause', '?'))}"
        else:
            why = "resumed from the checkpoint by a new command"
        markers.append(Marker("restart", process.first[0], process.first[1], "restart" if supervised else "resume",
                              {"pid": process.pid, "reason": why}))
    return markers


def load_run(run_dir: Path) -> RunRecord:
    """Everything the report shows, from the files of `run_dir`; `UserError` if it is not a run dir."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory (give the run dir of a tfodtrain run)")
    config = _read_config(run_dir / "config.yaml")
    settings, settings_note = guard_settings_of(config)
    readings = _read_jsonl(run_dir / "memory_readings.jsonl")
    pools = _read_pools(run_dir, readings)
    events = read_events(run_dir / "tensorboard")
    abort_report = _read_json(run_dir / "abort_report.json")
    metrics = _read_json(run_dir / "metrics.json")
    markers = _guard_markers(events, abort_report, pools) + _eval_markers(events, metrics)
    processes = _processes(readings)
    ends = _read_jsonl(run_dir / RESTARTS_FILE)
    for marker in _restart_markers(processes, ends):
        if marker.kind == "stop" and any(m.kind == "stop" and m.label.startswith(f"exit {marker.details['exit_code']}:")
                                         for m in markers):
            continue  # the process said so itself (run/stopped)
        markers.append(marker)
    record = RunRecord(run_dir, config, metrics, _read_json(run_dir / "run_info.json"), abort_report, settings,
                       settings_note, pools, markers, [p.first[1] for p in processes[1:]], ends)
    _place_in_time(record)
    replay(record)
    return record


def _read_pools(run_dir: Path, readings: list[dict]) -> dict:
    """A PoolView per `memory_trace_<pool>.csv` with readings; `UserError` when there is none."""
    trace_paths = sorted(run_dir.glob("memory_trace_*.csv"))
    if not trace_paths:
        if any((run_dir / name).exists() for name in ("config.yaml", "metrics.json", "memory_readings.jsonl")):
            raise UserError(f"{run_dir}: no memory readings (memory_trace_*.csv) to report: the run stopped before "
                            "its first reading, or memory_monitor was off")
        raise UserError(f"{run_dir}: not a tfodtrain run dir (no memory_trace_*.csv, config.yaml or metrics.json)")
    pools = {}
    for path in trace_paths:
        name = path.stem[len("memory_trace_"):]
        try:
            rows = list(read_trace(path))
        except (TraceFormatError, UnicodeDecodeError) as error:
            raise UserError(str(error) if isinstance(error, TraceFormatError) else f"{path}: not a text CSV") from None
        if rows:
            peaks = [(int(r["step"]), float(r["time_s"]), int(r["tf_allocator"][name]["peak_bytes"]))
                     for r in readings if name in (r.get("tf_allocator") or {})]
            pools[name] = PoolView(name, rows, peaks)
    if not pools:
        raise UserError(f"{run_dir}: the memory traces have a header but no readings yet")
    return pools


def _guard_markers(events: list, abort_report: dict | None, pools: dict) -> list[Marker]:
    """Every guard abort (event texts, and abort_report.json: the newest), warnings and other stops.

    Each abort's own assessment is attached to its pool, to be drawn as the guard saw it."""
    markers, aborts = [], {}
    for tag, step, _, value in events:
        if not isinstance(value, str):
            continue
        if tag == "guard/abort" and (report := _abort_from_text(value)) is not None:
            aborts[int(report.get("step", step))] = report
        elif tag == "guard/warning":
            markers.append(Marker("warning", step, label=value))
        elif tag == "run/stopped" and not value.startswith(f"exit {GUARD_ABORT}:"):
            markers.append(Marker("stop", step, label=value))
    if abort_report is not None:
        aborts[int(abort_report.get("step", 0))] = abort_report
    for _, report in sorted(aborts.items()):
        markers.append(_abort_marker(report))
        assessment = _assessment_of(report)
        if assessment is not None and assessment.pool in pools:
            pools[assessment.pool].recorded.append(assessment)
    return markers


def _eval_markers(events: list, metrics: dict | None) -> list[Marker]:
    """Evaluation points: TensorBoard's eval/AP(50) scalars (periodic and final), and metrics.json's."""
    evals: dict = {}
    for tag, step, _, value in events:
        if tag.startswith("eval/") and value is not None:
            evals.setdefault(step, {})[tag[len("eval/"):]] = value
    for evaluation in (metrics or {}).get("evaluations", []):
        evals.setdefault(int(evaluation["step"]), {}).update(
            {k: v for k, v in evaluation.items() if k in ("AP", "AP50")})
    return [Marker("eval", step, label=f"AP {values.get('AP', float('nan')):.3f}", details=values)
            for step, values in sorted(evals.items())]


def _place_in_time(record: RunRecord) -> None:
    """Markers known only by step get the time of the latest reading at or before that step."""
    rows = sorted((r for view in record.pools.values() for r in view.rows), key=lambda r: r.step)
    steps = [r.step for r in rows]
    latest = list(itertools.accumulate((r.time_s for r in rows), max))  # steps repeat after a resume
    for marker in record.markers:
        if marker.time_s is None and rows:
            index = bisect.bisect_right(steps, marker.step) - 1
            marker.time_s = latest[index] if index >= 0 else rows[0].time_s


# --------------------------------------------------------------------------------------------------
# The guard's view, replayed


def replay(record: RunRecord) -> None:
    """Feed each pool's readings to a MemoryGuard with the run's settings; a new guard per process."""
    for view in record.pools.values():
        starts = list(record.segment_starts)
        guard = MemoryGuard(record.settings)
        for row in view.rows:
            while starts and row.time_s >= starts[0] - 0.005:  # the trace rounds time_s to 10 ms
                starts.pop(0)
                guard = MemoryGuard(record.settings)
            decision = guard.observe(view.name, row.step, row.time_s, row.used_bytes, row.limit_bytes)
            view.last = decision.assessment
            if view.last is not None and view.last.ready:
                view.shown = view.last
            if decision.action == "abort":
                view.replayed_aborts.append((row.step, decision.reason))


def assessment_text(a: Assessment | None, settings: GuardSettings) -> str:
    """The guard's last word on a pool, in one sentence."""
    if a is None:
        return "not watched"
    if not a.ready:
        return a.note or "not enough readings"
    if a.growing:
        return describe(a, settings.horizon_s)
    return (f"flat: floor {a.floor_bytes / GIB:.2f} GiB, no sustained growth (trend "
            f"{a.slope_bytes_per_second * 60 / MIB:+.2f} MiB/min, confidence of growth {a.trend_confidence:.2f})")


# --------------------------------------------------------------------------------------------------
# Outcome and numbers


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


# --------------------------------------------------------------------------------------------------
# The picture


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "h"
    if seconds >= 180:
        return 60.0, "min"
    return 1.0, "s"


def _trend_lines(a: Assessment, rows: list) -> dict:
    """The guard's floor trend over its window and its projection to the limit, against time and steps.

    The detector fits the floor against time; against steps the line goes through the steps of the readings
    in the window (so a stall, e.g. an evaluation, shows as the jump the guard saw). `rows` are the pool's
    readings of the training process the assessment belongs to.
    """
    start_t = a.time_s - float(a.window.get("span_s") or 0.0)
    floor = lambda t: a.floor_bytes + a.slope_bytes_per_second * (t - a.time_s)  # noqa: E731
    window = [r for r in rows if start_t <= r.time_s <= a.time_s + 0.005]
    if len(window) < 2:
        window = [r for r in rows if r.time_s <= a.time_s + 0.005][-2:]
    lines = {"trend_time": ([start_t, a.time_s], [floor(start_t), a.floor_bytes]),
             "trend_step": ([r.step for r in window], [floor(r.time_s) for r in window])}
    if a.growing and a.projected_exhaustion_time_s is not None:
        top = a.floor_bytes + a.peak_headroom_bytes
        lines["proj_time"] = ([a.time_s, a.projected_exhaustion_time_s], [top, a.limit_bytes])
        if a.projected_exhaustion_step is not None:
            lines["proj_step"] = ([a.step, a.projected_exhaustion_step], [top, a.limit_bytes])
    return lines


STYLE = {
    "abort": dict(color="#c62828", linestyle="-", linewidth=1.6),
    "stop": dict(color="#616161", linestyle="-", linewidth=1.2),
    "restart": dict(color="#6a1b9a", linestyle="-.", linewidth=1.4),
    "eval": dict(color="#2e7d32", linestyle=":", linewidth=1.2),
}


def plot_report(record: RunRecord, path: Path) -> Path:
    """memory_report.png: a row per pool; used, peak and limit vs steps (left) and time (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = sorted(record.pools.values(), key=lambda v: (v.name == "host", v.name))
    all_times = [r.time_s for v in views for r in v.rows]
    unit, unit_name = _time_unit(max(all_times) - min(all_times))
    fig, axes = plt.subplots(len(views), 2, figsize=(13, 1.2 + 3.4 * len(views)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.35, 1]})
    for row_axes, view in zip(axes, views):
        _plot_pool(row_axes[0], view, record, "step", 1.0)
        _plot_pool(row_axes[1], view, record, "time", unit)
        row_axes[0].set_ylabel(f"{view.name} memory (GiB)")
        row_axes[1].set_xlabel(f"time since the run started ({unit_name})")
    axes[-1][0].set_xlabel("training step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8.5, frameon=False)
    experiment = (record.config or {}).get("experiment_name") or record.run_dir.name
    caption = leak_clue_caption(record)  # the abort's leak clue: the holder and its line
    fig.suptitle(f"{experiment}: {outcome(record)}" + (f"\n{caption}" if caption else ""), fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.03 + 0.05 / len(views), 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_pool(ax, view: PoolView, record: RunRecord, axis: str, unit: float) -> None:
    x_of = (lambda r: r.step) if axis == "step" else (lambda r: r.time_s / unit)
    segments, current = [], []
    starts = list(record.segment_starts)
    for row in view.rows:  # a line per training process, so a resume does not draw a jump back
        if starts and row.time_s >= starts[0] - 0.005:
            starts.pop(0)
            segments.append(current)
            current = []
        current.append(row)
    segments.append(current)
    for index, rows in enumerate(s for s in segments if s):
        xs = [x_of(r) for r in rows]
        first = index == 0
        ax.plot(xs, [r.used_bytes / GIB for r in rows], color="#1565c0", linewidth=1.4,
                label="used" if first else None)
        running, peak = [], 0
        for r in rows:
            peak = max(peak, r.used_bytes)
            running.append(peak / GIB)
        ax.plot(xs, running, color="#64b5f6", linewidth=1.0, linestyle="--",
                label="peak used so far" if first else None)
        ax.step(xs, [r.limit_bytes / GIB for r in rows], where="post", color="#212121", linewidth=1.3,
                label="limit" if first else None)
    if view.allocator_peaks:
        peak_x = [s if axis == "step" else t / unit for s, t, _ in view.allocator_peaks]
        ax.plot(peak_x, [p / GIB for _, _, p in view.allocator_peaks], color="#ff8f00", linewidth=1.1,
                label="allocator peak (since the reading before)")

    data_min = min(x_of(r) for r in view.rows)
    data_max = max(x_of(r) for r in view.rows)
    reach = data_max + 3.0 * max(data_max - data_min, 1.0)  # projections further out are cut at the edge
    x_max = data_max
    for index, a in enumerate(view.drawn_assessments()):
        process_rows = next((rows for rows in segments
                             if rows and rows[0].time_s <= a.time_s <= rows[-1].time_s + 0.005), view.rows)
        x_max = max(x_max, _plot_trend(ax, _trend_lines(a, process_rows), a, axis, unit, reach, first=index == 0))
    last_limit = view.rows[-1]
    if x_max > data_max:  # the limit goes on where the projection goes
        ax.plot([data_max, x_max * 1.03 + 1], [last_limit.limit_bytes / GIB] * 2, color="#212121", linewidth=1.0,
                linestyle=":")
    _draw_markers(ax, record, axis, unit)
    ax.set_xlim(data_min if axis == "time" else 0, x_max * 1.03 + (1 if axis == "step" else 0))
    ax.set_ylim(0, max(view.limit, view.peak_used) / GIB * 1.12)
    ax.grid(True, alpha=0.3)
    ax.set_title(_pool_title(view) if axis == "step" else _guard_title(view), fontsize=9.5, loc="left")


def _plot_trend(ax, lines: dict, a: Assessment, axis: str, unit: float, reach: float, first: bool) -> float:
    """The guard's floor trend and, when growing, its projection to the limit; returns the x it reaches."""
    scale = (lambda xs: [x / unit for x in xs]) if axis == "time" else (lambda xs: list(xs))
    tx, ty = lines[f"trend_{axis}"]
    ax.plot(scale(tx), [y / GIB for y in ty], color="#d81b60", linewidth=2.2, alpha=0.9,
            label="guard trend (floor)" if first else None)
    x_end = scale(tx)[-1]
    if f"proj_{axis}" not in lines:
        return x_end
    px, py = lines[f"proj_{axis}"]
    px = scale(px)
    ax.plot(px, [y / GIB for y in py], color="#d81b60", linewidth=1.4, linestyle="--",
            label="projection (floor + peak headroom)" if first else None)
    suffix = {3600.0: "h", 60.0: "min"}.get(unit, "s")
    where = f"step {a.projected_exhaustion_step}" if axis == "step" else f"{px[1]:.1f} {suffix}"
    if px[1] <= reach:
        ax.plot([px[1]], [py[1] / GIB], marker="X", markersize=10, color="#d81b60", linestyle="none")
        ax.annotate(f"projected exhaustion\n{where}", (px[1], py[1] / GIB), textcoords="offset points",
                    xytext=(-8, -26), ha="right", fontsize=8, color="#d81b60")
        return px[1]
    ax.annotate(f"exhaustion projected at {where} \u2192", (reach, py[1] / GIB), textcoords="offset points",
                xytext=(-4, -14), ha="right", fontsize=8, color="#d81b60")
    return reach


def _pool_title(view: PoolView) -> str:
    share = 100.0 * view.peak_used / view.limit
    return f"{view.name}: peak {view.peak_used / GIB:.2f} of {view.limit / GIB:.2f} GiB ({share:.0f}%)"


def _guard_title(view: PoolView) -> str:
    """The guard's last word on the pool, short enough for a panel title."""
    a = view.last
    if a is None:
        return "guard: off"
    if not a.ready:
        return f"guard at the end: {a.note or 'not enough readings'}"
    if a.growing:
        return (f"guard at the end: +{a.slope_bytes_per_step / MIB:.1f} MiB/step, "
                f"limit reached at step {a.projected_exhaustion_step}")
    return f"guard at the end: no sustained growth ({a.slope_bytes_per_step / MIB:+.2f} MiB/step)"


def _draw_markers(ax, record: RunRecord, axis: str, unit: float) -> None:
    labels = {"abort": "guard abort", "stop": "stopped (signal)", "restart": "restart / resume",
              "eval": "evaluation"}
    seen = set()
    for marker in record.markers:
        x = marker.step if axis == "step" else (marker.time_s / unit if marker.time_s is not None else None)
        if x is None:
            continue
        if marker.kind == "warning":
            ax.plot([x], [0.98], transform=ax.get_xaxis_transform(), marker="v", color="#ef6c00",
                    markersize=6, linestyle="none", label="guard warning" if "warning" not in seen else None)
            seen.add("warning")
            continue
        style = STYLE.get(marker.kind)
        if style is None:
            continue
        ax.axvline(x, label=labels[marker.kind] if marker.kind not in seen else None, **style)
        seen.add(marker.kind)
        if axis == "step" and marker.kind in ("abort", "restart", "eval"):
            # abort and eval labels left of their line, restarts right of it: an abort and the restart
            # right after it stay readable
            text, height, side = {"abort": (f"abort @ {marker.step}", 0.16, -1),
                                  "restart": (f"{marker.label} @ {marker.step}", 0.16, 1),
                                  "eval": (marker.label, 0.16, -1)}[marker.kind]
            ax.annotate(text, (x, height), xycoords=("data", "axes fraction"), rotation=90, fontsize=7.5,
                        ha="right" if side < 0 else "left", va="center", color=style["color"],
                        xytext=(2 * side, 0), textcoords="offset points")


# --------------------------------------------------------------------------------------------------
# Leak clues (abort_report.json's `leak_clues`, rendered by tfodtrain.memory.census)


def _leak_clues(record: RunRecord) -> dict | None:
    clues = (record.abort_report or {}).get("leak_clues")
    return clues if isinstance(clues, dict) and "holders" in clues else None  # older reports: no holders


def leak_clue_caption(record: RunRecord) -> str | None:
    """The PNG's line: what holds the leak and the line that adds to it (None without an abort's clues)."""
    from tfodtrain.memory.census import clues_caption

    return clues_caption(_leak_clues(record))


def leak_clue_lines(record: RunRecord) -> list[str]:
    """report.md's `## Leak clues` section: the abort's holders, retracing, tensors and the census's cost."""
    clues = _leak_clues(record)
    if clues is None:
        return []
    from tfodtrain.memory.census import clues_markdown

    step = (clues.get("census") or {}).get("step", (record.abort_report or {}).get("step", "?"))
    return ["", "## Leak clues", "", f"At the abort (census at step {step}):", "", clues_markdown(clues)]


# --------------------------------------------------------------------------------------------------
# The page


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
        lines += ["", "## Evaluations", "", "| step | AP | AP50 |", "|---|---|---|"]
        lines += [f"| {e.step} | {_fmt(e.details.get('AP'))} | {_fmt(e.details.get('AP50'))} |" for e in evals]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------


def _tensorboard_without_tensorflow() -> None:
    """TensorBoard's event reader imports TensorFlow when it is installed (tens of seconds on a busy
    machine) unless its `tensorboard.compat.notf` marker module exists (what TensorBoard's own
    no-TensorFlow build ships); the report needs only the pure-Python record reader."""
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def make_report(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write memory_report.png and report.md for `run_dir` into `out_dir` (default: the run dir)."""
    record = load_run(Path(run_dir))
    out_dir = Path(out_dir) if out_dir is not None else record.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"{out_dir}: not writable; pass --out DIR")
    image = plot_report(record, out_dir / "memory_report.png")
    page = write_markdown(record, out_dir / "report.md", image.name)
    return image, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfodtrain.report",
                                     description="Memory report of a tfodtrain run: memory_report.png and report.md.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run dir (hydra.run.dir of the training run)")
    parser.add_argument("--out", metavar="DIR", help="write the report here instead of into RUN_DIR")
    args = parser.parse_args(argv)
    _tensorboard_without_tensorflow()
    try:
        image, page = make_report(Path(args.run_dir), Path(args.out) if args.out else None)
    except UserError as error:
        print(f"report: {error}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {image}")
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
