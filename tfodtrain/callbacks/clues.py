"""Leak clues for the leak guard: the object that holds the growing memory, the line that adds to it,
live TensorFlow tensors and variables, and retracing tf.functions named by function and argument.

A thin TensorFlow adapter over the framework-free census (`tfodtrain.memory.census`, which finds holders,
their path from a GC root, bytes, growth and line) and the object counts (`tfodtrain.memory.pyobjects`).
`LeakGuard` owns one `LeakClues`:

- `observe` at each memory reading: the baseline (once, at the first reading: one pass over the GC's
  objects) and the training function's trace count (cheap). Nothing else runs before a warning.
- `describe` at each warning: a census (it starts tracemalloc, read and stopped at the next census) and
  the short text for the warning line; `report` at the abort: a census and `abort_report.json`'s
  `leak_clues`; `markdown` for the TensorBoard text `guard/leak_clues`.
- A census that fails is one logged line; the guard goes on (`leak_clues.census_error`).

Example (abort_report.json of `+experiment=leak_demo`):
    "leak_clues": {
      "holders": [{"path": "KeepDetections.kept", "kind": "list", "items": 3040, "bytes": 2469396480,
                   "growth_per_100_steps": 800.0, "added_at": "tfodtrain/callbacks/leak_demo.py:67 in
                   KeepDetections.on_train_batch_end", ...}],
      "tensors": {"devices": {"CPU:0": {"tensors": 120, "tensor_bytes": ..., "variables": 300, ...}}, ...},
      "retracing": {"train_function_traces": 1, "retraces": 0, "functions": []},
      "python_objects": {"since_step": 1, "step": 96, "growing": [{"kind": "list of ndarray", ...}]},
      "census": {"step": 96, "seconds": 0.9, "census_bytes": 4100000, ...}}
"""

from __future__ import annotations

import collections
import logging
import time

from tfodtrain.memory.census import Census, clues_markdown as markdown, describe_holder, retrace_text, short_path
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


# --------------------------------------------------------------------------------------------------
# TensorFlow: what the census collects and how big a tensor is


def _tf_types():
    from tensorflow.python.eager.polymorphic_function.polymorphic_function import Function
    from tensorflow.python.framework.ops import EagerTensor
    from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable

    return EagerTensor, BaseResourceVariable, Function


def tensor_bytes(obj) -> int | None:
    """Bytes of an eager tensor or a variable (elements x dtype size); None for anything else."""
    EagerTensor, Variable, _ = _tf_types()
    if not isinstance(obj, (EagerTensor, Variable)):
        return None
    try:
        n = obj.shape.num_elements()
        return int(n * obj.dtype.size) if n is not None else 0
    except Exception:  # noqa: BLE001 - a deleted variable
        return 0


def _device(obj) -> str:
    try:
        device = obj.device or "?"
    except Exception:  # noqa: BLE001
        return "?"
    return device.rsplit("device:", 1)[-1] if "device:" in device else device


def tensor_census(collected: list) -> dict:
    """Live eager tensors and variables: per device count and bytes; by (kind, dtype, shape) count and bytes."""
    EagerTensor, Variable, _ = _tf_types()
    devices: dict = collections.defaultdict(lambda: {"tensors": 0, "tensor_bytes": 0, "variables": 0,
                                                     "variable_bytes": 0})
    shapes: collections.Counter = collections.Counter()
    shape_bytes: collections.Counter = collections.Counter()
    for obj in collected:
        kind = "tensor" if isinstance(obj, EagerTensor) else "variable" if isinstance(obj, Variable) else None
        if kind is None:
            continue
        size = tensor_bytes(obj) or 0
        entry = devices[_device(obj)]
        entry[f"{kind}s"] += 1
        entry[f"{kind}_bytes"] += size
        try:
            key = (kind, obj.dtype.name, str(tuple(obj.shape.as_list())) if obj.shape.rank is not None else "?")
        except Exception:  # noqa: BLE001
            key = (kind, "?", "?")
        shapes[key] += 1
        shape_bytes[key] += size
    return {"devices": dict(devices), "shapes": shapes, "shape_bytes": shape_bytes}


