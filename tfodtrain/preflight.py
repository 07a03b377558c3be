"""Pre-flight: before training, does one step fit in memory, and are the inputs sound?

Memory (`trainer.preflight`, default true). After the model, optimizer and input pipeline are built and
before `fit`, train.py hands them to `before_fit`, which runs ONE real training step and measures its
peak against each pool's limit:

    gpuN   the allocator's peak during the step (`tf.config.experimental.get_memory_info`, after
           `reset_memory_stats`), against `memory.gpu_limit_mb`, else what the card leaves this process
    host   the process's peak RSS during the step (Linux `VmHWM`, reset through /proc/self/clear_refs),
           against the cgroup limit, else physical memory

`memory.budget_mb` lowers every limit; `trainer.preflight_headroom` (10%) of each limit is kept free for
what grows after the first step. If the step does not fit, the run stops (exit 2) before any training
step counts, naming how much the step needs and the largest batch size that fits; with
`trainer.batch_size=auto` that batch size is used (like Lightning's BatchSizeFinder).

The step changes nothing: the optimizer's variables (step, hyperparameters, slots) are created first, as
its first update would (a resumed run's slots get their checkpointed values then), every model and
optimizer variable is saved, and all are put back after the step. The step reads a dataset of its own,
built like the run's, which stays unread (a second iterator of a seeded pipeline would reshuffle). Its
cost is one step: Keras keeps the traced training function (same input signature), so `fit` does not
trace it again.

The search for the batch size that fits takes at most `MAX_SEARCH_STEPS` more steps: a line through
the measured peaks (peak = fixed + per-example x batch size) proposes a batch size, a step checks it,
and the answer is the largest batch size a step was measured to fit (4% below the target, for noise).
On a GPU the steps run in this process (the allocator's peak is reset before each). Host RSS does not
shrink after a step (freed memory, a retraced function for the new batch shape stay with the process),
so on the CPU each search step runs in a fresh process (`python -m tfodtrain.preflight`, while this one
waits, so the host briefly holds both) that builds the same model and runs its first step, exactly as
this process measured its own: its RSS growth during the step, added to this process's RSS before its
step, is the trial's peak.

Inputs: `check_inputs(cfg)` is what the CLI runs before Hydra starts the job (nothing written yet):
the config checks and, for `data=tfrecord`, the record scan (`tfodtrain.data.validate`).

Example:
    python -m tfodtrain +experiment=smoke memory.budget_mb=1200     # exit 2: "... the largest batch size that fits is 1"
    python -m tfodtrain +experiment=ssd trainer.batch_size=auto
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import gc
import json
import logging
import math
import os
import resource
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from tfodtrain.exit_codes import UserError

log = logging.getLogger("tfodtrain")
MIB = 1 << 20
MAX_SEARCH_STEPS = 3  # steps after the first one, at most, to find the largest batch size that fits
NOISE_MARGIN = 0.04  # share of a limit a found batch size stays below, for run-to-run noise (seen: 2% on CPU)
PROVISIONAL_AUTO_BATCH = 2  # trainer.batch_size=auto: the first step's batch size


class SearchFailed(Exception):
    """A search step's fresh process failed; the message says how."""


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


# --------------------------------------------------------------------------------------------------
# Settings and inputs, checked before anything is built


def check_preflight_settings(cfg) -> None:
    """One line for a bad pre-flight, float64, bad-record or guard setting (called by check_config)."""
    from tfodtrain.dtypes import MODES as FLOAT64_MODES
    from tfodtrain.memory.policy import GuardSettings

    trainer, data = cfg.trainer, cfg.data
    for key, value in (("trainer.preflight", trainer.get("preflight", True)),
                       ("data.float64_images", data.get("float64_images", False))):
        if not isinstance(value, bool):
            raise UserError(f"{key}={value!r} must be true or false")
    headroom = trainer.get("preflight_headroom", 0.1)
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float)) or not 0 <= headroom < 0.9:
        raise UserError(f"trainer.preflight_headroom={headroom!r} must be a share of the limit in [0, 0.9), e.g. 0.1")
    auto_max = trainer.get("auto_batch_max", 64)
    if isinstance(auto_max, bool) or not isinstance(auto_max, int) or auto_max < 1:
        raise UserError(f"trainer.auto_batch_max={auto_max!r} must be an integer of at least 1")
    if trainer.batch_size == "auto" and not trainer.get("preflight", True):
        raise UserError("trainer.batch_size=auto needs trainer.preflight=true (the pre-flight step finds the size)")
    if data.get("float64", "cast") not in FLOAT64_MODES:
        raise UserError(f"data.float64={data.get('float64')!r} is not one of: {', '.join(FLOAT64_MODES)}")
    if data.get("bad_records", "error") not in ("error", "skip"):
        raise UserError(f"data.bad_records={data.get('bad_records')!r} is not one of: error, skip")
    check_records = data.get("check_records", None)
    if check_records is not None and (isinstance(check_records, bool) or not isinstance(check_records, int)
                                      or check_records < 0):
        raise UserError(f"data.check_records={check_records!r} must be a count of records (0: no scan) or null (all)")
    guard = cfg.get("guard") or {}
    settings = OmegaConf.to_container(guard.get("settings"), resolve=True) if guard.get("settings") else {}
    try:
        GuardSettings.from_mapping({**(settings or {}), "mode": guard.get("mode", "abort")})
    except (ValueError, TypeError) as error:
        raise UserError(f"guard.settings: {str(error).removeprefix('leak guard: ')}") from None


