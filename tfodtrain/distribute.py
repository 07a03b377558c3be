"""Several GPUs and several hosts: the tf.distribute strategy, each worker's role, and agreed stops.

`trainer.strategy`:
    auto          MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else MirroredStrategy
                  when this host has several GPUs, else TensorFlow's default (one device)
    default       one device
    mirrored      MirroredStrategy over every GPU of this host
    multi_worker  MultiWorkerMirroredStrategy over the workers of TF_CONFIG (one process per host)

In one process (default, mirrored) the callbacks run once for all replicas, so the leak guard's decision
is already shared. With several workers every process runs its own callbacks: `WorkerAgreement`
(tfodtrain.callbacks.agreement) makes them agree once per step (one small all-reduce) on whether any
worker must stop or save; then all save together (a save reads synchronised variables through
collective ops, so every worker must take part) and all stop at the same step. The chief (worker 0, or the `chief` task) writes
RUN_DIR; worker i writes its logs and reports under RUN_DIR/worker-i and its checkpoint copies to a
scratch dir deleted after each save, as TensorFlow recommends; everyone restores from RUN_DIR/checkpoints
(a filesystem shared by the hosts).

`TFODTRAIN_LOGICAL_CPUS=N` splits the CPU into N logical devices, so mirrored runs can be tried (and
tested) on a machine without GPUs.

Example:
    >>> strategy = make_strategy("auto", tf.config.list_physical_devices("GPU"))   # before any TF op
    >>> describe(strategy)
    {'strategy': 'MirroredStrategy', 'replicas': 2, 'worker': 0, 'workers': 1, 'chief': True}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from tfodtrain.exit_codes import UserError

log = logging.getLogger(__name__)
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    index: int  # position among the cluster's tasks (chief first)
    count: int
    is_chief: bool


def worker_role(environ=os.environ) -> WorkerRole:
    """This process's role from TF_CONFIG; a lone process is the chief of one."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        return WorkerRole(0, 1, True)
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        chiefs = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not valid cluster JSON ({error}); see the README: several hosts") from None
    if kind == "chief":
        return WorkerRole(0, len(chiefs) + len(workers), True)
    if kind != "worker":
        raise UserError(f"TF_CONFIG task type {kind!r}: tfodtrain runs 'chief' and 'worker' tasks only")
    return WorkerRole(len(chiefs) + index, len(chiefs) + len(workers), not chiefs and index == 0)


def worker_run_dir(run_dir: Path, role: WorkerRole | None = None) -> Path:
    """RUN_DIR for the chief, RUN_DIR/worker-i for the other workers."""
    role = role or worker_role()
    return Path(run_dir) if role.is_chief else Path(run_dir) / f"worker-{role.index}"


def scratch_checkpoint_dir(run_dir: Path, role: WorkerRole | None = None) -> Path | None:
    """Where a non-chief worker writes its (discarded) checkpoint copies; None for the chief."""
    role = role or worker_role()
    return None if role.is_chief else worker_run_dir(run_dir, role) / "checkpoint-scratch"


def _logical_cpus(tf) -> list[str]:
    count = int(os.environ.get("TFODTRAIN_LOGICAL_CPUS", "0") or 0)
    if count < 2:
        return []
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return [f"/cpu:{i}" for i in range(count)]


def make_strategy(name: str, gpus: list):
    """The tf.distribute strategy for `trainer.strategy`; call it before TensorFlow runs any op."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UserError(f"trainer.strategy={name!r} is not one of: {', '.join(STRATEGIES)}")
    role = worker_role()
    cpus = _logical_cpus(tf)
    if name == "auto":
        name = "multi_worker" if role.count > 1 else "mirrored" if len(gpus) > 1 or cpus else "default"
    if name == "multi_worker":
        if role.count < 2:
            raise UserError("trainer.strategy=multi_worker needs TF_CONFIG naming two or more workers "
                            "(see the README: several hosts)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=None if gpus else cpus or None)
    return tf.distribute.get_strategy()


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and worker_role().count > 1


def describe(strategy) -> dict:
    """For run_info.json and the logs."""
    import tensorflow as tf

    role = worker_role()
    public = ("MultiWorkerMirroredStrategy", "MirroredStrategy")  # the first match: subclasses come first
    name = next((n for n in public if isinstance(strategy, getattr(tf.distribute, n))), "default")
    return {"strategy": name, "replicas": int(strategy.num_replicas_in_sync),
            "worker": role.index, "workers": role.count, "chief": role.is_chief}
