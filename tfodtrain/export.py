"""`mode=export`: a SavedModel of a checkpoint through Model Garden's export code.

Example (shell):
    python -m tfodtrain +experiment=ssd mode=export hydra.run.dir=RUN_DIR   # RUN_DIR/export/saved_model
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from official.vision.serving import detection
from omegaconf import DictConfig

from tfodtrain import experiment, rundir
from tfodtrain.checkpointing import checkpoint_to_use, restore_detector
from tfodtrain.exit_codes import UserError

log = logging.getLogger("tfodtrain")

SERVING_OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
MASK_OUTPUT = "detection_masks"  # Mask R-CNN: [batch, 100, 28, 28] mask probabilities, each inside its box


class DetectionModule(detection.DetectionModule):
    """Model Garden's serving module, with boxes in [0, 1] of the input image for every detector.

    Model Garden normalises RetinaNet's boxes (`export_config.output_normalized_coordinates`); Faster and
    Mask R-CNN have no `export_config` and serve boxes in pixels of the resized input. Here their boxes are
    normalised by Model Garden's own `_normalize_coordinates`, with the `image_info` of the same call.
    """

    def preprocess(self, images):
        images, anchor_boxes, image_info = super().preprocess(images)
        self._image_info = image_info  # read by serve() in the same trace
        return images, anchor_boxes, image_info

    def serve(self, images):
        outputs = super().serve(images)
        if hasattr(self.params.task, "export_config"):  # RetinaNet: normalised by Model Garden
            return outputs
        return self._normalize_coordinates(dict(outputs), ["detection_boxes"], self._image_info)


def load_serving_module(cfg: DictConfig, checkpoint: str, data: dict | None = None):
    """Model Garden's `DetectionModule` (uint8 images in; normalized boxes, classes, scores and, for Mask
    R-CNN, box-relative masks out) with the weights of `checkpoint`. Returns (module, params, step).

    Example:
        >>> module, params, step = load_serving_module(cfg, "runs/ssd1/checkpoints/ckpt-600")
        >>> module.inference_from_image_tensors(tf.zeros([1, 480, 640, 3], tf.uint8))["detection_boxes"]
    """
    data = data or experiment.resolve_data(cfg)
    params = experiment.build(cfg, data, precision=False, with_task=False).params
    if hasattr(params.task, "export_config"):
        params.task.export_config.output_normalized_coordinates = True  # boxes in [0, 1] of any input size
    size = list(params.task.model.input_size[:2])
    module = DetectionModule(params, batch_size=None, input_image_size=size, input_type="image_tensor")
    step = restore_detector(module.model, params, checkpoint)
    return module, params, step


def export_saved_model(cfg: DictConfig) -> dict:
    """A SavedModel via Model Garden's export code into EXPORT_DIR/saved_model, replaced atomically."""
    run_dir = Path(cfg.run_dir)
    checkpoint = checkpoint_to_use(cfg)
    export_root = Path(cfg.export_dir or run_dir / "export").expanduser()
    if export_root.exists() and not (export_root / "export_info.json").is_file():
        raise UserError(f"export_dir={export_root} exists and is not a tfodtrain export: give a new directory")
    data = experiment.resolve_data(cfg)

    from official.vision.serving import export_saved_model_lib

    module, params, step = load_serving_module(cfg, checkpoint, data)
    staging = export_root.with_name(f"{export_root.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor", batch_size=None, input_image_size=list(params.task.model.input_size[:2]),
        params=params,
        checkpoint_path=None, export_dir=str(staging), export_module=module, export_saved_model_subdir="saved_model")
    label_map = data.get("label_map") or {}
    (staging / "label_map.json").write_text(json.dumps({str(k): v for k, v in label_map.items()}, indent=2) + "\n")
    outputs = {"detection_boxes": "float32 [batch, 100, 4] ymin, xmin, ymax, xmax in [0, 1]",
               "detection_classes": "int [batch, 100] class ids (label_map.json)",
               "detection_scores": "float32 [batch, 100]", "num_detections": "int [batch]"}
    if getattr(params.task.model, "include_mask", False):
        side = int(params.task.model.mask_head.upsample_factor) * int(params.task.model.mask_roi_aligner.crop_size)
        outputs[MASK_OUTPUT] = (f"float32 [batch, 100, {side}, {side}] mask probabilities inside each box "
                                "(resize to the box and threshold at 0.5)")
    info = {"checkpoint": checkpoint, "step": step, "experiment": cfg.experiment_name,
            "saved_model": str(export_root / "saved_model"), "signature": "serving_default",
            "input": {"name": "inputs", "dtype": "uint8", "shape": [None, None, None, 3]},
            "outputs": outputs}
    rundir.write_json(staging / "export_info.json", info)
    # Swap in the new export only when complete: a failed export never leaves half a SavedModel.
    previous = export_root.with_name(f"{export_root.name}.old{os.getpid()}")
    if export_root.exists():
        export_root.rename(previous)
    staging.rename(export_root)
    shutil.rmtree(previous, ignore_errors=True)
    log.info("Exported checkpoint %s (step %d) to %s", checkpoint, step, export_root / "saved_model")
    return info
