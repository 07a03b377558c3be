"""Replay recorded memory traces through the leak guard, as the training callback would have run it.

    python -m tfodtrain.memory.replay TRACE.csv [TRACE.csv ...] [--set key=value ...]

Prints one JSON object a line per file, in order::

    {"trace": "linear_leak.csv", "abort_step": 12340, "reason": "gpu0: memory grows ..."}

Rows are fed one at a time, in order, to ``MemoryGuard`` with the default ``GuardSettings``
(``--set`` overrides one setting, e.g. ``--set horizon_s=1200``); ``abort_step`` is the step of
the first row at which the guard decides to abort (``null`` if never). The pool is named after the
file: ``memory_trace_gpu0.csv`` is pool ``gpu0``, any other file its base name.

Bad input (a missing file, a wrong header, a value that is not a number, a bad ``--set``) prints
one line on stderr naming the file and row, and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable, Optional

from tfodtrain.memory.guard import MemoryGuard
from tfodtrain.memory.policy import GuardSettings
from tfodtrain.memory.traces import TraceFormatError, TraceRow, read_trace

BAD_INPUT = 2  # same as tfodtrain.exit_codes.BAD_INPUT


def pool_name(path: str) -> str:
    """``memory_trace_gpu0.csv`` -> ``gpu0``; ``linear_leak.csv`` -> ``linear_leak``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[len("memory_trace_"):] if stem.startswith("memory_trace_") and len(stem) > 13 else stem


def replay_rows(rows: Iterable[TraceRow], settings: Optional[GuardSettings] = None, pool: str = "gpu0") -> dict:
    """Feed rows to a fresh guard; return ``{"abort_step", "reason"}`` of the first abort."""
    result = replay_detail(rows, settings, pool)
    return {"abort_step": result["abort_step"], "reason": result["reason"]}


def replay_detail(rows: Iterable[TraceRow], settings: Optional[GuardSettings] = None, pool: str = "gpu0") -> dict:
    """``replay_rows`` plus what a run would have logged before: the warnings (each one an insurance
    checkpoint, at most every ``insurance_every_s``) and the first warning's step and time.
    """
    guard = MemoryGuard(settings or GuardSettings())
    warnings, first_warning, abort = 0, None, None
    for row in rows:
        decision = guard.observe(pool, row.step, row.time_s, row.used_bytes, row.limit_bytes)
        if decision.action == "warn":
            warnings += 1
            first_warning = first_warning or (row.step, row.time_s)
        elif decision.action == "abort":
            abort = (row.step, row.time_s, decision.reason)
            break
    return {"abort_step": abort[0] if abort else None, "abort_time_s": abort[1] if abort else None,
            "reason": abort[2] if abort else None, "warnings": warnings,
            "first_warning_step": first_warning[0] if first_warning else None,
            "first_warning_time_s": first_warning[1] if first_warning else None}


def replay_file(path: str, settings: Optional[GuardSettings] = None) -> dict:
    result = replay_rows(read_trace(path), settings, pool_name(path))
    return {"trace": os.path.basename(path), **result}


def _settings_from(overrides: list) -> GuardSettings:
    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got '{item}'")
        value = value.strip()
        if key.strip() in ("chunk_seconds", "fast_chunk_seconds"):
            values[key.strip()] = [part for part in value.strip("[]").split(",") if part.strip()]
        elif value.lower() in ("none", "null", ""):
            values[key.strip()] = None
        else:
            values[key.strip()] = value
    return GuardSettings.from_mapping(values)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfodtrain.memory.replay",
        description="Replay memory traces through the leak guard; one JSON line per trace.")
    parser.add_argument("traces", nargs="+", metavar="TRACE.csv")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one guard setting, e.g. --set horizon_s=1200 (repeatable)")
    args = parser.parse_args(argv)
    try:
        settings = _settings_from(args.overrides)
    except ValueError as error:
        print(f"replay: {error}", file=sys.stderr)
        return BAD_INPUT
    for path in args.traces:
        try:
            result = replay_file(path, settings)
        except FileNotFoundError:
            print(f"replay: {path}: no such file", file=sys.stderr)
            return BAD_INPUT
        except IsADirectoryError:
            print(f"replay: {path}: is a directory, expected a trace CSV", file=sys.stderr)
            return BAD_INPUT
        except (TraceFormatError, UnicodeDecodeError) as error:
            message = str(error) if isinstance(error, TraceFormatError) else f"{path}: not a text CSV file"
            print(f"replay: {message}", file=sys.stderr)
            return BAD_INPUT
        except OSError as error:
            print(f"replay: {path}: cannot read it ({error.strerror or error})", file=sys.stderr)
            return BAD_INPUT
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
