"""Using the trained detector: eval of a checkpoint, SavedModel export, predict, warm start.

Every test works on a copy of the shared smoke run (eval and export write into the run dir).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import compose_config, run_cli
from helpers.repo import REPO
from tfodtrain.callbacks.evaluation import REPORTED_METRICS

SHAPE_NAMES = {"rectangle", "ellipse", "triangle"}


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory) -> Path:
    """A private copy of the smoke run (the shared one stays read-only)."""
    copy = tmp_path_factory.mktemp("use") / "run"
    shutil.copytree(smoke_run, copy)
    return copy


@pytest.fixture(scope="module")
def evaluated(run_copy):
    """`mode=eval` through the CLI, as a user runs it."""
    return run_cli(["+experiment=smoke", "mode=eval"], run_dir=run_copy)


@pytest.fixture(scope="module")
def exported(run_copy) -> Path:
    """`mode=export` of the run copy (in-process: the CLI path is the same `entry.execute`)."""
    from tfodtrain.entry import execute

    execute(compose_config(["+experiment=smoke", "mode=export"], run_dir=run_copy))
    return run_copy / "export"


@pytest.fixture(scope="module")
def reference(smoke_run):
    """The smoke model with the weights of the smoke run's last checkpoint (restored through `model/`)."""
    from tfodtrain.checkpointing import restore_detector

    _, detector, params = _task_and_detector([], smoke_run)
    assert restore_detector(detector, params, str(smoke_run / "checkpoints" / "ckpt-6")) == 6
    return detector


@pytest.fixture(scope="module")
def val_images(run_copy) -> list[np.ndarray]:
    """Two shapes validation images, decoded from the run's validation TFRecords."""
    predict = _predict_script()
    pattern = json.loads((run_copy / "run_info.json").read_text())["data"]["val"]
    return [pixels for _, pixels in predict.read_tfrecord_images(pattern, 2)]


