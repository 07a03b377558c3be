"""`python -m tfodtrain +experiment=NAME [overrides]`: the thin Hydra entry point.

Composition mistakes (an unknown experiment, a misspelt key) are caught here first, so the user gets
one line and exit code 2 instead of Hydra's multi-line report; then Hydra runs `entry.run` (or, with
`trainer.max_restarts>0`, the supervisor).
"""

from __future__ import annotations

import sys

from tfodtrain import exit_codes
from tfodtrain.paths import config_dir


def _composition_error(overrides: list[str], check_values: bool = True) -> str | None:
    """Compose the config as Hydra will; a one-line message if it cannot be composed, or (with
    `check_values`) if a value or the data is bad."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tfodtrain.config_checks import available_experiments

    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "experiment" and value and value not in available_experiments():
            return f"unknown experiment '{value}'; available: {', '.join(available_experiments())}"
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="check"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        text = str(error) or str(error.__cause__ or "") or type(error).__name__
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next((line for line in lines[1:] if "not in struct" in line or "Key" in line), "")
        message = lines[0] if lines else type(error).__name__
        if detail and detail not in message:
            message = f"{message} ({detail})"
        return f"{message}; check the spelling against the README's config reference (python -m tfodtrain --cfg job shows it)"
    if not check_values:
        return None
    from tfodtrain.config_checks import input_error  # config values and data records, before Hydra writes anything

    return input_error(cfg)


def _hydra_entry() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from tfodtrain.console import quiet_console

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def entry(cfg: DictConfig) -> None:
        quiet_console()  # Hydra has set up logging by now
        if cfg.trainer.get("max_restarts", 0) and not _is_child():
            from tfodtrain.supervise import supervise

            code = supervise(cfg)
        else:
            from tfodtrain.entry import run

            code = run(cfg)
            if code in (exit_codes.INTERRUPTED, exit_codes.TERMINATED):
                _exit_skipping_interpreter_shutdown(code)
        if HydraConfig.get().mode != RunMode.MULTIRUN:  # in a sweep, the next job's outcome is still open
            _ignore_late_signals()
        if code:
            sys.exit(code)

    entry()


def _exit_skipping_interpreter_shutdown(code: int) -> None:
    """Exit after a signal without Python's shutdown: the signal may have cut an import of a C extension
    (TensorFlow's, pyarrow's, scipy's) half-way, and finalizing that can abort the process instead of
    exiting with `code` (seen in drills: "Fatal Python error: PyThreadState_Get", SIGABRT for 130). The
    checkpoint, summaries and memory traces are written and closed by now; flush the rest."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _ignore_late_signals() -> None:
    """The outcome is decided and written: a SIGTERM / SIGINT during the ~1 s of TensorFlow's teardown
    has nothing left to stop and must not turn a finished run into a death by signal or exit 143."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _is_child() -> bool:
    import os

    return os.environ.get("TFODTRAIN_SUPERVISED") == "1"


def main() -> None:
    from tfodtrain.console import quiet_native_logs, relay_native_stderr
    from tfodtrain.preemption import Preempted, install_for_process

    if quiet_native_logs():  # before anything imports TensorFlow (TFODTRAIN_VERBOSE=1: everything)
        relay_native_stderr()  # TensorFlow's two native ERROR lines that are no error stay off the console
    install_for_process()  # SIGTERM / SIGINT: exit 143 / 130 from any phase, composition included
    try:
        _main()
    except Preempted as stop:
        print(f"tfodtrain: {stop}", file=sys.stderr)
        _exit_skipping_interpreter_shutdown(stop.exit_code)


def _main() -> None:
    from tfodtrain.supervise import enable_fault_log

    enable_fault_log()  # a supervised child: a crash's Python traceback goes to RUN_DIR/faults.log
    args = sys.argv[1:]
    takes_value = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                   "--config-dir", "-cd", "--info", "-i"}
    overrides, flags = [], []
    for previous, arg in zip([None] + args, args):
        if arg.startswith("-") or previous in takes_value:
            flags.append(arg)
        else:
            overrides.append(arg)
    sweeping = any(f in ("-m", "--multirun") for f in flags)
    # --cfg job / all / hydra prints the composed config, `???` where a value is still to be set: the
    # values are checked when a run starts, so a config with missing values can be shown.
    printing = any(f in ("--cfg", "-c") or f.startswith("--cfg=") for f in flags)
    if not sweeping and not any(f in ("-h", "--help", "--hydra-help", "--info") for f in flags):
        message = _composition_error(overrides, check_values=not printing)
        if message:
            print(f"tfodtrain: error: {message}", file=sys.stderr)
            sys.exit(exit_codes.BAD_INPUT)
    _hydra_entry()


if __name__ == "__main__":
    main()
