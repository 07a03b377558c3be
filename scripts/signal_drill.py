"""Signal drill: SIGTERM / SIGINT a `smoke` run at random moments; every one must exit 143 / 130, cleanly.

Each trial starts `python -m tfodtrain +experiment=smoke hydra.run.dir=RUN_DIR/trial-N` and sends
SIGTERM or SIGINT (alternating) at a moment drawn uniformly from 0 to `--window-s` seconds after the
process starts, so the signals land in every phase: Hydra's composition, the imports of TensorFlow and
its C extensions, the model build, the pre-flight step, tracing, training steps, checkpoint saves and
the final evaluation. A trial passes when the process exits with 128 + the signal number (or 0 when the
run had finished, metrics.json written, before the signal came; or by the signal itself when it came in the
interpreter's first ~50 ms, before any tfodtrain code ran, and nothing was written) and printed neither a traceback, "Exception ignored", nor a
"Fatal Python error". The last line is the summary: PASS or FAIL, with where the signals landed (in
fit: step finished, checkpoint saved; outside fit: stopped at once; after the end: ignored).

The run trains 200 steps (not smoke's 6, ~10 s) so that about a third of the signals land inside fit.

Example:
    python scripts/signal_drill.py --trials 40            # ~14 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAD_OUTPUT = ("Traceback (most recent call last)", "Exception ignored", "Fatal Python error")


def trial(number: int, signum: int, delay_s: float, run_dir: Path, overrides: list[str]) -> tuple[bool, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "tfodtrain", "+experiment=smoke", f"hydra.run.dir={run_dir}", *overrides]
    log_path = run_dir.with_suffix(".log")
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(delay_s)
        finished_first = (run_dir / "metrics.json").exists()  # from here on, the outcome is decided
        if proc.poll() is None:
            proc.send_signal(signum)
        code = proc.wait(timeout=600)
    output = log_path.read_text(errors="replace")
    name = signal.Signals(signum).name
    # In the first ~50 ms Python has not run tfodtrain yet: the signal's default action ends it, nothing written.
    before_start = code == -signum and not output and not run_dir.exists()
    expected = 0 if finished_first else -signum if before_start else 128 + signum
    bad = [text for text in BAD_OUTPUT if text in output]
    ok = code == expected and not bad
    phase = ("after the end" if finished_first else "before Python ran tfodtrain" if before_start
             else "in fit" if f"{name} received; checkpoint" in output
             else "outside fit" if f"{name} received outside the training loop" in output else "unknown")
    detail = f"trial {number:3d}: {name} at {delay_s:5.1f} s, {phase} -> exit {code} (expected {expected})"
    if bad:
        detail += f"; printed {', '.join(repr(b) for b in bad)}"
    return ok, phase, f"{detail}  {'ok' if ok else 'FAIL'}  log {log_path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--window-s", type=float, default=34.0,
                        help="signal moments are drawn from 0 to this many seconds after start (the drill's "
                             "200-step smoke run takes ~32 s on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("outputs/signal_drill") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for the smoke run")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.window_s <= 0:
        parser.error("--trials must be at least 1 and --window-s positive")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    failures, phases = 0, collections.Counter()
    for number in range(args.trials):
        signum = (signal.SIGTERM, signal.SIGINT)[number % 2]
        ok, phase, line = trial(number, signum, rng.uniform(0, args.window_s), args.run_dir / f"trial-{number}",
                                ["trainer.steps=200", "trainer.checkpoint_every=20", *args.overrides])
        failures += not ok
        phases[phase] += 1
        print(line, flush=True)
    landed = ", ".join(f"{n} {phase}" for phase, n in phases.most_common())
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {args.trials - failures}/{args.trials} trials clean ({landed})")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
