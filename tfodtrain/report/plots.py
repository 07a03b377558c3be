"""memory_report.png: per pool, used memory, its peak and limit over steps and time, the guard's trends
and projected exhaustion, and markers for aborts, restarts, warnings and evaluations (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from tfodtrain.memory.detector import Assessment
from tfodtrain.report.clues import leak_clue_caption
from tfodtrain.report.outcome import outcome
from tfodtrain.report.record import PoolView, RunRecord
from tfodtrain.units import GIB, MIB


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
