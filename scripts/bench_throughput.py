"""Throughput: tfodtrain (monitor and guard on) against Model Garden's own trainer, same config and steps.

    python scripts/bench_throughput.py                              # ssd, 320x320, batch 8, shapes data
    python scripts/bench_throughput.py --experiment smoke --steps 42 --pairs 1     # a quick check
    python scripts/bench_throughput.py -- trainer.steps_per_execution=1            # Hydra overrides for both

Each pair trains the experiment once through each trainer, every run in a fresh process (neither warms
the other; the order alternates between pairs):

- tfodtrain: `python -m tfodtrain +experiment=E trainer.steps=N ...` with the default callbacks
  (checkpoint, memory monitor, leak guard, progress, ...) and a `StepClock` callback (last) that marks
  every execution's end (ssd runs 10 steps per execution, its config's trainer.steps_per_execution). The rate runs from the first mark at or past `--start-step` (default:
  memory.interval_steps, the first memory reading, whose one-time census of Python objects for the
  leak clues takes seconds; the first, tracing, execution is before it) to the last execution's end.
  Its metrics.json figure (ThroughputMeter: from the end of the first execution) is printed too.
- Model Garden: `official.core.train_lib.run_experiment(mode="train")`, orbit's Controller and Model
  Garden's Trainer, on the params `tfodtrain.experiment.build` makes from the same composed
  config (same task, model, data, optimizer, seed). Its trainer intervals are set to what the tfodtrain
  run does: loops of `--steps-per-loop` steps (default: memory.interval_steps, the tfodtrain run's most
  frequent host-side work; orbit fetches the loss, logs and writes summaries once per loop), summaries
  every trainer.log_every and checkpoints every trainer.checkpoint_every steps, no evaluation. Its
  first two loops are one step each: loop 1 traces, and orbit saves a checkpoint after a fresh run's
  first loop whatever the interval (tfodtrain does not). The rate is measured by an orbit train action
  from the first loop end at or past `--start-step` (and past loop 2) to the end of the last loop.

Both use the experiment with the default intervals of a real run (checkpoint_every, log_every,
memory.interval_steps from configs/; smoke's own are for tests), so with the default steps neither
window holds a checkpoint or an evaluation; both save their final checkpoint (and tfodtrain runs its
final COCO evaluation, `trainer.eval_steps=1` batch) after it.

Both are timed in wall-clock seconds and in CPU seconds of the process (all its threads). Other
people's jobs on a shared machine swing wall-clock rates by 2-3x within minutes; steps per CPU-second
hardly move, so `cpu_throughput_ratio` says whether one loop does more work per step than the other
(wall-clock alone cannot tell that apart from load), while `throughput_ratio` is what a user waits for.
Prints one line per run, the medians, `cpu_throughput_ratio=Y`, and last `throughput_ratio=X`: the
median tfodtrain steps/s over the median Model Garden steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULT_PREFIX = "BENCH_RESULT "


def common_overrides(args) -> list[str]:
    """Both trainers' config: the experiment with a real run's intervals (smoke's are for tests), no eval."""
    from tfodtrain.benchmarking import default_value

    intervals = [f"trainer.{key}={default_value('trainer', key)}" for key in ("checkpoint_every", "log_every")]
    intervals.append(f"memory.interval_steps={default_value('memory', 'interval_steps')}")
    return [f"+experiment={args.experiment}", *intervals, f"trainer.steps={args.steps}", "trainer.eval_every=0",
            "trainer.eval_steps=1", *args.overrides]


def child_env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


def run_tfodtrain(args, run_dir: Path) -> dict:
    clock = f"+callbacks.step_clock={{_target_:tfodtrain.callbacks.timing.StepClock,start_step:{args.start_step}}}"
    command = [sys.executable, "-m", "tfodtrain", *common_overrides(args), clock, f"hydra.run.dir={run_dir}"]
    wall = _run(command, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rates = json.loads((run_dir / "step_clock.json").read_text())
    rates.pop("marks")
    return {**rates, "metrics_steps_per_second": metrics["steps_per_second"], "steps": metrics["steps"],
            "wall_s": wall}


def run_model_garden(args, run_dir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child-model-garden", str(run_dir),
               "--experiment", args.experiment, "--steps", str(args.steps), "--start-step", str(args.start_step),
               "--steps-per-loop", str(args.steps_per_loop), "--", *args.overrides]
    wall = _run(command, run_dir)
    lines = [line for line in (run_dir / "stdout.txt").read_text().splitlines() if line.startswith(RESULT_PREFIX)]
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "wall_s": wall}


def _run(command: list[str], run_dir: Path) -> float:
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(run_dir / "stdout.txt", "w") as out, open(run_dir / "stderr.txt", "w") as err:
        code = subprocess.run(command, stdout=out, stderr=err, env=child_env(), cwd=REPO).returncode
    if code:
        tail = (run_dir / "stderr.txt").read_text()[-3000:]
        sys.exit(f"bench_throughput: {' '.join(command)} exited {code}:\n{tail}")
    return time.monotonic() - start


def child_model_garden(args) -> None:
    from tfodtrain.bench_model_garden import train_model_garden
    from tfodtrain.benchmarking import compose_run_config

    cfg = compose_run_config(common_overrides(args), run_dir=args.child_model_garden)
    result = train_model_garden(cfg, steps_per_loop=args.steps_per_loop, start_step=args.start_step)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main() -> None:
    from tfodtrain.benchmarking import default_value

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="ssd", help="tfodtrain experiment (default: ssd)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default: 2 + 4 loops of --steps-per-loop)")
    parser.add_argument("--pairs", type=int, default=3, help="tfodtrain/Model Garden pairs (default: 3)")
    parser.add_argument("--steps-per-loop", type=int, default=None,
                        help="Model Garden steps per train loop (default: memory.interval_steps, 10)")
    parser.add_argument("--start-step", type=int, default=None,
                        help="timing starts at the first execution/loop end at or past this step "
                             "(default: memory.interval_steps, after tfodtrain's first memory reading)")
    parser.add_argument("--keep", action="store_true", help="keep the run dirs (printed)")
    parser.add_argument("--child-model-garden", metavar="RUN_DIR", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both trainers (after --)")
    args = parser.parse_args()
    args.steps_per_loop = args.steps_per_loop or int(default_value("memory", "interval_steps"))
    args.start_step = args.start_step or int(default_value("memory", "interval_steps"))
    args.steps = args.steps or 2 + 4 * args.steps_per_loop
    if args.child_model_garden:
        child_model_garden(args)
        return
    if args.steps < max(args.start_step, 2) + 2 * args.steps_per_loop:
        parser.error(f"--steps must be at least --start-step + 2 loops ({max(args.start_step, 2) + 2 * args.steps_per_loop})")

    root = Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    print(f"bench_throughput: {args.experiment}, {args.steps} steps per run, {args.pairs} pairs, "
          f"Model Garden loops of {args.steps_per_loop} steps, overrides {args.overrides or 'none'}; runs in {root}",
          flush=True)
    results = {"tfodtrain": [], "model_garden": []}
    runners = {"tfodtrain": run_tfodtrain, "model_garden": run_model_garden}
    for pair in range(args.pairs):
        order = ["tfodtrain", "model_garden"] if pair % 2 == 0 else ["model_garden", "tfodtrain"]
        for name in order:
            result = runners[name](args, root / f"pair{pair}_{name}")
            results[name].append(result)
            extra = (f"; metrics.json {result['metrics_steps_per_second']:.4f}"
                     if "metrics_steps_per_second" in result else "")
            print(f"pair {pair + 1} {name:12s} {result['steps_per_second']:.4f} steps/s, "
                  f"{result['steps_per_cpu_second']:.4f} steps/CPU-s over steps {result['first_timed_step']}-"
                  f"{result['first_timed_step'] + result['timed_steps']} (run {result['wall_s']:.0f} s{extra})", flush=True)
    ratios = {}
    for key, label in (("steps_per_cpu_second", "steps per CPU-second"), ("steps_per_second", "steps/s")):
        ours = [r[key] for r in results["tfodtrain"]]
        theirs = [r[key] for r in results["model_garden"]]
        ratios[key] = statistics.median(ours) / statistics.median(theirs)
        pairs = ", ".join(f"{a / b:.3f}" for a, b in zip(ours, theirs))
        print(f"median {label}: tfodtrain {statistics.median(ours):.4f}, Model Garden {statistics.median(theirs):.4f}; "
              f"ratio {ratios[key]:.4f} (per pair {pairs})")
    if args.keep:
        print(f"run dirs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(f"cpu_throughput_ratio={ratios['steps_per_cpu_second']:.4f}")
    print(f"throughput_ratio={ratios['steps_per_second']:.4f}")


if __name__ == "__main__":
    main()
