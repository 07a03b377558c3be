"""Cost of the leak census on the smoke model: the pause of one census, its memory, and tracemalloc's.

    python scripts/bench_census.py                 # smoke + KeepDetections (the leak), censuses at steps 100 and 150
    python scripts/bench_census.py --no-leak       # the same without the leak

One training process: `+experiment=smoke` with leak_demo's KeepDetections callback (2 MiB a step, unpaced)
and a `CensusProbe` callback that plays the guard: the baseline at step 1, a census at `--at` (the first
warning: it starts tracemalloc) and another `--span` steps later (the abort: it reads and stops it). For
each: the pause (wall-clock seconds), the census's own count of its memory (`census_bytes`), tracemalloc's
own memory, and the rise of the process's peak RSS during the census (VmHWM, reset through
/proc/self/clear_refs before it). Step times (CPU seconds of the process per step) with tracemalloc on
(between the two censuses) and off (the `--span` steps after) show what tracing costs training.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


try:
    from tfodtrain.callbacks.base import RunCallback
except ImportError:  # the parent process only runs the child
    RunCallback = object


class CensusProbe(RunCallback):
    """Baseline at step 1, censuses at `at` and `at + span`; step CPU times around them; JSON to `out`."""

    def __init__(self, at: int = 100, span: int = 50, out: str = "census_cost.json", frames: int = 12):
        super().__init__()
        from tfodtrain.callbacks.clues import LeakClues
        from tfodtrain.memory.census import Census

        self.at, self.span, self.out = at, span, out
        self.clues = LeakClues(Census(trace_frames=frames))
        self.results: dict = {"trace_frames": frames}
        self.results["censuses"] = []
        self.marks: list[tuple[int, float]] = []

    def _measure(self, label: str, step: int, call) -> None:
        reset = _reset_hwm()
        rss, hwm_before = _rss_kib(), _hwm_kib()
        started = time.perf_counter()
        value = call()
        seconds = time.perf_counter() - started
        entry = {"what": label, "step": step, "pause_s": round(seconds, 3),
                 "peak_rss_rise_mib": round((_hwm_kib() - rss) / 1024, 1) if reset else None,
                 "rss_mib": round(rss / 1024, 1)}
        if isinstance(value, dict) and "census" in value:
            census = value["census"]
            entry.update(census_bytes=census.get("census_bytes"), tracemalloc_bytes=census.get("tracemalloc_bytes"),
                         timing=census.get("timing"), tracing=census.get("tracing", {}).get("state"),
                         holders=[h["path"] for h in value.get("holders", [])])
        self.results["censuses"].append(entry)

    def on_train_batch_end(self, batch, logs=None):
        step = self.run.step_of(batch)
        self.marks.append((step, time.process_time()))
        if step == 1:
            self._measure("baseline", step, lambda: self.clues.observe(step, self.model))
        elif step == self.at:
            self._measure("census at the first warning (starts tracemalloc)", step,
                          lambda: (self.clues.describe(step), self.clues.last)[1])
        elif step == self.at + self.span:
            self._measure("census at the abort (reads and stops tracemalloc)", step, lambda: self.clues.report(step))
        self.marks.append((step, time.process_time()))

    def on_train_end(self, logs=None):
        self.clues.stop()

        def cpu_per_step(first, last):  # CPU seconds between one step's end (after the probe) and the next's
            ends = dict((s, t) for s, t in self.marks[1::2])
            starts = dict((s, t) for s, t in self.marks[0::2])
            spans = [starts[s + 1] - ends[s] for s in range(first, last) if s in ends and s + 1 in starts]
            spans.sort()
            return round(spans[len(spans) // 2] * 1000, 2) if spans else None

        a, b = self.at, self.at + self.span
        self.results["median_cpu_ms_per_step"] = {
            "tracemalloc_off_before": cpu_per_step(max(2, a - self.span), a),
            "tracemalloc_on": cpu_per_step(a + 1, b),
            "tracemalloc_off_after": cpu_per_step(b + 1, b + self.span)}
        Path(self.out).write_text(json.dumps(self.results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=int, default=100)
    parser.add_argument("--span", type=int, default=50)
    parser.add_argument("--no-leak", action="store_true")
    parser.add_argument("--frames", type=int, default=None, help="tracemalloc frames (default: the census's)")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench_census_"))
    out = run_dir / "census_cost.json"
    steps = args.at + 2 * args.span + 2
    leak = "" if args.no_leak else \
        "+callbacks.keep_detections={_target_:tfodtrain.callbacks.leak_demo.KeepDetections,mib_per_step:2,max_steps_per_s:null,image_size:128}"
    cli = [sys.executable, "-m", "tfodtrain", "+experiment=smoke", f"trainer.steps={steps}",
           f"trainer.checkpoint_every={steps + 1}", "trainer.log_every=1000", "memory.interval_steps=10",
           "guard=off", *([leak] if leak else []),
           f"+callbacks.census_probe={{_target_:bench_census.CensusProbe,at:{args.at},span:{args.span},out:'{out}'"
           + (f",frames:{args.frames}" if args.frames else "") + "}",
           f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "scripts"), str(REPO)]))
    done = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        sys.exit(f"bench_census: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(out.read_text(), end="")


if __name__ == "__main__":
    main()
