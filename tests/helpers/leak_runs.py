"""The leaking `+experiment=leak_demo` runs that the slow tests share (conftest.py starts them side by side).

- `leak_demo_aborted`: the product's leak_demo as it is (default guard settings, no override): it warns,
  saves an insurance checkpoint, then exits 75 with abort_report.json. test_leak_demo checks the abort
  and the resume, test_leak_naming the leak clues of the same abort.
- `leak_demo_unguarded`: guard=off, a 2 GiB budget and a faster leak from the first step: the OOM-killer
  stand-in's SIGKILL, a minute sooner than the product's budget and pace would bring it.
- `leak_demo_warned`: guard=warn under a 2 GiB budget, the leak paced to fill it in about FILL_S seconds from
  its start, no periodic checkpoints: the kill comes after the first warning (and its insurance checkpoint).

Each shortens the product's run by budget, pace or length only, never by guard settings.
"""

from __future__ import annotations

from helpers.cli import compose_config

FILL_S = 130  # leak_demo_warned: seconds its leak takes to fill the budget, from the leak's start
WARNED_BUDGET_MB = 2048
SETTLED_MIB = 1000  # leak_demo's RSS before its leak starts (measured: 0.95-1.0 GiB)


# The pre-flight's memory step (seconds of CPU at a start) is tested apart (test_preflight); the product's
# leak_demo_aborted keeps it.
NO_PREFLIGHT = "trainer.preflight=false"


def warned_fixed() -> list[str]:
    """Overrides leak_demo_warned shares with its resumed run: its budget, no periodic checkpoints."""
    return [f"memory.budget_mb={WARNED_BUDGET_MB}", "trainer.checkpoint_every=100000", NO_PREFLIGHT]


def warned_pace() -> float:
    """Steps a second at which leak_demo's leak fills WARNED_BUDGET_MB in about FILL_S, whatever its MiB a step."""
    demo = compose_config(["+experiment=leak_demo"])
    return (WARNED_BUDGET_MB - SETTLED_MIB) / (float(demo.leak_demo.mib_per_step) * FILL_S)


LEAK_RUNS = {
    "leak_demo_aborted": lambda: ["+experiment=leak_demo"],
    "leak_demo_unguarded": lambda: ["+experiment=leak_demo", "guard=off", "memory.budget_mb=2048",
                                    "leak_demo.max_steps_per_s=10", "leak_demo.start_step=0", NO_PREFLIGHT],
    "leak_demo_warned": lambda: ["+experiment=leak_demo", "guard=warn", f"leak_demo.max_steps_per_s={warned_pace():.3f}",
                                 *warned_fixed()],
}
