"""The command line's console: --cfg prints configs with missing values, and a quiet console by default."""

from __future__ import annotations

import logging

from helpers.cli import run_cli


def test_cfg_job_prints_the_config_with_missing_values_as_question_marks():
    result = run_cli(["+experiment=ssd", "data=tfrecord", "--cfg", "job"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "num_classes: ???" in result.stdout and "experiment_name: ssd" in result.stdout


def test_a_run_with_missing_values_still_stops_with_one_line():
    result = run_cli(["+experiment=ssd", "data=tfrecord"], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("tfodtrain: error: data.")


def _console_records(monkeypatch, verbose: str | None):
    from tfodtrain import console

    if verbose is None:
        monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    else:
        monkeypatch.setenv(console.VERBOSE_ENV, verbose)
    handler = logging.StreamHandler()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    console.quiet_console()
    records = [logging.LogRecord(name, level, __file__, 1, "x", None, None) for name, level in
               (("absl", logging.INFO), ("tfodtrain", logging.INFO), ("tfodtrain.callbacks.guard", logging.INFO),
                ("absl", logging.WARNING), ("tensorflow", logging.ERROR))]
    return [(r.name, r.levelno) for r in records if handler.filter(r)]


def test_console_shows_own_lines_and_every_warning_but_no_library_info(monkeypatch):
    assert _console_records(monkeypatch, None) == [("tfodtrain", logging.INFO), ("tfodtrain.callbacks.guard", logging.INFO),
                                                   ("absl", logging.WARNING), ("tensorflow", logging.ERROR)]


def test_verbose_switch_brings_everything_back(monkeypatch):
    assert len(_console_records(monkeypatch, "1")) == 5


def test_the_users_own_tf_cpp_min_log_level_wins(monkeypatch):
    from tfodtrain import console

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    console.quiet_native_logs()
    assert console.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    console.quiet_native_logs()
    assert console.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def _readme_commands(containing: str) -> list[str]:
    """Shell commands of the README's code blocks that contain `containing` (continuation lines joined)."""
    from helpers.repo import REPO

    commands, block, inside = [], [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            block.append(line.strip())
    joined = "\n".join(block).replace("\\\n", " ")
    for command in joined.splitlines():
        command = command.split("   #")[0].strip()
        if containing in command:
            commands.append(command)
    return commands


def test_the_readmes_config_checks_run():
    """Commands for SLURM and several hosts cannot run here: the README gives their --cfg check, which must."""
    import subprocess
    import sys

    from helpers.repo import REPO

    commands = _readme_commands("--cfg")
    assert len(commands) >= 3, commands
    for command in commands:
        done = subprocess.run(["bash", "-c", command.replace("python -m", f"{sys.executable} -m")], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert done.stdout.strip(), command


def test_the_readmes_replay_example_runs_on_the_sample_traces():
    import json
    import subprocess
    import sys

    from helpers.repo import REPO

    (command,) = _readme_commands("sample_traces/*.csv")
    done = subprocess.run(["bash", "-c", command.replace("python -m", f"{sys.executable} -m")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    labels = json.loads((REPO / "tests" / "data" / "sample_traces" / "labels.json").read_text())
    assert sorted(line["trace"] for line in lines) == sorted(labels)
