"""Checks of a composed config before anything is built: one actionable line per mistake (exit 2).

Hydra composes what it is given; values typed on the command line are not type-checked, so every
setting that reaches TensorFlow is checked here first, all in this one module. It imports nothing above
it (no TensorFlow, no model code): the CLI runs these checks before Hydra starts the job.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tfodtrain.checkpoint_files import find_checkpoint
from tfodtrain.dtypes import MODES as FLOAT64_MODES
from tfodtrain.exit_codes import UserError
from tfodtrain.memory.policy import GuardSettings
from tfodtrain.paths import config_dir

INIT_MODULES = ("backbone", "decoder")  # what Model Garden's detection tasks restore besides "all"


def available_experiments() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def _number(cfg: DictConfig, key: str, kind=int, minimum=None, allow_none=False, hint=""):
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None:
        if allow_none:
            return None
        raise UserError(f"{key} must be set{hint}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise UserError(f"{key}={value!r} is not {'an integer' if kind is int else 'a number'}{hint}")
    if minimum is not None and value < minimum:
        raise UserError(f"{key}={value} must be at least {minimum}{hint}")
    return value


def _choice(cfg: DictConfig, key: str, choices) -> str:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of: {', '.join(str(c) for c in choices)}")
    return value


def check_config(cfg: DictConfig) -> None:
    """Raise UserError naming the first bad setting."""
    if cfg.get("experiment_name") is None:
        raise UserError("no experiment chosen: run python -m tfodtrain +experiment=NAME with NAME one of: "
                        + ", ".join(available_experiments()))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]} must be set (e.g. {missing[0]}=...); see the README's config reference")
    _choice(cfg, "mode", ("train", "eval", "export"))
    _number(cfg, "seed", int, 0)
    _number(cfg, "model.input_size", int, 32, hint=" (pixels, e.g. 320)")
    if cfg.model.input_size % 32:
        raise UserError(f"model.input_size={cfg.model.input_size} must be a multiple of 32 (e.g. 320, 640)")
    if cfg.trainer.batch_size != "auto":  # auto: the pre-flight check picks the largest that fits
        _number(cfg, "trainer.batch_size", int, 1, hint=" (or auto: the largest that fits in memory)")
    _number(cfg, "trainer.steps", int, 1)
    _number(cfg, "trainer.learning_rate", float, 0)
    _number(cfg, "trainer.momentum", float, 0)
    _number(cfg, "trainer.warmup_steps", int, 0)
    _number(cfg, "trainer.weight_decay", float, 0)
    _number(cfg, "trainer.checkpoint_every", int, 1)
    _number(cfg, "trainer.keep_checkpoints", int, 1)
    _number(cfg, "trainer.eval_every", int, 0)
    _number(cfg, "trainer.eval_batch_size", int, 1)
    _number(cfg, "trainer.eval_steps", int, 1, allow_none=True)
    _number(cfg, "trainer.log_every", int, 1)
    _number(cfg, "trainer.steps_per_execution", int, 1)
    _number(cfg, "trainer.shuffle_buffer", int, 1)
    _number(cfg, "trainer.max_restarts", int, 0)
    _number(cfg, "trainer.restart_backoff_s", float, 0)
    _choice(cfg, "trainer.strategy", ("auto", "default", "mirrored", "multi_worker"))
    _choice(cfg, "trainer.optimizer", ("sgd", "adam", "adamw"))
    _choice(cfg, "trainer.mixed_precision", (None, "mixed_float16", "mixed_bfloat16"))
    _number(cfg, "memory.interval_steps", int, 1)
    _number(cfg, "memory.interval_s", float, 0.5, hint=" (seconds between memory readings, e.g. 5)")
    _number(cfg, "memory.gpu_limit_mb", int, 1, allow_none=True)
    _number(cfg, "memory.budget_mb", float, 1, allow_none=True)
    _choice(cfg, "guard.mode", ("abort", "warn", "off"))
    _number(cfg, "data.num_classes", int, 2, hint=" (classes + 1 for the background)")
    if cfg.data.name == "shapes":
        _number(cfg, "data.num_train", int, 1)
        _number(cfg, "data.num_val", int, 1)
        _number(cfg, "data.image_size", int, 32)
    _check_preflight_and_data(cfg)
    _check_guard(cfg)
    _check_warm_start(cfg)


def _check_preflight_and_data(cfg: DictConfig) -> None:
    """Pre-flight, float64 and bad-record settings."""
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


def _check_guard(cfg: DictConfig) -> None:
    guard = cfg.get("guard") or {}
    settings = OmegaConf.to_container(guard.get("settings"), resolve=True) if guard.get("settings") else {}
    try:
        GuardSettings.from_mapping({**(settings or {}), "mode": guard.get("mode", "abort")})
    except (ValueError, TypeError) as error:
        raise UserError(f"guard.settings: {str(error).removeprefix('leak guard: ')}") from None


def _check_warm_start(cfg: DictConfig) -> None:
    """model.init_checkpoint_modules known, model.init_checkpoint there."""
    modules = cfg.model.get("init_checkpoint_modules", "all")
    names = [modules] if isinstance(modules, str) else list(modules or [])
    if names != ["all"] and (not names or any(name not in INIT_MODULES for name in names)):
        raise UserError(f"model.init_checkpoint_modules={modules} is not one of: all, backbone, decoder, "
                        "[backbone,decoder]")
    if cfg.model.get("init_checkpoint"):
        find_checkpoint(cfg.model.init_checkpoint, "model.init_checkpoint")


def check_inputs(cfg: DictConfig) -> None:
    """What the CLI checks before Hydra starts the job: the config, then the data files and records."""
    check_config(cfg)
    if cfg.data.name == "tfrecord":
        from tfodtrain.data.tfrecord import check_tfrecord_inputs

        check_tfrecord_inputs(cfg.data, masks=bool(cfg.model.get("masks", False)))


def input_error(composed_cfg: DictConfig) -> str | None:
    """The one-line message of `check_inputs` on a config composed with its `hydra` node, or None."""
    job_cfg = OmegaConf.masked_copy(composed_cfg, [k for k in composed_cfg.keys() if k not in ("hydra", "run_dir")])
    try:
        check_inputs(job_cfg)
    except UserError as error:
        return str(error)
    return None
