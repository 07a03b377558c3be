"""Checks of a composed config before anything is built: one actionable line per mistake (exit 2).

Hydra composes what it is given; values typed on the command line are not type-checked, so every
setting that reaches TensorFlow is checked here first.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tfodtrain.exit_codes import UserError
from tfodtrain.paths import config_dir


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
    from tfodtrain.preflight import check_preflight_settings  # pre-flight, float64, bad-record and guard settings

    check_preflight_settings(cfg)
    from tfodtrain.use import check_use_settings  # warm start settings; imported late: use.py imports train.py

    check_use_settings(cfg)
