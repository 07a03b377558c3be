"""The fresh-process protocol of the CPU batch-size search.

Host RSS does not shrink after a step, so on the CPU each search step runs in a fresh process:
`python -m tfodtrain.preflight REQUEST.json` builds the run's model through `tfodtrain.experiment` (the
same build sequence as the run), measures its first step as the parent measured its own, and prints one
JSON line: {"batch_size": B, "growth": BYTES or null (out of memory), "seconds": S}.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from tfodtrain.preflight.search import SearchFailed, Trial
from tfodtrain.units import gib

log = logging.getLogger("tfodtrain")


class FreshProcessStep:
    """`run_step` of the CPU search: one training step at a batch size in a fresh process
    (`python -m tfodtrain.preflight REQUEST`) that builds the run's model and measures its first step as
    this process measured its own. The trial's host peak is `parent_before` (this process's RSS before its
    step) plus the fresh process's RSS growth during its step. Raises `SearchFailed` when the process fails."""

    def __init__(self, cfg, data: dict | None, parent_before: int, timeout_s: float = 1800):
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.data = data
        self.parent_before = int(parent_before)
        self.timeout_s = timeout_s

    def __call__(self, batch_size: int) -> Trial:
        with tempfile.TemporaryDirectory(prefix="tfodtrain-preflight-") as tmp:
            path = Path(tmp) / "request.json"
            path.write_text(json.dumps({"config": self.config, "data": self.data, "batch_size": int(batch_size)},
                                       default=str))
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
            try:
                done = subprocess.run([sys.executable, "-m", "tfodtrain.preflight", str(path)], capture_output=True,
                                      text=True, timeout=self.timeout_s, env=env)
            except subprocess.TimeoutExpired:
                raise SearchFailed(f"a step at batch size {batch_size} took over {self.timeout_s:.0f} s") from None
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            raise SearchFailed(f"the step at batch size {batch_size} exited {done.returncode}: {last}")
        result = json.loads(lines[-1])
        peaks = None if result["growth"] is None else {"host": self.parent_before + result["growth"]}
        trial = Trial(int(batch_size), peaks, result["seconds"])
        log.info("Pre-flight search: batch size %d %s", batch_size,
                 "ran out of memory" if peaks is None else f"peaks at {gib(peaks['host'])} (host)")
        return trial


def search_step_main(request_path: str) -> None:
    """The fresh process of `FreshProcessStep`: the run's model, one step, one JSON line out."""
    from tfodtrain import experiment
    from tfodtrain.preflight.step import StepTrials, create_optimizer_variables, dataset_preparer

    request = json.loads(Path(request_path).read_text())
    cfg = OmegaConf.create(request["config"])
    exp = experiment.build(cfg, request["data"]).build_trainer()  # the run's build sequence, default strategy
    create_optimizer_variables(exp.trainer_model)
    trials = StepTrials(exp.trainer_model, exp.task, exp.params.task.train_data, dataset_preparer(cfg), [])
    trial = trials.run(int(request["batch_size"]))
    growth = None if trial.peaks is None else trial.peaks["host"] - trials.probe.before["host"]
    print(json.dumps({"batch_size": trial.batch_size, "growth": growth, "seconds": trial.seconds}), flush=True)