def _predict_script():
    spec = importlib.util.spec_from_file_location("predict_script", REPO / "scripts" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_tensors(prefix: Path) -> list:
    """(shape, digest) of every model variable in a checkpoint or a SavedModel's variables, sorted."""
    import hashlib

    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    # A training checkpoint also holds the optimizer and the step; each variable is stored once, under
    # its first path (backbone/..., head/..., model/...).
    return sorted((tuple(shape), hashlib.sha1(reader.get_tensor(key).tobytes()).hexdigest())
                  for key, shape in reader.get_variable_to_shape_map().items()
                  if key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and "OPTIMIZER_SLOT" not in key
                  and not key.startswith(("optimizer/", "global_step/", "save_counter/")))


def _one_line_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --------------------------------------------------------------------------------------------------
# mode=eval


@pytest.mark.slow
def test_eval_reproduces_the_metrics_training_reported(evaluated, run_copy, smoke_run):
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    trained = json.loads((run_copy / "metrics.json").read_text())
    result = json.loads((run_copy / f"eval_{trained['steps']}.json").read_text())
    assert result["step"] == trained["steps"] == 6
    assert Path(result["checkpoint"]).name == Path(trained["checkpoint"]).name == "ckpt-6"
    for name in REPORTED_METRICS:
        assert result[name] == pytest.approx(trained[name], abs=0.01), name
    # smoke keeps every box (pre_nms_score_threshold 0), so the metrics compared are not all zero
    assert max(result[name] for name in REPORTED_METRICS) > 0, result
    assert f"AP {result['AP']:.3f}" in evaluated.stdout + evaluated.stderr  # the console line
    assert not list(smoke_run.glob("eval_*.json"))  # the shared run was not written to


@pytest.mark.slow
def test_eval_writes_tensorboard_at_the_checkpoint_step(evaluated, run_copy):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    events = event_accumulator.EventAccumulator(str(run_copy / "tensorboard" / "checkpoint_eval"))
    events.Reload()
    ap = events.Tensors("eval/AP")
    result = json.loads((run_copy / "eval_6.json").read_text())
    assert [e.step for e in ap] == [6]
    assert float(tensor_util.make_ndarray(ap[0].tensor_proto)) == pytest.approx(result["AP"], abs=1e-6)


def test_eval_without_a_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    from tfodtrain.entry import run

    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    assert run(compose_config(["+experiment=smoke", "mode=eval"], run_dir=run_dir)) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "no checkpoint in" in line and "checkpoint=PATH" in line
    assert list(run_dir.iterdir()) == []  # nothing written


# --------------------------------------------------------------------------------------------------
# mode=export, predict


@pytest.mark.slow
def test_export_serves_uint8_images_with_plain_tensorflow(exported, run_copy, val_images):
    import tensorflow as tf

    info = json.loads((exported / "export_info.json").read_text())
    assert info["step"] == 6 and Path(info["checkpoint"]).name == "ckpt-6"
    assert set(json.loads((exported / "label_map.json").read_text()).values()) == SHAPE_NAMES

    # It holds exactly the checkpoint's model weights, not a fresh model's.
    served = _model_tensors(exported / "saved_model" / "variables" / "variables")
    assert len(served) > 300 and served == _model_tensors(run_copy / "checkpoints" / "ckpt-6")

    serve = tf.saved_model.load(str(exported / "saved_model")).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["inputs"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(inputs=tf.zeros([1, 64, 64, 3], tf.float32))

    tall = np.ascontiguousarray(np.concatenate([val_images[0], val_images[1]], axis=0))  # any size goes in
    for image in (val_images[0], tall):
        out = serve(inputs=tf.constant(image[None]))
        count = int(out["num_detections"][0])
        boxes = out["detection_boxes"][0, :count].numpy()
        scores = out["detection_scores"][0, :count].numpy()
        classes = out["detection_classes"][0, :count].numpy()
        assert out["detection_boxes"].dtype == tf.float32 and out["detection_boxes"].shape[1:] == (100, 4)
        assert count == 100  # smoke keeps every box (pre_nms_score_threshold 0)
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((scores > 0) & (scores <= 1)).all() and (np.diff(scores) <= 1e-6).all()
        assert set(classes.tolist()) <= {1, 2, 3}


@pytest.mark.slow
def test_predict_draws_labelled_boxes(exported, val_images, tmp_path):
    from PIL import Image

    predict = _predict_script()
    image_file = tmp_path / "val0.png"
    Image.fromarray(val_images[0]).save(image_file)
    out = tmp_path / "out"
    assert predict.main([str(exported), str(image_file), "--out", str(out), "--min-score", "0", "--max-boxes", "5"]) == 0
    detections = json.loads((out / "predictions.json").read_text())["images"][0]["detections"]
    assert len(detections) == 5 and {d["class_name"] for d in detections} <= SHAPE_NAMES
    assert all(0 <= v <= 1 for d in detections for v in d["box"])
    drawn = Image.open(out / "val0.png")
    assert drawn.size == (512, 512)  # 128 px enlarged 4x so the labels stay legible
    undrawn = predict.draw_detections(val_images[0], [])
    assert not np.array_equal(np.asarray(drawn), np.asarray(undrawn))  # the boxes are on it


def test_predict_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    from PIL import Image

    predict = _predict_script()
    image = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(image)
    (tmp_path / "not_an_image.png").write_text("hello")
    cases = [([str(tmp_path), str(tmp_path / "missing.png")], "does not exist"),
             ([str(tmp_path), str(tmp_path / "not_an_image.png")], "cannot be read as an image"),
             ([str(tmp_path / "nowhere"), str(image)], "neither a SavedModel"),
             ([str(tmp_path), str(image), "--min-score", "3"], "between 0 and 1"),
             ([str(tmp_path)], "no images")]
    for argv, message in cases:
        assert predict.main(argv) == 2, argv
        assert message in _one_line_error(capsys.readouterr().err), argv


# --------------------------------------------------------------------------------------------------
# Warm start (model.init_checkpoint)


def _task_and_detector(overrides, run_dir):
    from tfodtrain import experiment
    from tfodtrain.config_checks import check_config

    cfg = compose_config(["+experiment=smoke", *overrides], run_dir=run_dir)
    check_config(cfg)
    exp = experiment.build(cfg, experiment.resolve_data(cfg))
    return exp.task, exp.build_detector(), exp.params


def test_init_checkpoint_modules_reach_model_garden_as_it_reads_them(tmp_path):
    from tfodtrain.experiment import build_experiment

    for value, expected in (("[backbone,decoder]", ["backbone", "decoder"]), ("backbone", "backbone"), ("all", "all")):
        cfg = compose_config(["+experiment=smoke", f"model.init_checkpoint_modules={value}"], run_dir=tmp_path)
        params = build_experiment(cfg, {"train": "unused", "val": "unused", "num_classes": 4})
        assert params.task.init_checkpoint_modules == expected


@pytest.mark.slow
def test_warm_start_from_another_runs_checkpoint(smoke_run, reference, tmp_path):
    from tfodtrain.checkpointing import build_variables, warm_start

    task, detector, params = _task_and_detector([f"model.init_checkpoint={smoke_run}"], tmp_path)
    build_variables(detector, params.task.model.input_size)
    fresh = [w.numpy() for w in detector.weights]
    used = warm_start(task, detector)
    assert used == str(smoke_run / "checkpoints" / "ckpt-6")  # a run dir names its newest checkpoint
    assert len(detector.weights) == len(reference.weights)
    for mine, trained in zip(detector.weights, reference.weights):
        np.testing.assert_array_equal(mine.numpy(), trained.numpy(), err_msg=mine.name)
    assert any(not np.array_equal(before, w.numpy()) for before, w in zip(fresh, detector.weights))


@pytest.mark.slow
def test_warm_start_of_the_backbone_into_another_head(smoke_run, reference, tmp_path):
    from tfodtrain.checkpointing import warm_start

    task, detector, _ = _task_and_detector(["model.task_overrides.model.head.num_filters=16",
                                            f"model.init_checkpoint={smoke_run}",
                                            "model.init_checkpoint_modules=backbone"], tmp_path)
    warm_start(task, detector)
    assert len(detector.backbone.weights) == len(reference.backbone.weights)
    for mine, trained in zip(detector.backbone.weights, reference.backbone.weights):
        np.testing.assert_array_equal(mine.numpy(), trained.numpy(), err_msg=mine.name)


@pytest.mark.slow
def test_bad_init_checkpoint_is_one_line_exit_2_before_anything_is_written(smoke_run, tmp_path, capsys):
    from tfodtrain.entry import run

    cases = [([f"model.init_checkpoint={tmp_path / 'missing' / 'ckpt-5'}"], "does not exist"),
             ([f"model.init_checkpoint={tmp_path}"], "holds no checkpoint"),
             ([f"model.init_checkpoint={smoke_run}", "model.init_checkpoint_modules=head"], "is not one of"),
             # a model that does not fit: found after the model is built, still one line and exit 2
             ([f"model.init_checkpoint={smoke_run}", "model.task_overrides.model.head.num_filters=16"],
              "does not match this model (modules: all)")]
    for index, (overrides, message) in enumerate(cases):
        run_dir = tmp_path / f"run{index}"
        assert run(compose_config(["+experiment=smoke", *overrides], run_dir=run_dir)) == 2, overrides
        line = _one_line_error(capsys.readouterr().err)
        assert message in line, (overrides, line)
        assert not (run_dir / "checkpoints").exists()
        if "does not match" in message:
            assert "init_checkpoint_modules=backbone" in line  # the way out: take only the backbone
        else:
            assert not run_dir.exists()  # caught by check_config, before the run dir is made
