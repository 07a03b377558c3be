"""Two-stage detectors (Faster / Mask R-CNN from Model Garden) through the product's one code path.

One tiny Mask R-CNN run (maskrcnn_mobile at 128 px, 2 steps; the pre-flight is off to keep it short: the
pre-flight of both models is measured in docs/benchmarks.md) is shared by every slow test here: its
metrics (box and mask AP), its TensorBoard scalars, its export (loaded with plain TensorFlow), predict's
drawing of masks, and warm starts of a Mask R-CNN and a Faster R-CNN from its checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import compose_config, run_cli
from helpers.repo import REPO
from tfodtrain.callbacks.evaluation import MASK_METRICS

TINY = ["+experiment=maskrcnn_mobile", "model.input_size=128", "trainer.steps=2", "trainer.batch_size=2",
        "trainer.warmup_steps=1", "trainer.eval_steps=1", "trainer.eval_batch_size=2", "trainer.eval_every=0",
        "trainer.checkpoint_every=2", "trainer.preflight=false", "data.num_train=8", "data.num_val=4"]


def _predict_script():
    spec = importlib.util.spec_from_file_location("predict_script", REPO / "scripts" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def maskrcnn_run(tmp_path_factory, data_cache) -> Path:
    """A finished tiny Mask R-CNN run dir (trained once for this module, through the CLI)."""
    run_dir = tmp_path_factory.mktemp("maskrcnn") / "run"
    result = run_cli(TINY, run_dir=run_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def maskrcnn_export(maskrcnn_run) -> Path:
    """`mode=export` of the tiny run (in-process: the CLI path is the same `entry.execute`)."""
    from tfodtrain.entry import execute

    execute(compose_config([*TINY, "mode=export"], run_dir=maskrcnn_run))
    return maskrcnn_run / "export"


@pytest.fixture(scope="module")
def val_image(maskrcnn_run) -> np.ndarray:
    pattern = json.loads((maskrcnn_run / "run_info.json").read_text())["data"]["val"]
    return _predict_script().read_tfrecord_images(pattern, 1)[0][1]


@pytest.mark.slow
def test_mask_rcnn_reports_box_and_mask_ap(maskrcnn_run):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    metrics = json.loads((maskrcnn_run / "metrics.json").read_text())
    assert metrics["steps"] == 2
    for name in ("AP", "AP50", "AP75", *MASK_METRICS):
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics)
    events = event_accumulator.EventAccumulator(str(maskrcnn_run / "tensorboard"))
    events.Reload()
    for name in ("AP", *MASK_METRICS):
        scalars = events.Tensors(f"eval/{name}")
        assert [e.step for e in scalars] == [2], name
        assert float(tensor_util.make_ndarray(scalars[0].tensor_proto)) == pytest.approx(metrics[name], abs=1e-6)
    # Model Garden's mask evaluation read a COCO annotation file made from the validation TFRecords
    annotations = list((Path(json.loads((maskrcnn_run / "run_info.json").read_text())["data"]["val"])
                        .parent.parent / "annotations").glob("val-*.json"))
    coco = json.loads(max(annotations, key=lambda p: p.stat().st_mtime).read_text())
    assert len(coco["images"]) == 4 and all("segmentation" in a for a in coco["annotations"])


_PLAIN_TF = """
import json, sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
image = np.load(sys.argv[2])
out = serve(inputs=tf.constant(image[None]))
print(json.dumps({k: [v.dtype.name, v.shape.as_list()] for k, v in out.items()}))
boxes = out["detection_boxes"][0, :int(out["num_detections"][0])].numpy()
masks = out["detection_masks"][0].numpy()
print(json.dumps({"boxes_in_unit": bool(((boxes >= 0) & (boxes <= 1)).all()), "count": len(boxes),
                  "mask_min": float(masks.min()), "mask_max": float(masks.max()),
                  "model_garden_loaded": "official" in sys.modules}))
