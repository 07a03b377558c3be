"""The foundation: configs compose, a smoke run trains, checkpoints, resumes, evaluates, and callbacks fire."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from helpers.cli import compose_config, run_cli
from helpers.repo import REPO
from tfodtrain.config_checks import available_experiments, check_config

EXPERIMENTS = ["ssd", "retinanet", "fasterrcnn", "maskrcnn", "maskrcnn_mobile", "smoke", "leak_demo"]


def test_all_experiments_exist():
    assert set(EXPERIMENTS) <= set(available_experiments())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_into_a_model_garden_config(name, tmp_path):
    from tfodtrain.experiment import build_experiment

    cfg = compose_config([f"+experiment={name}"], run_dir=tmp_path)
    check_config(cfg)
    data = {"train": "unused-train", "val": "unused-val", "num_classes": cfg.data.num_classes}
    params = build_experiment(cfg, data)
    model = params.task.model
    assert model.input_size == [cfg.model.input_size] * 2 + [3]
    assert model.num_classes == 4
    if name == "ssd":  # SSD MobileNetV2 FPNLite 320
        assert model.backbone.type == "mobilenet" and model.backbone.mobilenet.model_id == "MobileNetV2"
        assert (model.min_level, model.max_level) == (3, 6)
        assert model.decoder.type == "fpn" and model.decoder.fpn.use_separable_conv
        assert model.norm_activation.use_sync_bn is False and params.task.init_checkpoint is None
    if name == "retinanet":
        assert model.backbone.type == "resnet" and model.backbone.resnet.model_id == 50
        assert model.input_size == [640, 640, 3]
    if name in ("fasterrcnn", "maskrcnn"):  # two-stage ResNet-50 FPN over levels 2-6, from scratch
        assert model.backbone.type == "resnet" and model.backbone.resnet.model_id == 50
        assert (model.min_level, model.max_level) == (2, 6) and model.input_size == [640, 640, 3]
        assert params.task.init_checkpoint is None and model.norm_activation.use_sync_bn is False
        assert model.include_mask == (name == "maskrcnn") and (model.mask_head is None) == (name == "fasterrcnn")
    if name == "maskrcnn_mobile":
        assert model.backbone.type == "mobilenet" and model.include_mask and model.input_size == [128, 128, 3]


@pytest.mark.parametrize("overrides, message", [
    (["+experiment=maskrcnn", "model.input_size=288"], "model.input_size=288 must be a multiple of 64"),
    (["+experiment=retinanet", "model.input_size=320"], "must be a multiple of 128"),
    (["+experiment=ssd", "model.masks=true"], "model.masks=true needs a Mask R-CNN experiment"),
    (["+experiment=fasterrcnn", "model.masks=true"], "has no mask head"),
])
def test_model_settings_that_do_not_fit_the_model_are_one_line(overrides, message, tmp_path):
    from tfodtrain.exit_codes import UserError
    from tfodtrain.experiment import build_experiment

    cfg = compose_config(overrides, run_dir=tmp_path)
    check_config(cfg)
    with pytest.raises(UserError, match=message):
        build_experiment(cfg, {"train": "unused-train", "val": "unused-val", "num_classes": 4})


def test_learning_rate_warms_up_then_decays_to_zero_at_the_last_step(tmp_path):
    from official.modeling import optimization
    from tfodtrain.experiment import build_experiment

    cfg = compose_config(["+experiment=ssd", "trainer.steps=600", "trainer.warmup_steps=60",
                          "trainer.learning_rate=0.08"], run_dir=tmp_path)
    data = {"train": "unused-train", "val": "unused-val", "num_classes": cfg.data.num_classes}
    schedule = optimization.OptimizerFactory(build_experiment(cfg, data).trainer.optimizer_config).build_learning_rate()
    rate = {step: float(schedule(step)) for step in (0, 30, 60, 330, 540, 599, 600)}
    assert rate[0] == pytest.approx(0.008) and rate[30] == pytest.approx(0.044)  # linear from 10% of the peak
    assert rate[60] == pytest.approx(0.08) and rate[330] == pytest.approx(0.04)  # cosine from the end of warm-up
    assert rate[540] > 0.001 and 0 < rate[599] < 1e-5 and rate[600] == pytest.approx(0, abs=1e-9)


def test_import_tfodtrain_is_light():
    code = ("import sys, tfodtrain, tfodtrain.memory, tfodtrain.memory.probes, tfodtrain.memory.guard, "
            "tfodtrain.memory.replay, tfodtrain.exit_codes, tfodtrain.paths\n"
            "heavy = [m for m in ('tensorflow', 'hydra', 'omegaconf', 'tf_keras') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_no_experiment_lists_them(tmp_path):
    result = run_cli([], run_dir=tmp_path / "run")
    assert result.returncode == 2
    assert "+experiment=NAME" in result.stderr and "ssd" in result.stderr and "smoke" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_experiment_lists_the_available_ones(tmp_path):
    result = run_cli(["+experiment=ssdd"], run_dir=tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "unknown experiment 'ssdd'" in result.stderr and "retinanet" in result.stderr


@pytest.mark.slow
def test_smoke_run_writes_everything(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "steps", "train_seconds", "steps_per_second"):
        assert key in metrics, key
    assert metrics["steps"] == 6
    assert 0.0 <= metrics["AP50"] <= 1.0
    assert metrics["steps_per_second"] > 0
    assert sorted(p.name for p in (smoke_run / "checkpoints").glob("ckpt-*.index")) == ["ckpt-3.index", "ckpt-6.index"]
    info = json.loads((smoke_run / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["tensorflow"].startswith("2.20")
    assert info["versions"]["tf-models-official"] == "2.20.0" and info["versions"]["tfodtrain"]
    assert "git_commit" in info
    assert (smoke_run / "config.yaml").read_text().count("experiment_name: smoke") == 1
    assert list((smoke_run / "tensorboard").glob("events.out.tfevents.*"))
    assert any(smoke_run.glob("*.log"))


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint_and_cli_callbacks_fire(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    csv_path = tmp_path / "batches.csv"
    result = run_cli(["+experiment=smoke", "trainer.steps=8", "callbacks=[default,terminate_on_nan]",
                      f"+callbacks.csv={{_target_:tf_keras.callbacks.CSVLogger,filename:{csv_path}}}"],
                     run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Resuming from checkpoint" in log and "at step 6 of 8" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["resumed_from_step"] == 6 and metrics["steps_trained"] == 2
    assert (run_dir / "checkpoints" / "ckpt-8.index").exists()
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 and "loss" in rows[0]  # CSVLogger writes once per epoch (fit runs one)


def test_wheel_carries_the_configs(tmp_path):
    """Build the wheel, install it (no deps) into a venv that sees the installed packages, compose from it."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(wheel_dir), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheel_dir.glob("tfodtrain-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Appended after the venv's own site-packages: the installed wheel wins over the source checkout.
    (tmp_path / "venv" / "lib").mkdir(exist_ok=True)
    (__import__("pathlib").Path(site) / "zz_outer.pth").write_text(here + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              str(wheel)], capture_output=True, text=True)
    if install.returncode != 0:  # older pip without --python: install with the target's own pip-less path
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, str(wheel)],
                                 capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("import tfodtrain.paths as p; from hydra import compose, initialize_config_dir\n"
            "d = p.config_dir(); assert 'site-packages' in str(d), d\n"
            "with initialize_config_dir(config_dir=str(d), version_base='1.3'):\n"
            "    cfg = compose('config', overrides=['+experiment=ssd', 'run_dir=x'])\n"
            "print(d, cfg.experiment_name, cfg.model.input_size)")
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ssd 320")


NOISE = ("Input dict contained keys", "Gradients do not exist", "round_filter", "stochastic_depth_drop_rate",
         "cpu_feature_guard", "oneDNN custom operations")


@pytest.mark.slow
def test_smoke_run_console_starts_with_what_runs_and_has_no_library_chatter(smoke_run):
    console = (smoke_run.parent / "console.txt").read_text()
    for noise in NOISE:
        assert noise not in console, noise
    assert not [line for line in console.splitlines() if " I " in line[:40] and ".cc:" in line]  # TF C++ INFO
    for start in ("smoke: train mobilenet MobileNetV2 + fpn", "data: shapes", "devices: ", "run dir: ", "leak guard: "):
        assert start in console, start
    assert console.index("run dir: ") < console.index("Training smoke for 6 steps")
