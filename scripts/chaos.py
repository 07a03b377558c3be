"""Chaos test: a `smoke` training run SIGKILLed at N random moments, resumed after each kill.

Each attempt is `python -m tfodtrain +experiment=smoke ... hydra.run.dir=RUN_DIR` (the same command, as
a scheduler or the supervisor would rerun it). A fifth of the kills aim at a random moment of the
start-up (imports, model build, restore, tracing), 30% at a checkpoint save under way (0-30 ms after its
`ckpt-N_temp/` folder appears), the rest at a random moment of training: a random step of the next two
checkpoint intervals, at a random moment within a step's time (`checkpoint_every` is small, so saves
are frequent). After every kill the script checks that each checkpoint the state file names is
complete and readable (every tensor read back through TensorFlow), and the next attempt must resume
from the newest one and redo at most one checkpoint interval (the last step the killed attempt logged
minus the step the next one resumed from). The run must finally end at its last step. Last line: a
summary, PASS or FAIL.

Example:
    python scripts/chaos.py --kills 20                 # ~30-60 min on 2 CPU cores
    python scripts/chaos.py --kills 3 --steps 12 --run-dir /tmp/chaos_quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tfodtrain import checkpoint_files  # noqa: E402
from tfodtrain.exit_codes import first_line  # noqa: E402

PROGRESS = re.compile(r"step (\d+)/(\d+) \|")
RESUMED = re.compile(r"Resuming from checkpoint \S+ at step (\d+) of")


class Attempt:
    """One trainer process and what its log says so far."""

    def __init__(self, number: int, command: list[str], log_path: Path, env: dict):
        self.number = number
        self.log_path = log_path
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.steps: list[tuple[float, int]] = []  # (seconds since start, step) of each progress line
        self.resumed_from: int | None = None
        self._read = 0

    def poll_log(self) -> None:
        with self.log_path.open("rb") as log:
            log.seek(self._read)
            data = log.read()
        cut = data.rfind(b"\n") + 1  # whole lines only
        self._read += cut
        now = time.monotonic() - self.started
        for line in data[:cut].decode(errors="replace").splitlines():
            if (m := PROGRESS.search(line)):
                self.steps.append((now, int(m.group(1))))
            elif (m := RESUMED.search(line)):
                self.resumed_from = int(m.group(1))

    @property
    def last_step(self) -> int | None:
        return self.steps[-1][1] if self.steps else None

    def running(self) -> bool:
        self.poll_log()
        return self.proc.poll() is None


def readable(prefix: Path) -> str | None:
    """None if every tensor of the checkpoint reads back, else why not."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # any failure to read is what this script looks for
        return f"{type(error).__name__}: {first_line(error, 200)}"
    return None