"""


@pytest.mark.slow
def test_mask_rcnn_export_loads_in_plain_tensorflow_and_returns_masks(maskrcnn_export, val_image, tmp_path):
    info = json.loads((maskrcnn_export / "export_info.json").read_text())
    assert info["step"] == 2 and "detection_masks" in info["outputs"]
    image = tmp_path / "image.npy"
    np.save(image, val_image)
    result = subprocess.run([sys.executable, "-c", _PLAIN_TF, str(maskrcnn_export / "saved_model"), str(image)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shapes, values = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert shapes["detection_masks"] == ["float32", [1, 100, 28, 28]]
    assert shapes["detection_boxes"] == ["float32", [1, 100, 4]]
    assert values["count"] > 0 and values["boxes_in_unit"]
    assert 0.0 <= values["mask_min"] <= values["mask_max"] <= 1.0  # probabilities
    assert values["model_garden_loaded"] is False  # plain TensorFlow served it


@pytest.mark.slow
def test_predict_draws_masks_pasted_into_their_boxes(maskrcnn_export, val_image, tmp_path):
    from PIL import Image

    predict = _predict_script()
    image_file = tmp_path / "val0.png"
    Image.fromarray(val_image).save(image_file)
    out = tmp_path / "out"
    assert predict.main([str(maskrcnn_export), str(image_file), "--out", str(out), "--min-score", "0",
                         "--max-boxes", "3"]) == 0
    detections = json.loads((out / "predictions.json").read_text())["images"][0]["detections"]
    assert len(detections) == 3 and all("mask_pixels" in d for d in detections)
    for d in detections:  # a pasted mask stays inside its box
        ymin, xmin, ymax, xmax = d["box"]
        assert d["mask_pixels"] <= (ymax - ymin) * (xmax - xmin) * 128 * 128 + 4 * 128


@pytest.mark.slow
def test_warm_start_of_mask_and_faster_rcnn_from_a_mask_rcnn_checkpoint(maskrcnn_run, tmp_path):
    """`all` into the same Mask R-CNN restores every weight; a Faster R-CNN (no mask head) takes the rest."""
    import tensorflow as tf

    from tfodtrain import experiment
    from tfodtrain.checkpointing import build_variables, warm_start

    reader = tf.train.load_checkpoint(str(maskrcnn_run / "checkpoints" / "ckpt-2"))
    saved = {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
             if key.startswith("backbone/") and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and "OPTIMIZER_SLOT" not in key}
    assert saved
    for masks in ("true", "false"):
        cfg = compose_config([*TINY, f"model.masks={masks}", f"model.init_checkpoint={maskrcnn_run}"],
                             run_dir=tmp_path / masks)
        exp = experiment.build(cfg, experiment.resolve_data(cfg))
        detector = exp.build_detector()
        build_variables(detector, exp.params.task.model.input_size)
        before = [w.numpy().copy() for w in detector.backbone.weights]
        assert warm_start(exp.task, detector) == str(maskrcnn_run / "checkpoints" / "ckpt-2")
        after = [w.numpy() for w in detector.backbone.weights]
        assert any(not np.array_equal(a, b) for a, b in zip(before, after))
        restored = sorted(float(np.abs(w).sum()) for w in after)
        assert restored == sorted(float(np.abs(v).sum()) for v in saved.values()), masks
        assert (detector.mask_head is not None) == (masks == "true")


def test_predict_pastes_box_relative_masks_onto_the_image():
    """A full 28x28 mask fills its box on the image, an empty one nothing; drawn masks shade their pixels."""
    predict = _predict_script()
    boxes = np.array([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]], np.float32)  # ymin, xmin, ymax, xmax
    masks = np.stack([np.ones((28, 28), np.float32), np.zeros((28, 28), np.float32)])
    pasted = predict.paste_masks(masks, boxes, 64, 96)
    assert pasted.shape == (2, 64, 96) and pasted.dtype == bool
    ys, xs = np.nonzero(pasted[0])
    # the box's pixels, give or take a pixel at each edge (Model Garden pastes with the box's end pixels included)
    assert abs(ys.min() - 16) <= 2 and abs(ys.max() - 47) <= 2 and abs(xs.min() - 48) <= 2 and xs.max() == 95
    assert abs(int(pasted[0].sum()) - 32 * 48) <= 2 * (32 + 48)
    assert not pasted[1].any()
    image = np.full((64, 96, 3), 100, np.uint8)
    detections = [{"class_id": 1, "class_name": "rectangle", "score": 0.9, "box": boxes[0].tolist()}]
    shaded = np.asarray(predict.draw_detections(image, detections, pasted[:1]).resize((96, 64)))
    plain = np.asarray(predict.draw_detections(image, detections).resize((96, 64)))
    inside = np.abs(shaded[28:36, 65:80].astype(int) - plain[28:36, 65:80].astype(int)).sum()
    outside = np.abs(shaded[2:10, 2:10].astype(int) - plain[2:10, 2:10].astype(int)).sum()
    assert inside > 0 and outside == 0


@pytest.mark.slow
def test_the_report_gives_mask_ap_beside_box_ap(maskrcnn_run, tmp_path):
    metrics = json.loads((maskrcnn_run / "metrics.json").read_text())
    result = subprocess.run([sys.executable, "-m", "tfodtrain.report", str(maskrcnn_run), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "report.md").read_text()
    assert (f"| mask AP / AP50 / AP75 | {metrics['mask_AP']:.3f} / {metrics['mask_AP50']:.3f} / "
            f"{metrics['mask_AP75']:.3f} |") in page
    assert "| step | AP | AP50 | mask AP | mask AP50 |" in page
    assert f"| 2 | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['mask_AP']:.3f} |" in page