def _constraint_text(constraint) -> str:
    value = getattr(constraint, "value", None)
    if type(constraint).__name__ == "Literal":
        return repr(value)
    shape, dtype = getattr(constraint, "shape", None), getattr(constraint, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{getattr(dtype, 'name', dtype)}{list(shape) if shape.rank is not None else '[?]'}"
    return str(constraint)


def changing_arguments(function, limit: int = 50) -> list[dict]:
    """The arguments whose traced value or type differs between a tf.function's concrete functions:
    `{argument, what, values}` (what: 'Python value', 'shape', 'dtype' or 'type')."""
    try:
        concrete = function._list_all_concrete_functions()[-limit:]  # noqa: SLF001 - no public listing
    except Exception:  # noqa: BLE001
        return []
    seen: dict[str, list] = {}
    for cf in concrete:
        try:
            parameters = cf.function_type.parameters
        except Exception:  # noqa: BLE001
            continue
        for name, parameter in parameters.items():
            seen.setdefault(name, []).append(parameter.type_constraint)
    out = []
    for name, constraints in seen.items():
        texts = list(dict.fromkeys(_constraint_text(c) for c in constraints))
        if len(texts) < 2:
            continue
        kinds = {type(c).__name__ for c in constraints}
        if kinds == {"Literal"}:
            what = f"Python {type(getattr(constraints[-1], 'value', None)).__name__} value"
        elif len({str(getattr(c, 'dtype', '')) for c in constraints}) > 1:
            what = "dtype"
        elif all(hasattr(c, "shape") for c in constraints):
            what = "shape"
        else:
            what = "type"
        out.append({"argument": name, "what": what, "distinct": len(texts),
                    "values": texts[:5] + (["..."] if len(texts) > 5 else [])})
    return out


def _function_name(function) -> tuple[str, str | None]:
    python = getattr(function, "_python_function", None)
    code = getattr(python, "__code__", None)
    name = getattr(python, "__qualname__", None) or getattr(function, "__name__", "?")
    where = f"{short_path(code.co_filename)}:{code.co_firstlineno}" if code is not None else None
    return name, where


# --------------------------------------------------------------------------------------------------


class LeakClues:
    """The guard's leak clues: a census at each warning and at the abort (see the module docstring)."""

    def __init__(self, census: Census | None = None, min_retraces: int = 2):
        self.objects = ObjectGrowth()
        self.retracing = RetraceWatch()
        self.census = census
        self.min_retraces = min_retraces
        self.functions: dict[int, int] = {}  # id(tf.function) -> trace count at the baseline / last census
        self.tensor_keys: collections.Counter | None = None  # (kind, dtype, shape) -> count then
        self.last: dict | None = None  # the last census's clues
        self.top_lines: dict | None = None  # the lines whose live memory grew most, at the last tracemalloc read
        self.warnings = 0

    def _census(self) -> Census:
        if self.census is None:
            self.census = Census(sizer=tensor_bytes, collect=_tf_types())
        elif not self.census.collect:
            self.census.collect = _tf_types()
            self.census.sizer = self.census.sizer or tensor_bytes
        return self.census

    def observe(self, step: int, model, summary=None) -> None:
        """At a memory reading: the baseline (once), the retracing check (logged, and to TensorBoard
        through `summary(tag, text, step)` when given)."""
        if self.objects.base is None:
            try:
                scan = self._census().baseline(step)
                self.objects.baseline(step, counts=scan["counts"])
                self._remember(scan["collected"])
            except Exception as error:  # noqa: BLE001 - clues are best effort
                log.warning("Leak clues: the baseline census failed (%s: %s); the guard goes on", type(error).__name__, error)
                self.objects.base, self.objects.base_step = collections.Counter(), step
        warning = self.retracing.check(step, model)
        if warning:
            log.warning("Leak clue: %s", warning)
            if summary is not None:
                summary("guard/retracing", warning, step)

    def _remember(self, collected: list) -> None:
        _, _, Function = _tf_types()
        self.functions = {id(f): _tracing_count(f) for f in collected if isinstance(f, Function)}
        self.tensor_keys = tensor_census(collected)["shapes"]

    def run(self, step: int, *, trace: bool = True, untraced_note: str | None = None) -> dict:
        """A census now (unless one ran at this step): holders, tensors, retracing. Never raises."""
        if self.last is not None and self.last.get("census", {}).get("step") == step:
            return self.last
        started = time.perf_counter()
        try:
            census = self._census()
            census.prepare()  # tracemalloc read and stopped before anything else (if a census started it)
            mark = time.perf_counter()
            scan = census.scan()
            scan_s = round(time.perf_counter() - mark, 3)
            objects = self.objects.report(step, force=True, counts=scan["counts"])
            mark = time.perf_counter()
            tensors = self._tensors(scan["collected"])
            functions = self._retraced(scan["collected"])
            self._remember(scan["collected"])
            tensorflow_s = round(time.perf_counter() - mark, 3)
            result = census.run(step, scan=scan, trace=trace, untraced_note=untraced_note)  # tracemalloc on at its end
            del scan
            result["timing"].update(scan_s=scan_s, tensorflow_s=tensorflow_s)
            if result["top_lines"]:  # read at this census; else the last read (tracemalloc alternates)
                self.top_lines = {"read_at_step": step, "traced_since_step": result["tracing"].get("since_step"),
                                  "lines": result["top_lines"]}
            clues = {"holders": result["holders"], "tensors": tensors,
                     "retracing": {**self.retracing.to_dict(), "functions": functions},
                     "python_objects": objects, "top_lines": self.top_lines,
                     "census": {k: result[k] for k in ("step", "since_step", "seconds", "timing", "census_bytes",
                                                       "tracemalloc_bytes", "tracing")}}
            clues["census"]["seconds"] = round(time.perf_counter() - started, 3)
        except Exception as error:  # noqa: BLE001 - a failed census is one line; the guard goes on
            log.warning("Leak clues: the census at step %d failed (%s: %s); the guard goes on", step,
                        type(error).__name__, error)
            clues = {"holders": [], "tensors": None, "retracing": self.retracing.to_dict(),
                     "python_objects": self.objects.last, "census": {"step": step},
                     "census_error": f"{type(error).__name__}: {error}"}
        self.last = clues
        return clues

    def _tensors(self, collected: list) -> dict:
        now = tensor_census(collected)
        before = self.tensor_keys or collections.Counter()
        top = [{"kind": k[0], "dtype": k[1], "shape": k[2], "count": n, "bytes": now["shape_bytes"][k],
                "growth": n - before.get(k, 0)} for k, n in now["shapes"].items()]
        top.sort(key=lambda t: -t["bytes"])
        growing = sorted((t for t in top if t["growth"] >= 8),  # a handful more is Keras' bookkeeping, not a leak
                         key=lambda t: -t["growth"] * t["bytes"] / max(t["count"], 1))
        return {"devices": now["devices"], "top": top[:5], "growing": growing[:5],
                "note": "live eager tensors and variables of this process, by the device TensorFlow placed them on"}

    def _retraced(self, collected: list) -> list[dict]:
        _, _, Function = _tf_types()
        out = []
        for function in collected:
            if not isinstance(function, Function):
                continue
            count = _tracing_count(function)
            before = self.functions.get(id(function), 0)
            if count - before < self.min_retraces or count < self.min_retraces + 1:
                continue
            name, where = _function_name(function)
            out.append({"function": name, "defined_at": where, "traces": count, "new_traces": count - before,
                        "arguments": changing_arguments(function)})
        out.sort(key=lambda f: -f["new_traces"])
        return out[:5]

    # what the guard shows -------------------------------------------------------------------------------
    def describe(self, step: int) -> str:
        """At a warning: a census, and `; held by ...; retracing ...; Python objects growing fastest: ...`."""
        self.warnings += 1
        clues = self.run(step, trace=True,
                         untraced_note="the first census: it starts tracemalloc; the next census (a warning or the "
                                       "abort) names the line")
        return short_text(clues)

    def report(self, step: int) -> dict:
        """At the abort: a census (tracemalloc read and stopped if a warning started it)."""
        note = None if self.warnings else (
            f"no warning came before the abort at step {step} (the first warning and the abort fell on the same "
            "reading: a fast leak), so tracemalloc never ran")
        clues = self.run(step, trace=False, untraced_note=note)
        for holder in clues.get("holders", []):
            log.warning("Leak clue: held by %s", describe_holder(holder))
        objects = clues.get("python_objects")
        if objects and objects.get("growing"):
            log.warning("Leak clue: Python objects growing fastest since step %d: %s", objects["since_step"],
                        describe(objects["growing"]))
        return clues

    def stop(self) -> None:
        if self.census is not None:
            self.census.stop()


def _tracing_count(function) -> int:
    try:
        return int(function.experimental_get_tracing_count())
    except Exception:  # noqa: BLE001
        return 0


def short_text(clues: dict) -> str:
    """The clues for a one-line warning: the top holder, the top retracing function, the top object kinds."""
    parts = []
    holders = clues.get("holders") or []
    if holders:
        parts.append("held by " + describe_holder(holders[0]) + (f" (+{len(holders) - 1} more)" if len(holders) > 1 else ""))
    functions = (clues.get("retracing") or {}).get("functions") or []
    if functions:
        parts.append(retrace_text(functions[0]))
    objects = clues.get("python_objects") or {}
    if objects.get("growing") and not holders:
        parts.append(f"Python objects growing fastest: {describe(objects['growing'][:3])}")
    if clues.get("census_error"):
        parts.append(f"census failed: {clues['census_error']}")
    return "".join(f"; {p}" for p in parts)