def check_inputs(cfg) -> None:
    """What the CLI checks before Hydra starts the job: the config, then the data files and records."""
    from tfodtrain.config_checks import check_config

    check_config(cfg)
    if cfg.data.name == "tfrecord":
        from tfodtrain.data.tfrecord import check_tfrecord_inputs

        check_tfrecord_inputs(cfg.data)


# --------------------------------------------------------------------------------------------------
# Measuring one step


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


@dataclasses.dataclass
class Trial:
    batch_size: int
    peaks: dict | None  # pool -> peak bytes; None: the step ran out of memory
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PoolLimit:
    pool: str
    limit_bytes: int
    source: str  # what set it, for the message

    def target(self, headroom: float) -> int:
        return int(self.limit_bytes * (1 - headroom))


def pool_limits(memory_cfg, gpu_count: int) -> dict[str, PoolLimit]:
    """Each pool's limit, as the monitor and the guard use it (tfodtrain.memory.probes), capped by the budget."""
    from tfodtrain.memory import probes

    host_probe, nvml_probe = probes.default_probes()
    host = host_probe.read()
    limits = {"host": PoolLimit("host", probes.host_limit_bytes(host),
                                "the cgroup limit" if host.cgroup_limit_bytes is not None else "physical memory")}
    cards = {g.pool: g for g in nvml_probe.read() if g.ok} if gpu_count else {}
    for index in range(gpu_count):
        pool = f"gpu{index}"
        if memory_cfg.gpu_limit_mb:
            limits[pool] = PoolLimit(pool, int(memory_cfg.gpu_limit_mb * MIB), "memory.gpu_limit_mb")
        elif pool in cards and probes.gpu_limit_bytes(cards[pool]) is not None:
            limits[pool] = PoolLimit(pool, probes.gpu_limit_bytes(cards[pool]), "what the card leaves this process")
    if memory_cfg.budget_mb:
        budget = int(memory_cfg.budget_mb * MIB)
        for pool in [f"gpu{i}" for i in range(gpu_count)] + ["host"]:
            if pool not in limits or budget < limits[pool].limit_bytes:
                limits[pool] = PoolLimit(pool, budget, "memory.budget_mb")
    return limits


# --------------------------------------------------------------------------------------------------
# Running steps of the run's own model, and undoing them


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


# --------------------------------------------------------------------------------------------------
# The search for the largest batch size that fits


def _fits(trial: Trial, targets: dict[str, int]) -> bool:
    return trial.peaks is not None and all(trial.peaks.get(p, 0) <= t for p, t in targets.items())


def _line(trials: list[Trial], pool: str):
    """(fixed, per_example) bytes of a least-squares line through the measured peaks of `pool`."""
    points = [(t.batch_size, t.peaks[pool]) for t in trials if t.peaks is not None and pool in t.peaks]
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / sum((b - mean_b) ** 2 for b, _ in points)
    return mean_p - slope * mean_b, slope


