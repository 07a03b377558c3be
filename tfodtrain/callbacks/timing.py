"""Timing callbacks for the benchmarks: every execution's end in wall-clock and CPU time (StepClock,
scripts/bench_throughput.py), and callbacks switched on and off in alternating blocks of steps
(AlternatingBlocks, scripts/bench_overhead.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tfodtrain.callbacks.base import RunCallback


class StepClock(RunCallback):
    """Records the global step, monotonic time and process CPU time at every execution's end.

    On train end writes `out` (default RUN_DIR/step_clock.json) with the marks and the rates from the
    first mark at or past `start_step` to the last. Put it last among the callbacks: a mark then follows
    every callback's work of its step, so one-time work at `start_step` (the first memory reading takes
    a census of Python objects for the leak clues) stays out, as the first (tracing) execution does.
    CPU time is every thread's of this process (`time.process_time`): steps per CPU-second hardly move
    with other processes' load on a shared machine, steps per wall-clock second do.

    Example:
        python -m tfodtrain +experiment=smoke '+callbacks.step_clock={_target_:tfodtrain.callbacks.timing.StepClock}'
    """

    def __init__(self, start_step: int = 1, out: str | None = None):
        super().__init__()
        self.start_step = int(start_step)
        self.out = out
        self.marks: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.marks.append((self.run.step_of(batch), time.monotonic(), time.process_time()))

    def on_train_end(self, logs=None):
        path = Path(self.out) if self.out else self.run.run_dir / "step_clock.json"
        path.write_text(json.dumps({**window_rates(self.marks, self.start_step), "marks": self.marks}) + "\n")


def window_rates(marks: list[tuple[int, float, float]], start_step: int) -> dict:
    """Steps per second and per CPU-second between the first mark at or past `start_step` and the last.

    `marks` are (global step, monotonic seconds, CPU seconds) at the ends of executions or loops.
    """
    window = [mark for mark in marks if mark[0] >= start_step]
    if len(window) < 2:
        return {"steps_per_second": None, "steps_per_cpu_second": None, "timed_steps": 0}
    (s0, t0, c0), (s1, t1, c1) = window[0], window[-1]
    return {"steps_per_second": (s1 - s0) / (t1 - t0), "steps_per_cpu_second": (s1 - s0) / (c1 - c0),
            "timed_steps": s1 - s0, "first_timed_step": s0}


class AlternatingBlocks(RunCallback):
    """Runs `callbacks` (the memory monitor and leak guard) only in every other block of steps; times steps.

    After `warmup_steps` (tracing, first readings), blocks of `block_steps` steps come in pairs, "with"
    (the wrapped callbacks' batch hooks run) and "without" (they are skipped), the order swapped every
    other pair (with, without, without, with, ...) so a steady drift of the machine's load favours
    neither. Their
    train begin/end hooks always run (files opened and closed once, as in a normal run). Every
    `on_train_batch_end` is timestamped (wall-clock and process CPU time): the time to the next one is
    the step's time, attributed to the mode the wrapped callbacks ran in at this one. On train end the
    blocks go to `out` as JSON.

    Example (what scripts/bench_overhead.py puts in place of the two callbacks):
        callbacks.overhead={_target_: tfodtrain.callbacks.timing.AlternatingBlocks, _convert_: all,
                            callbacks: [<memory_monitor spec>, <leak_guard spec>],
                            warmup_steps: 10, block_steps: 20, out: RUN_DIR/overhead_blocks.json}
    """

    def __init__(self, callbacks: list, warmup_steps: int, block_steps: int, out: str):
        super().__init__()
        self.wrapped = list(callbacks)
        self.warmup_steps = int(warmup_steps)
        self.block_steps = int(block_steps)
        self.out = Path(out)
        self.marks: list[tuple[int, float, float, bool]] = []  # (step, monotonic, CPU time, callbacks ran)

    def attach(self, run) -> None:
        super().attach(run)
        for callback in self.wrapped:
            if isinstance(callback, RunCallback):
                callback.attach(run)

    def set_model(self, model):
        super().set_model(model)
        for callback in self.wrapped:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.wrapped:
            callback.set_params(params)

    def block_of(self, step: int) -> int | None:
        """Index of the block whose steps' times are attributed to `step`'s mode (None in warm-up)."""
        offset = step - self.run.initial_step - self.warmup_steps - 1  # steps 1..warmup_steps: warm-up
        return None if offset < 0 else offset // self.block_steps

    def on_train_begin(self, logs=None):
        for callback in self.wrapped:
            callback.on_train_begin(logs)

    def on_train_batch_end(self, batch, logs=None):
        now, cpu = time.monotonic(), time.process_time()
        step = self.run.step_of(batch)
        block = self.block_of(step)
        with_callbacks = block is None or block % 4 in (0, 3)  # warm-up runs them (first readings, headers)
        self.marks.append((step, now, cpu, with_callbacks))
        if with_callbacks:
            for callback in self.wrapped:
                callback.on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        for callback in self.wrapped:
            callback.on_train_end(logs)
        self.out.write_text(json.dumps({"blocks": self.blocks(), "warmup_steps": self.warmup_steps,
                                        "block_steps": self.block_steps}, indent=1) + "\n")

    def blocks(self) -> list[dict]:
        """Complete blocks: index, mode, steps, wall and CPU seconds per step (from this hook to the next)."""
        spans: dict[int, dict] = {}
        for (step, start, cpu_start, ran), (next_step, end, cpu_end, _) in zip(self.marks, self.marks[1:]):
            block = self.block_of(step)
            if block is None:
                continue
            span = spans.setdefault(block, {"block": block, "with": ran, "steps": 0, "seconds": 0.0,
                                            "cpu_seconds": 0.0})
            span["steps"] += next_step - step
            span["seconds"] += end - start
            span["cpu_seconds"] += cpu_end - cpu_start
        complete = [s for s in spans.values() if s["steps"] == self.block_steps]
        for span in complete:
            span["seconds_per_step"] = span["seconds"] / span["steps"]
            span["cpu_seconds_per_step"] = span["cpu_seconds"] / span["steps"]
        return complete
