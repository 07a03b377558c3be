"""Measuring one training step of the run's own model, and undoing it.

`StepMemory` reads each pool's peak around a step; `TrainingState` saves and puts back every model and
optimizer variable; `StepTrials` runs one step at a batch size on a dataset of its own.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import logging
import resource
import time

from tfodtrain.preflight.search import Trial

log = logging.getLogger("tfodtrain")


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_host_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_host_memory() -> None:
    """Give the heap's free pages back (glibc), so RSS before a step is not inflated by an earlier one."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StepMemory:
    """Peak memory per pool of what runs between `start()` and `peaks()`.

    Example:
        >>> probe = StepMemory(["GPU:0"]); probe.start(); step(); probe.peaks()   # {'gpu0': ..., 'host': ...}
    """

    def __init__(self, tf_gpus: list[str]):
        self.tf_gpus = list(tf_gpus)
        self.host_reset = False
        self.before: dict[str, int] = {}

    def start(self) -> None:
        import tensorflow as tf

        _release_free_host_memory()
        for index, name in enumerate(self.tf_gpus):
            tf.config.experimental.reset_memory_stats(name)
            self.before[f"gpu{index}"] = int(tf.config.experimental.get_memory_info(name)["current"])
        self.before["host"] = _status_bytes("VmRSS") or 0
        self.host_reset = _reset_host_peak()

    def peaks(self) -> dict[str, int]:
        import tensorflow as tf

        peaks = {f"gpu{i}": int(tf.config.experimental.get_memory_info(name)["peak"])
                 for i, name in enumerate(self.tf_gpus)}
        hwm = _status_bytes("VmHWM") if self.host_reset else None
        peaks["host"] = hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # else: the process's peak
        return peaks


def _optimizer_variables(optimizer) -> list:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def create_optimizer_variables(trainer_model) -> None:
    """Create the optimizer's step counter, hyperparameters and slots now, as its first update would
    (in the model's distribution strategy). A resumed run's slots get their checkpointed values here:
    the checkpoint restores them as they are created."""
    optimizer = trainer_model.optimizer
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a loss-scale wrapper's own optimizer
    with trainer_model.distribute_strategy.scope():
        if hasattr(optimizer, "_create_all_weights"):  # tf_keras legacy optimizers (Model Garden's SGD)
            optimizer._create_all_weights(trainer_model.trainable_variables)
        elif hasattr(optimizer, "build"):
            optimizer.build(trainer_model.trainable_variables)


class TrainingState:
    """The values of the model's and optimizer's variables, to undo pre-flight steps.

    Example:
        >>> state = TrainingState(trainer_model, trainer_model.optimizer); trainer_model.fit(...); state.restore()
    """

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.saved = {id(v): (v, v.numpy()) for v in list(model.variables) + _optimizer_variables(optimizer)}

    def restore(self) -> None:
        created = []
        for v in list(self.model.variables) + _optimizer_variables(self.optimizer):
            saved = self.saved.get(id(v))
            if saved is None:
                created.append(v.name)
            else:
                v.assign(saved[1])
        if created:  # nothing should be: create_optimizer_variables made them before the snapshot
            log.warning("Pre-flight: %d variables created by the step keep their values (e.g. %s)", len(created), created[0])


class StepTrials:
    """One training step of the run's own Keras model (its traced `train_function`) at a batch size."""

    def __init__(self, trainer_model, task, train_data_params, prepare_dataset, tf_gpus: list[str]):
        self.model = trainer_model
        self.task = task
        self.train_data_params = train_data_params
        self.prepare_dataset = prepare_dataset
        self.probe = StepMemory(tf_gpus)
        self.datasets: dict[int, object] = {}

    def fresh_dataset(self, batch_size: int):
        """The training dataset at this batch size, built anew: an iterator of a seeded pipeline replays its
        order only once (a second iterator reshuffles), so steps here never iterate the run's own dataset."""
        params = copy.deepcopy(self.train_data_params)
        params.global_batch_size = int(batch_size)
        return self.prepare_dataset(self.task.build_inputs(params))

    def dataset(self, batch_size: int):
        if batch_size not in self.datasets:
            self.datasets[batch_size] = self.fresh_dataset(batch_size)
        return self.datasets[batch_size]

    def run(self, batch_size: int) -> Trial:
        import tensorflow as tf

        dataset = self.dataset(batch_size)
        self.probe.start()
        start = time.monotonic()
        try:
            self.model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
        except tf.errors.ResourceExhaustedError:
            return Trial(batch_size, None, round(time.monotonic() - start, 2))
        return Trial(batch_size, self.probe.peaks(), round(time.monotonic() - start, 2))


def prepare_train_dataset(cfg, dataset):
    """What the config does to the training dataset before the float64 check (the float64 demo switch)."""
    if cfg.data.get("float64_images", False):
        from tfodtrain.dtypes import images_as_float64

        return images_as_float64(dataset)
    return dataset


def dataset_preparer(cfg):
    """What a search step's dataset needs to match the training dataset (float64 demo switch, cast)."""
    from tfodtrain.dtypes import apply_float64_policy

    def prepare(dataset):
        found = apply_float64_policy(cfg.data.get("float64", "cast"), {"train": prepare_train_dataset(cfg, dataset)}, {},
                                     quiet=True)
        return found[0]["train"]

    return prepare
