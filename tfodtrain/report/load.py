"""Reading a run dir into a `RunRecord`: traces, readings, config, metrics, abort reports, restarts, events.

Old run dirs stay readable: settings and assessment fields of other versions are left out (and said).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
from pathlib import Path

from tfodtrain.exit_codes import GUARD_ABORT, UserError, first_line
from tfodtrain.memory.detector import Assessment
from tfodtrain.memory.policy import GuardSettings
from tfodtrain.memory.traces import TraceFormatError, read_trace
from tfodtrain.report.record import Marker, PoolView, RunRecord
from tfodtrain.report.replay import replay
from tfodtrain.supervise import RESTARTS_FILE  # one JSON line per ended training process

EVAL_METRICS = ("AP", "AP50", "mask_AP", "mask_AP50", "mask_AP75")  # mask_*: Mask R-CNN runs
EVENT_TAGS = ("guard/abort", "guard/warning", "run/stopped", *(f"eval/{name}" for name in EVAL_METRICS))


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
    """Evaluation points: TensorBoard's eval/AP(50) (and mask AP) scalars (periodic and final), and metrics.json's."""
    evals: dict = {}
    for tag, step, _, value in events:
        if tag.startswith("eval/") and value is not None:
            evals.setdefault(step, {})[tag[len("eval/"):]] = value
    for evaluation in (metrics or {}).get("evaluations", []):
        evals.setdefault(int(evaluation["step"]), {}).update(
            {k: v for k, v in evaluation.items() if k in EVAL_METRICS})
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
