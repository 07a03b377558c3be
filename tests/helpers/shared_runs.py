"""The long training runs that slow tests share; conftest.py starts those the selected tests need side by side,
when the session starts (most of their time is a leak's pace or a process start, not CPU).

- `leak_demo_aborted`: the product's leak_demo as it is (default guard settings, no override): it exits 75
  with abort_report.json and a checkpoint before the kill (test_leak_demo).
- `leak_demo_unguarded`: guard=off, a 2 GiB budget and a faster leak (25 MiB/s, in 25 MiB steps) from the first
  step: the OOM-killer stand-in's SIGKILL, a minute sooner than the product's budget and pace would bring it.
- `leak_demo_warned`: guard=warn under a 2 GiB budget, the leak (WARNED_MIB_PER_STEP) paced to fill it in about
  FILL_S seconds from its start, after about as many seconds of settled steps as the product's leak_demo, no
  periodic checkpoints: the kill comes after the first warning (and its insurance checkpoint).

Each shortens the product's run by budget, pace or length only, never by guard settings. Where the leak's MiB a
second need not change, a run leaks more a step at fewer steps a second: every leaking step trains and runs the
detector once more, and these runs share 2 cores with the rest of the suite from its start.

- `leak_demo_aborted_resumed`, `leak_demo_warned_resumed`: each started as soon as its run has ended, on a copy
  of that run's dir (the run's own dir stays as it ended): leak off, a few steps past the checkpoint it restores.
- `leak_named`: `+experiment=smoke` with leak_demo's KeepDetections callback, a faster leak and guard settings
  scaled to a run of a minute or two (FAST_GUARD), so that warnings come before the abort: the first starts
  tracemalloc, the next reads it (test_leak_naming). Not leak_demo, whose guard stays on its defaults.
- `supervised_smoke`: `+experiment=smoke` under the supervisor, failing at chosen steps through
  tfodtrain.testing.CrashAt (test_supervise): a guard-style abort (75), SIGKILL, a segfault, then SIGTERM.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers.cli import compose_config
from tfodtrain import checkpoint_files

FILL_S = 240  # leak_demo_warned: seconds its leak takes to fill the budget, from the leak's start
WARNED_BUDGET_MB = 2048
WARNED_MIB_PER_STEP = 5.0  # twice leak_demo's, at half its pace: the same MiB a second in half the steps
SETTLED_MIB = 1000  # leak_demo's RSS before its leak starts (measured: 0.95-1.0 GiB)


# The pre-flight's memory step (seconds of CPU at a start) is tested apart (test_preflight); the product's
# leak_demo_aborted keeps it.
NO_PREFLIGHT = "trainer.preflight=false"


def warned_fixed() -> list[str]:
    """Overrides leak_demo_warned shares with its resumed run: its budget, no periodic checkpoints."""
    return [f"memory.budget_mb={WARNED_BUDGET_MB}", "trainer.checkpoint_every=100000", NO_PREFLIGHT]


def warned_leak() -> list[str]:
    """leak_demo_warned's leak: WARNED_MIB_PER_STEP at the pace that fills WARNED_BUDGET_MB in about FILL_S, starting
    after as many seconds of settled steps as leak_demo's own start at its own pace."""
    demo = compose_config(["+experiment=leak_demo"]).leak_demo
    pace = (WARNED_BUDGET_MB - SETTLED_MIB) / (WARNED_MIB_PER_STEP * FILL_S)
    start = round(float(demo.start_step) / float(demo.max_steps_per_s) * pace)
    return [f"leak_demo.mib_per_step={WARNED_MIB_PER_STEP}", f"leak_demo.max_steps_per_s={pace:.3f}",
            f"leak_demo.start_step={start}"]


FAST_GUARD = ["+guard.settings.startup_s=5", "+guard.settings.warmup_s=5", "+guard.settings.warmup_steps=10",
              "+guard.settings.min_readings=10", "+guard.settings.chunk_seconds=[1,4]",
              "+guard.settings.fast_chunk_seconds=[1,4]", "+guard.settings.window_chunks=8",
              "+guard.settings.horizon_s=30", "+guard.settings.long_horizon_s=30",
              "+guard.settings.warn_horizon_s=60", "+guard.settings.warn_every_s=10"]
SUPERVISED_PLAN = "1:abort,2:kill,3:segv,4:term"

RUNS = {
    "leak_demo_aborted": lambda: ["+experiment=leak_demo"],
    "leak_demo_unguarded": lambda: ["+experiment=leak_demo", "guard=off", "memory.budget_mb=2048",
                                    "leak_demo.mib_per_step=25", "leak_demo.max_steps_per_s=1",
                                    "leak_demo.start_step=0", NO_PREFLIGHT],
    "leak_demo_warned": lambda: ["+experiment=leak_demo", "guard=warn", *warned_leak(), *warned_fixed()],
    "leak_named": lambda: ["+experiment=smoke", "trainer.steps=2000", "trainer.checkpoint_every=5000",
                           "trainer.log_every=100", "memory.interval_steps=2", "memory.budget_mb=1800",
                           "memory.kill_over_budget=true",
                           "+callbacks.keep_detections={_target_:tfodtrain.callbacks.leak_demo.KeepDetections,"
                           "mib_per_step:5,max_steps_per_s:2,image_size:128}", *FAST_GUARD],
    # 4 trainer processes; the pre-flight step (seconds in each) is not what test_supervise checks
    "supervised_smoke": lambda: ["+experiment=smoke", "trainer.max_restarts=5", "trainer.restart_backoff_s=0",
                                 "trainer.checkpoint_every=1", "trainer.log_every=1", NO_PREFLIGHT,
                                 f"+callbacks.crash={{_target_:tfodtrain.testing.CrashAt,plan:\"{SUPERVISED_PLAN}\"}}"],
}


def resume_aborted(run_dir: Path, copy: Path) -> list[str]:
    """leak_demo_aborted's dir copied to `copy`, resumed with the leak off up to 6 steps past its abort."""
    shutil.copytree(run_dir, copy)
    step = json.loads((copy / "abort_report.json").read_text())["step"]
    return ["+experiment=leak_demo", "leak_demo.leak=false", f"trainer.steps={step + 6}", NO_PREFLIGHT]


def resume_warned(run_dir: Path, copy: Path) -> list[str]:
    """leak_demo_warned's dir copied to `copy`, resumed with the leak off up to 6 steps past its latest checkpoint."""
    shutil.copytree(run_dir, copy)
    latest = checkpoint_files.latest_step(copy / "checkpoints") or 0
    return ["+experiment=leak_demo", "leak_demo.leak=false", *warned_fixed(), f"trainer.steps={latest + 6}"]


RESUMES = {  # name: (the run it resumes, make its arguments from that run's dir and the copy's)
    "leak_demo_aborted_resumed": ("leak_demo_aborted", resume_aborted),
    "leak_demo_warned_resumed": ("leak_demo_warned", resume_warned),
}
