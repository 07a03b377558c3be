"""The entry: check the config, pick train / evaluate / export by `mode`, map the outcome to an exit code.

`__main__.py` (Hydra) calls `run(cfg)`; tests and the benchmarks call `execute(cfg)` for the result.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from tfodtrain import exit_codes
from tfodtrain.config_checks import check_config
from tfodtrain.exit_codes import TrainingStopped, UserError

log = logging.getLogger("tfodtrain")


def execute(cfg: DictConfig) -> dict:
    """Check `cfg`, then run its `mode`: train, eval or export; returns the mode's result."""
    check_config(cfg)
    if cfg.mode == "eval":
        from tfodtrain.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(cfg)
    if cfg.mode == "export":
        from tfodtrain.export import export_saved_model

        return export_saved_model(cfg)
    from tfodtrain.train import train

    return train(cfg)


def run(cfg: DictConfig) -> int:
    """`execute(cfg)` and its exit code (see tfodtrain.exit_codes)."""
    from tfodtrain.preemption import Preempted, stop_on_signals

    try:
        with stop_on_signals():  # SIGTERM / SIGINT outside fit: exit 143 / 130, no traceback
            execute(cfg)
    except UserError as error:
        print(f"tfodtrain: error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except (TrainingStopped, Preempted) as stop:
        log.warning("Training stopped: %s (exit %d)", stop, stop.exit_code)
        return stop.exit_code
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    return exit_codes.OK