def check_checkpoints(directory: Path) -> tuple[list[str], list[str]]:
    """(problems, stale names) of the checkpoints the state file names.

    Problems: the newest named checkpoint is incomplete, or a complete one does not read back. Stale:
    an older name whose files are gone. CheckpointManager names the new checkpoint, deletes the oldest,
    then rewrites the state file without it; a kill between the last two leaves that name behind.
    A restore skips it (it takes the newest complete checkpoint); the next save drops it.
    """
    problems, stale = [], []
    for position, name in enumerate(checkpoint_files.state_names(directory)):
        files = checkpoint_files.CheckpointFiles(directory / name, checkpoint_files.step_of(name) or -1)
        if not files.complete:
            (stale if position else problems).append(f"{name}: named by the state file but incomplete")
        elif (why := readable(files.prefix)) is not None:
            problems.append(f"{name}: unreadable ({why})")
    return problems, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may finish")
    parser.add_argument("--steps", type=int, default=0, help="training steps (default: 3 checkpoint intervals a kill)")
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("outputs/chaos") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--startup-share", type=float, default=0.2, help="share of kills aimed at start-up")
    parser.add_argument("--save-share", type=float, default=0.3, help="share of kills aimed at a checkpoint save")
    parser.add_argument("--attempt-timeout-s", type=float, default=1800)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for the smoke run")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    interval = args.checkpoint_every
    steps = args.steps or 3 * interval * max(args.kills, 1)
    run_dir = args.run_dir.resolve()
    logs = run_dir / "chaos"
    logs.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    command = [sys.executable, "-m", "tfodtrain", "+experiment=smoke", f"trainer.steps={steps}",
               f"trainer.checkpoint_every={interval}", "trainer.log_every=1", "trainer.eval_steps=1",
               *args.overrides, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    print(f"chaos: {args.kills} kills of `{' '.join(command[1:])}`; logs in {logs}", flush=True)

    started = time.monotonic()
    startup_s: list[float] = []  # start to first progress line, per attempt
    gaps_s: list[float] = [2.0]  # seconds between two progress lines (a step, with its save if any)
    kills: list[dict] = []
    failures: list[str] = []
    pending: list[dict] = []  # kills not yet checked against a resume (an attempt killed before it restores)
    number, final_code = 0, None
    while True:
        number += 1
        expected_resume = checkpoint_files.latest_step(ckpt_dir)
        attempt = Attempt(number, command, logs / f"attempt-{number:02d}.log", env)
        plan = None
        if len(kills) < args.kills:
            # Start-up: a random moment before the first step ends. Save: 0-30 ms after a save is seen
            # under way (its `ckpt-N_temp/` appeared). Training: once a random one of the next 2 checkpoint
            # intervals' steps is logged, a random moment within the longest step seen (saves included).
            draw = rng.random()
            if draw < args.startup_share:
                plan = ("startup", rng.uniform(0.5, statistics.median(startup_s) if startup_s else 60.0))
            elif draw < args.startup_share + args.save_share:
                plan = ("save", rng.uniform(0.0, 0.03))
            else:
                plan = ("training", rng.randrange(2 * interval), rng.uniform(0.0, min(max(gaps_s), 10.0)))
        killed, killed_at, save_seen = False, None, None
        while attempt.running():
            now = time.monotonic() - attempt.started
            if now > args.attempt_timeout_s:
                failures.append(f"attempt {number} ran over {args.attempt_timeout_s:.0f} s")
                os.killpg(attempt.proc.pid, signal.SIGKILL)
                break
            if plan is not None:
                if plan[0] == "startup":
                    origin, delay = 0.0, plan[1]
                elif plan[0] == "save":  # leftovers of earlier kills are gone once training runs
                    saving = attempt.steps and any(ckpt_dir.glob("ckpt-*_temp"))
                    if saving and save_seen is None:
                        save_seen = now
                    origin, delay = save_seen, plan[1]
                else:
                    target = attempt.steps[0][1] + plan[1] if attempt.steps else None
                    origin = next((t for t, step in attempt.steps if step >= target), None) if target else None
                    delay = plan[2]
                if origin is not None and now >= origin + delay:
                    os.killpg(attempt.proc.pid, signal.SIGKILL)
                    killed, killed_at = True, round(now, 2)
                    break
            time.sleep(0.002 if plan and plan[0] == "save" else 0.01)
        code = attempt.proc.wait()
        attempt.poll_log()
        # A save this attempt began and did not finish (an earlier attempt's leftovers are older).
        mid_save = sorted(p.name for p in ckpt_dir.glob("ckpt-*_temp") if p.stat().st_mtime >= attempt.started_wall)
        if attempt.steps:
            startup_s.append(attempt.steps[0][0])
            gaps_s.extend(b[0] - a[0] for a, b in zip(attempt.steps, attempt.steps[1:]) if b[1] == a[1] + 1)

        restored = attempt.resumed_from is not None or bool(attempt.steps)  # got past the restore
        if restored:  # did it resume from the newest checkpoint, and how much did each kill since cost?
            if attempt.resumed_from != expected_resume:
                failures.append(f"attempt {number} resumed from step {attempt.resumed_from}, "
                                f"expected the newest checkpoint {expected_resume}")
            if "damaged" in attempt.log_path.read_text(errors="replace"):
                failures.append(f"attempt {number} found a damaged checkpoint")
            for kill in pending:
                kill["resumed_from"] = attempt.resumed_from
                kill["redone_steps"] = max(0, kill["last_step"] - (attempt.resumed_from or 0)) \
                    if kill["last_step"] is not None else 0
                if kill["redone_steps"] > interval:
                    failures.append(f"kill {kill['kill']} redid {kill['redone_steps']} steps (> {interval})")
            pending = []

        if killed:
            problems, stale = check_checkpoints(ckpt_dir)
            failures.extend(f"after kill {len(kills) + 1}: {p}" for p in problems)
            kill = {"kill": len(kills) + 1, "attempt": number, "planned": plan[0], "at_s": killed_at,
                    "last_step": attempt.last_step, "mid_save": mid_save,
                    "checkpoint_after": checkpoint_files.latest_step(ckpt_dir), "unrestorable": problems,
                    "stale_names": stale}
            kills.append(kill)
            pending.append(kill)
            print(f"chaos: kill {len(kills)}/{args.kills} in attempt {number} (planned in {plan[0]}, at {kill['at_s']} s): "
                  f"last logged step {attempt.last_step}, newest checkpoint {kill['checkpoint_after']}"
                  + (f", mid-save ({', '.join(mid_save)})" if mid_save else "")
                  + (f", stale state-file names: {len(stale)}" if stale else ""), flush=True)
            continue
        final_code = code
        if code != 0 or len(kills) < args.kills:
            failures.append(f"attempt {number} exited {code} before the kills were done ({len(kills)} of {args.kills})"
                            if len(kills) < args.kills else f"the last attempt exited {code}")
        break

    metrics_path = run_dir / "metrics.json"
    final_step = json.loads(metrics_path.read_text()).get("steps") if metrics_path.exists() else None
    if final_step != steps:
        failures.append(f"final step {final_step}, expected {steps}")
    unrestorable = sum(len(k["unrestorable"]) for k in kills)
    stale = sum(bool(k["stale_names"]) for k in kills)
    redone = [k.get("redone_steps", 0) for k in kills]
    result = {"kills": kills, "attempts": number, "final_step": final_step, "steps": steps, "interval": interval,
              "final_exit_code": final_code, "failures": failures, "seconds": round(time.monotonic() - started, 1)}
    (logs / "chaos.json").write_text(json.dumps(result, indent=2) + "\n")
    for failure in failures:
        print(f"chaos: FAIL: {failure}", flush=True)
    in_startup = sum(k["last_step"] is None for k in kills)  # where the kill landed: before the attempt's first step
    print(f"chaos: {'PASS' if not failures else 'FAIL'}: {len(kills)} kills ({in_startup} in start-up, "
          f"{len(kills) - in_startup} in training, {sum(bool(k['mid_save']) for k in kills)} mid-save), "
          f"{number} starts, final step {final_step}/{steps}, {unrestorable} unrestorable checkpoints "
          f"({stale} kills left a stale name of a deleted old checkpoint, skipped by restores), "
          f"steps redone per kill: max {max(redone, default=0)}, mean {statistics.mean(redone) if redone else 0:.1f} "
          f"(limit: the checkpoint interval, {interval}), {result['seconds']:.0f} s; details in {logs / 'chaos.json'}",
          flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
