"""A quiet console: the run's own lines, warnings and errors; the libraries' chatter stays out.

By default, before TensorFlow is imported, `TF_CPP_MIN_LOG_LEVEL=2` hides TensorFlow's C++ INFO and
WARNING lines (errors stay), and on the console INFO lines of other loggers than tfodtrain's (absl's
from Model Garden's builders: `round_filter`, `stochastic_depth_drop_rate`, ...) are dropped; Hydra's
log file (RUN_DIR/<job>.log) keeps them. Warnings and errors of every logger stay on the console.

`TFODTRAIN_VERBOSE=1` brings everything back. A `TF_CPP_MIN_LOG_LEVEL` of the user's own always wins.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "TFODTRAIN_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def quiet_native_logs() -> None:
    """Call before TensorFlow is imported (its C++ logging reads the variable once); child processes inherit it."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _OwnLinesOnly(logging.Filter):
    """Console filter: tfodtrain's lines at any level; other loggers' warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == "tfodtrain" or record.name.startswith("tfodtrain.")


def quiet_console() -> None:
    """Filter the root logger's console handlers (call after Hydra configured logging)."""
    if verbose():
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _OwnLinesOnly) for f in handler.filters):
                handler.addFilter(_OwnLinesOnly())
