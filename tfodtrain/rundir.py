"""The files of a run dir, by name, and the one way JSON is written into it.

Every writer of these files goes through `write_json`: a reader (the report, the supervisor, a person
with `cat`) or a kill mid-write never sees half a file.

    RUN_DIR/
      config.yaml            the resolved config the run trains with (written once the pre-flight passed)
      run_info.json          versions, git commit, command line, host, data, distribution
      preflight.json         the float64 check, one step's peak memory per pool, skipped records
      metrics.json           final COCO metrics, steps/s, evaluations (a finished run)
      eval_<step>.json       mode=eval of a checkpoint
      abort_report.json      the leak guard's decision and evidence (an aborted run)
      memory_readings.jsonl  every memory reading; memory_trace_<pool>.csv the guard's input
      restarts.jsonl         one line per training process under the supervisor
      checkpoints/           ckpt-<step>.* (tfodtrain.checkpoint_files)
      tensorboard/           event files
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tfodtrain

CONFIG = "config.yaml"
RUN_INFO = "run_info.json"
PREFLIGHT = "preflight.json"
METRICS = "metrics.json"
ABORT_REPORT = "abort_report.json"
READINGS = "memory_readings.jsonl"
RESTARTS = "restarts.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


def eval_file(step: int) -> str:
    return f"eval_{int(step)}.json"


def write_json(path: str | os.PathLike, payload) -> None:
    """Write JSON atomically: a temp file beside `path`, then a rename.

    Example:
        >>> write_json(run_dir / METRICS, {"AP": 0.41})
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_info(cfg, data: dict, distribution: dict) -> dict:
    """The contents of run_info.json: what ran, where, with which versions."""
    return {"experiment": cfg.experiment_name, "seed": int(cfg.seed), "versions": _versions(),
            "git_commit": _git_commit(), "argv": sys.argv, "host": platform.node(),
            "data": {k: v for k, v in data.items() if k != "label_map"}, "distribution": distribution}


def _versions() -> dict:
    import tensorflow as tf

    versions = {"tfodtrain": tfodtrain.__version__, "tensorflow": tf.__version__, "python": platform.python_version()}
    for dist in ("tf-models-official", "tf_keras", "hydra-core"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _git_commit() -> str | None:
    source_root = Path(tfodtrain.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source_root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
