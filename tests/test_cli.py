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


CUINIT_303 = ("2026-11-30 13:57:31.382069: E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51] "
              "failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
ONEDNN_INT32 = ("2026-11-30 13:58:15.720457: E tensorflow/core/util/util.cc:131] oneDNN supports DT_INT32 only on "
                "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.")
REAL_ERROR = "2026-11-30 13:58:16.000001: E tensorflow/core/framework/op_kernel.cc:1841] OP_REQUIRES failed"
# What a Mask R-CNN run printed (13:56-13:58 on 2026-11-30), the cost estimator's line shortened after the op
ONEDNN_BOOL = ("2026-11-30 13:57:54.272137: E tensorflow/core/util/util.cc:131] oneDNN supports DT_BOOL only on "
               "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.")
ABSL_PREFACE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ROI_CROP_COST = ('W0000 00:00:1796047049.010215   26984 op_level_cost_estimator.cc:699] Error in PredictCost() for '
                 'the op: op: "CropAndResize" attr { key: "T" value { type: DT_FLOAT } }')
OTHER_COST = ROI_CROP_COST.replace("CropAndResize", "MatMul")


def _relayed(text: bytes, nvidia_driver: bool) -> bytes:
    """`text` through console.relay, as the entry's relay process copies stderr."""
    import os

    from tfodtrain import console

    source_r, source_w = os.pipe()
    sink_r, sink_w = os.pipe()
    os.write(source_w, text)
    os.close(source_w)
    console.relay(source_r, sink_w, console.native_noise(nvidia_driver), wait_s=0.01)
    os.close(sink_w)
    out = os.read(sink_r, 1 << 20)
    os.close(source_r)
    os.close(sink_r)
    return out


def test_the_relay_drops_only_the_two_native_lines_that_are_no_error():
    text = "\n".join(["Traceback (most recent call last):", CUINIT_303, REAL_ERROR, ONEDNN_INT32,
                     CUINIT_303.replace("(303)", "(999)"), "no end of line"]).encode()
    kept = _relayed(text, nvidia_driver=False).decode().splitlines()
    assert kept == ["Traceback (most recent call last):", REAL_ERROR, CUINIT_303.replace("(303)", "(999)"),
                    "no end of line"]
    # With an NVIDIA driver installed, a failed cuInit is a real problem: it stays.
    assert CUINIT_303 in _relayed(text, nvidia_driver=True).decode().splitlines()


def test_the_relay_drops_a_two_stage_detectors_false_alarms_only():
    """Faster/Mask R-CNN: oneDNN's DT_BOOL fallback and the cost estimator on ROI crops go; the same
    estimator's line on another op stays (it was not looked into)."""
    text = ("\n".join([ABSL_PREFACE, ROI_CROP_COST, ONEDNN_BOOL, OTHER_COST, REAL_ERROR, ROI_CROP_COST]) + "\n").encode()
    for driver in (False, True):
        assert _relayed(text, nvidia_driver=driver).decode().splitlines() == [OTHER_COST, REAL_ERROR]


def _entry_like(code: str, env: dict | None = None):
    """A process that starts like the entry (quiet_native_logs, then the relay) and runs `code`."""
    import os
    import subprocess
    import sys

    prologue = ("import os, signal\nfrom tfodtrain.console import quiet_native_logs, relay_native_stderr\n"
                "if quiet_native_logs():\n    relay_native_stderr()\n")
    full_env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFODTRAIN_VERBOSE")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", prologue + code], capture_output=True, text=True, timeout=60,
                          env=full_env)


def test_the_entrys_stderr_leaves_out_the_noise_and_keeps_a_killed_processs_last_words():
    import os

    # What TensorFlow's C++ logging writes goes to fd 2 directly, as here; SIGKILL: no atexit, no flush.
    code = (f"os.write(2, {CUINIT_303!r}.encode() + b'\\n')\nos.write(2, {ONEDNN_INT32!r}.encode() + b'\\n')\n"
            "os.write(2, b'last words\\n')\nos.kill(os.getpid(), signal.SIGKILL)\n")
    done = _entry_like(code)
    assert done.returncode == -9
    driver = os.path.exists("/proc/driver/nvidia/version")  # then a failed cuInit stays
    assert done.stderr.splitlines() == [CUINIT_303] * driver + ["last words"]
    verbose = _entry_like(code, {"TFODTRAIN_VERBOSE": "1"})
    users_own = _entry_like(code, {"TF_CPP_MIN_LOG_LEVEL": "1"})
    assert verbose.stderr.splitlines() == users_own.stderr.splitlines() == [CUINIT_303, ONEDNN_INT32, "last words"]


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
