"""Switch callbacks on and off in alternating blocks of steps and time every step (scripts/bench_overhead.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tfodtrain.callbacks.base import RunCallback


class AlternatingBlocks(RunCallback):
    """Runs `callbacks` (the memory monitor and leak guard) only in every other block of steps; times steps.

    After `warmup_steps` (tracing, first readings), blocks of `block_steps` steps alternate: "with"
    (the wrapped callbacks' batch hooks run), then "without" (they are skipped), and so on. Their
    train begin/end hooks always run (files opened and closed once, as in a normal run). Every
    `on_train_batch_end` is timestamped: the time to the next one is the step's time, attributed to the
    mode the wrapped callbacks ran in at this one. On train end the blocks go to `out` as JSON.

    Example (what scripts/bench_overhead.py puts in place of the two callbacks):
        callbacks.overhead={_target_: tfodtrain.callbacks.overhead.AlternatingBlocks, _convert_: all,
                            callbacks: [<memory_monitor spec>, <leak_guard spec>],
                            warmup_steps: 10, block_steps: 20, out: RUN_DIR/overhead_blocks.json}
    """

    def __init__(self, callbacks: list, warmup_steps: int, block_steps: int, out: str):
        super().__init__()
        self.wrapped = list(callbacks)
        self.warmup_steps = int(warmup_steps)
        self.block_steps = int(block_steps)
        self.out = Path(out)
        self.marks: list[tuple[int, float, bool]] = []  # (step, monotonic time, wrapped callbacks ran)

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
        now = time.monotonic()
        step = self.run.step_of(batch)
        block = self.block_of(step)
        with_callbacks = block is None or block % 2 == 0  # warm-up runs them (first readings, file headers)
        self.marks.append((step, now, with_callbacks))
        if with_callbacks:
            for callback in self.wrapped:
                callback.on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        for callback in self.wrapped:
            callback.on_train_end(logs)
        self.out.write_text(json.dumps({"blocks": self.blocks(), "warmup_steps": self.warmup_steps,
                                        "block_steps": self.block_steps}, indent=1) + "\n")

    def blocks(self) -> list[dict]:
        """Complete blocks: index, mode, steps and seconds per step (time between this and next hook)."""
        spans: dict[int, dict] = {}
        for (step, start, ran), (next_step, end, _) in zip(self.marks, self.marks[1:]):
            block = self.block_of(step)
            if block is None:
                continue
            span = spans.setdefault(block, {"block": block, "with": ran, "steps": 0, "seconds": 0.0})
            span["steps"] += next_step - step
            span["seconds"] += end - start
        complete = [s for s in spans.values() if s["steps"] == self.block_steps]
        for span in complete:
            span["seconds_per_step"] = span["seconds"] / span["steps"]
        return complete