def largest_fitting(trials: list[Trial], run_step, targets: dict[str, int], upper: int,
                    max_steps: int = MAX_SEARCH_STEPS) -> int | None:
    """The largest batch size in 1..upper whose measured step fits all `targets`, after at most
    `max_steps` more steps (`run_step(batch_size) -> Trial`); None when even batch size 1 does not fit.

    Each proposal is the batch size where the line through the peaks reaches the binding pool's target
    (halving, as Hugging Face's auto batch size does, or growing 4x, while there is no line yet).
    """
    trials = list(trials)
    for _ in range(max_steps):
        fitting = [t.batch_size for t in trials if _fits(t, targets)]
        failing = [t.batch_size for t in trials if not _fits(t, targets)]
        lo = max(fitting, default=0)
        hi = min([b for b in failing if b > lo], default=upper + 1)
        if hi - lo <= 1:
            break
        proposal = None
        over = [t for t in trials if t.peaks is not None and not _fits(t, targets)]
        pools = [max(targets, key=lambda p: over[0].peaks.get(p, 0) / targets[p])] if over else list(targets)
        for pool in pools:
            line = _line(trials, pool)
            if line is not None and line[1] > 0:
                candidate = math.floor((targets[pool] - line[0]) / line[1])
                proposal = candidate if proposal is None else min(proposal, candidate)
        if proposal is None:
            proposal = min(lo * 4, upper) if lo else max(1, hi // 2)
        proposal = max(lo + 1, min(hi - 1, proposal))
        trials.append(run_step(proposal))
    best = max((t.batch_size for t in trials if _fits(t, targets)), default=None)
    return best


# --------------------------------------------------------------------------------------------------
# The hooks train.py calls


def take_auto_batch_size(cfg) -> bool:
    """`trainer.batch_size=auto`: put a provisional size in the config (the pre-flight replaces it);
    a resumed run keeps the size it was trained with (its run dir's config.yaml). True when searching."""
    if cfg.trainer.batch_size != "auto":
        return False
    previous = Path(cfg.run_dir) / "config.yaml"
    size = PROVISIONAL_AUTO_BATCH
    searching = True
    if previous.exists() and any((Path(cfg.run_dir) / "checkpoints").glob("ckpt-*.index")):
        recorded = OmegaConf.load(previous).trainer.get("batch_size")
        if isinstance(recorded, int) and recorded > 0:
            size, searching = recorded, False
            log.info("trainer.batch_size=auto: resuming with batch size %d, found by the first run", size)
    with open_dict(cfg):
        cfg.trainer.batch_size = size
    return searching


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


def before_fit(cfg, params, trainer_model, train_ds, val_ds, gpus, auto_batch: bool = False, data: dict | None = None):
    """float64 check, then the memory pre-flight (one real step, undone); returns (train_ds, val_ds).

    Called before the run dir's config.yaml is written: a UserError here (float64 with data.float64=error,
    a step that does not fit) leaves an existing run dir as it was. With `auto_batch` the batch size found
    is put in `cfg` and `params`, so config.yaml records it. Writes `preflight.json` to the run dir.
    """
    from tfodtrain.dtypes import apply_float64_policy

    run_dir = Path(cfg.run_dir)
    float64_mode = cfg.data.get("float64", "cast")
    train_ds = prepare_train_dataset(cfg, train_ds)
    batch_sizes = {"train": int(cfg.trainer.batch_size), "val": int(cfg.trainer.eval_batch_size)}
    datasets, float64_report = apply_float64_policy(float64_mode, {"train": train_ds, "val": val_ds}, batch_sizes,
                                                    trainer_model.detector)
    train_ds, val_ds = datasets["train"], datasets["val"]
    report = {"float64": float64_report, "memory": None, "bad_records": (data or {}).get("bad_records")}
    if cfg.trainer.get("preflight", True):
        trials = StepTrials(trainer_model, trainer_model.task, params.task.train_data, dataset_preparer(cfg),
                            [f"GPU:{i}" for i in range(len(gpus))])
        report["memory"], chosen = check_memory(cfg, trials, len(gpus), auto_batch, data)
        if chosen is not None and chosen != int(cfg.trainer.batch_size):
            with open_dict(cfg):
                cfg.trainer.batch_size = chosen
            params.task.train_data.global_batch_size = chosen
            train_ds = trials.fresh_dataset(chosen)
    _write_report(run_dir / "preflight.json", report)
    _log_skipped_records(run_dir, report["bad_records"])
    return train_ds, val_ds


def _log_skipped_records(run_dir: Path, skipped: dict | None) -> None:
    """TensorBoard scalars data/skipped_records/<split> (data.bad_records=skip), at step 0."""
    if not skipped or not any(skipped.values()):
        return
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default(step=0):
        for split, count in skipped.items():
            tf.summary.scalar(f"data/skipped_records/{split}", count)
    writer.close()


def _write_report(path: Path, report: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def check_memory(cfg, trials: StepTrials, gpu_count: int, auto_batch: bool, data: dict | None = None):
    """Run the pre-flight step (and the search when needed); returns (report, batch size to use or None)."""
    headroom = float(cfg.trainer.get("preflight_headroom", 0.1))
    limits = pool_limits(cfg.memory, gpu_count)
    targets = {p: l.target(headroom) for p, l in limits.items()}
    search_targets = {p: int(l.limit_bytes * (1 - headroom - NOISE_MARGIN)) for p, l in limits.items()}
    batch_size = int(cfg.trainer.batch_size)
    create_optimizer_variables(trials.model)
    state = TrainingState(trials.model, trials.model.optimizer)
    started = time.monotonic()
    found, search_failed = None, False
    try:
        first = trials.run(batch_size)
        if auto_batch or not _fits(first, targets):
            # GPU allocator peaks are exact in this process; host RSS needs a fresh process per step
            run_step = trials.run if gpu_count else FreshProcessStep(cfg, data, trials.probe.before.get("host", 0))
            if auto_batch:
                upper = int(cfg.trainer.get("auto_batch_max", 64))
            else:
                log.warning("Pre-flight: one step at batch size %d does not fit; searching the largest that does",
                            batch_size)
                upper = batch_size - 1
            found = largest_fitting([first], run_step, search_targets, upper)
    except SearchFailed as error:
        log.warning("Pre-flight: the batch size search failed: %s", error)
        found, search_failed = None, True
    finally:
        state.restore()
    seconds = round(time.monotonic() - started, 2)
    report = {"batch_size": batch_size, "peaks": first.peaks, "seconds": seconds,
              "limits": {p: dataclasses.asdict(l) for p, l in limits.items()}, "headroom": headroom,
              "fits": _fits(first, targets), "auto": auto_batch, "largest_fitting_batch_size": found}
    if auto_batch:
        if found is None:
            raise UserError(_does_not_fit(first, limits, targets, None, search_failed)
                            + "; trainer.batch_size=auto found no size that fits")
        log.info("Pre-flight: trainer.batch_size=auto chose %d (the largest that fits; %s)", found,
                 _describe(first, limits))
        return report, found
    if not _fits(first, targets):
        raise UserError(_does_not_fit(first, limits, targets, found, search_failed))
    log.info("Pre-flight: one step at batch size %d fits: %s (%.1f s)", batch_size, _describe(first, limits), seconds)
    return report, None


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
        import subprocess
        import sys
        import tempfile

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
                 "ran out of memory" if peaks is None else f"peaks at {_gib(peaks['host'])} (host)")
        return trial


def _search_step_main(request_path: str) -> None:
    """The fresh process of `FreshProcessStep`: the run's model, one step, one JSON line out."""
    import tf_keras
    from official.core import task_factory

    from tfodtrain.train import build_experiment, configure_devices, make_trainer_model

    request = json.loads(Path(request_path).read_text())
    cfg = OmegaConf.create(request["config"])
    tf_keras.utils.set_random_seed(int(cfg.seed))
    configure_devices(cfg.memory)
    params = build_experiment(cfg, request["data"])
    if cfg.trainer.mixed_precision:
        tf_keras.mixed_precision.set_global_policy(cfg.trainer.mixed_precision)
    task = task_factory.get_task(params.task)
    detector = task.build_model()
    optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
    model = make_trainer_model(task, detector)
    model.compile(optimizer=optimizer, jit_compile=bool(cfg.trainer.jit_compile))
    create_optimizer_variables(model)
    trials = StepTrials(model, task, params.task.train_data, dataset_preparer(cfg), [])
    trial = trials.run(int(request["batch_size"]))
    growth = None if trial.peaks is None else trial.peaks["host"] - trials.probe.before["host"]
    print(json.dumps({"batch_size": trial.batch_size, "growth": growth, "seconds": trial.seconds}), flush=True)


def _describe(trial: Trial, limits: dict[str, PoolLimit]) -> str:
    if trial.peaks is None:
        return "out of memory"
    return ", ".join(f"{p} peak {_gib(trial.peaks[p])} of {_gib(l.limit_bytes)}" for p, l in limits.items()
                     if p in trial.peaks)


def _does_not_fit(first: Trial, limits: dict[str, PoolLimit], targets: dict[str, int], found: int | None,
                  search_failed: bool = False) -> str:
    if first.peaks is None:
        need = f"one training step at batch size {first.batch_size} ran out of GPU memory"
    else:
        pool = max(targets, key=lambda p: first.peaks.get(p, 0) / targets[p])
        limit = limits[pool]
        need = (f"one training step at batch size {first.batch_size} needs {_gib(first.peaks[pool])} of {pool} memory "
                f"(its peak), more than {_gib(targets[pool])} ({100 * targets[pool] / limit.limit_bytes:.0f}% of the "
                f"{_gib(limit.limit_bytes)} limit set by {limit.source})")
    if search_failed:
        return need + "; the search for a batch size that fits failed (its log lines are above): lower trainer.batch_size"
    if found is None:
        return (need + "; even batch size 1 does not fit: raise the limit (memory.budget_mb, memory.gpu_limit_mb), "
                       "lower model.input_size, or use a smaller model")
    return (need + f"; the largest batch size that fits is {found}: run with trainer.batch_size={found} "
                   "(or trainer.batch_size=auto), or raise the limit")


def input_error(composed_cfg) -> str | None:
    """The one-line message of `check_inputs` on a config composed with its `hydra` node, or None."""
    job_cfg = OmegaConf.masked_copy(composed_cfg, [k for k in composed_cfg.keys() if k not in ("hydra", "run_dir")])
    try:
        check_inputs(job_cfg)
    except UserError as error:
        return str(error)
    return None


if __name__ == "__main__":
    import sys

    _search_step_main(sys.argv[1])
