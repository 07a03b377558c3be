"""Run a trained detector on image files and write PNGs with the boxes, class names and scores drawn
(and, for Mask R-CNN, each instance mask pasted into its box and shaded in the box's colour).

MODEL is an exported SavedModel (`mode=export`: EXPORT_DIR or EXPORT_DIR/saved_model) or a run dir
(its config.yaml and newest checkpoint, or --checkpoint). Images are files, or the first --count
images of TFRecords in the Object Detection API layout (--tfrecord, e.g. the validation split that
RUN_DIR/run_info.json names). Class names come from the export's label_map.json, the run's data
(shapes names, data.label_map) or --label-map.

Example:
    python scripts/predict.py RUN_DIR/export img1.jpg img2.png --out predictions --min-score 0.4
    # -> predictions/img1.png, predictions/img2.png, predictions/predictions.json
    python scripts/predict.py RUN_DIR --tfrecord '/data/val-*.tfrecord' --count 3

Bad input (a missing image, a MODEL that is neither) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from tfodtrain import exit_codes  # noqa: E402
from tfodtrain.exit_codes import UserError, first_line  # noqa: E402

COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
MIN_DRAWN_SIDE = 480  # small images (shapes are 128-320 px) are enlarged so the labels stay legible


class Detector:
    """Uniform `detect(uint8 HxWx3) -> dict` over a SavedModel or a run dir's checkpoint.

    Example:
        >>> detector = Detector.load("runs/ssd1/export")
        >>> detector.detect(np.zeros((240, 320, 3), np.uint8))["detection_scores"].shape   # (100,)
    """

    def __init__(self, infer, label_map: dict[int, str], source: str):
        self._infer = infer
        self.label_map = label_map
        self.source = source

    @classmethod
    def load(cls, model: str, checkpoint: str | None = None) -> "Detector":
        path = Path(model).expanduser()
        for saved_model in (path, path / "saved_model"):
            if (saved_model / "saved_model.pb").is_file():
                if checkpoint:
                    raise UserError("--checkpoint goes with a run dir, not with a SavedModel")
                return cls._from_saved_model(saved_model)
        if (path / "config.yaml").is_file():
            return cls._from_run_dir(path, checkpoint)
        raise UserError(f"{model} is neither a SavedModel (mode=export output) nor a run dir with config.yaml")

    @classmethod
    def _from_saved_model(cls, saved_model: Path) -> "Detector":
        import tensorflow as tf

        serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
        label_file = saved_model.parent / "label_map.json"
        labels = json.loads(label_file.read_text()) if label_file.is_file() else {}
        return cls(lambda images: serve(inputs=images), {int(k): v for k, v in labels.items()}, str(saved_model))

    @classmethod
    def _from_run_dir(cls, run_dir: Path, checkpoint: str | None) -> "Detector":
        from omegaconf import OmegaConf

        from tfodtrain.checkpoint_files import find_checkpoint
        from tfodtrain.experiment import resolve_data
        from tfodtrain.export import load_serving_module

        cfg = OmegaConf.load(run_dir / "config.yaml")  # the resolved config the run was trained with
        checkpoint = find_checkpoint(checkpoint or run_dir, "--checkpoint")
        data = resolve_data(cfg)
        module, _, _ = load_serving_module(cfg, checkpoint, data)
        # A lambda holding the module: its tf.function keeps only a weak reference to it.
        return cls(lambda images: module.inference_from_image_tensors(images), data.get("label_map") or {}, checkpoint)

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        outputs = self._infer(tf.constant(image[None], tf.uint8))
        count = int(outputs["num_detections"][0])
        return {key: outputs[key][0].numpy()[:count] for key in
                ("detection_boxes", "detection_classes", "detection_scores", "detection_masks") if key in outputs}


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Box-relative mask probabilities [N, m, m] and normalized boxes [N, 4] (ymin, xmin, ymax, xmax) ->
    boolean masks [N, height, width] on the image (Model Garden's `paste_instance_masks`, threshold 0.5)."""
    from official.vision.ops import mask_ops

    if len(masks) == 0:
        return np.zeros((0, height, width), bool)
    ymin, xmin, ymax, xmax = (boxes[:, i] for i in range(4))
    pixel_boxes = np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], axis=1)
    return mask_ops.paste_instance_masks(masks, pixel_boxes, height, width) > 0.5


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"image {path} cannot be read as an image: {error}") from None


def read_tfrecord_images(pattern: str, count: int) -> list[tuple[str, np.ndarray]]:
    """The first `count` (name, pixels) of TFRecords with `image/encoded` (and `image/source_id`)."""
    import tensorflow as tf

    from tfodtrain.data.tfrecord import expand_glob

    files = expand_glob(pattern, "--tfrecord")
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value="")}
    images = []
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(files).take(count)):
            example = tf.io.parse_single_example(record, features)
            name = example["image/source_id"].numpy().decode() or str(index)
            images.append((f"record-{name}", tf.io.decode_image(example["image/encoded"], channels=3).numpy()))
    except tf.errors.OpError as error:
        raise UserError(f"--tfrecord {pattern}: not TFRecords with image/encoded: "
                        f"{first_line(error, 200)}") from None
    return images


def draw_detections(image: np.ndarray, detections: list[dict], masks: np.ndarray | None = None) -> Image.Image:
    """The image (enlarged if small) with one labelled box per detection (normalized boxes); `masks`
    (boolean [N, height, width] of the image, one per detection) are shaded in their box's colour."""
    canvas = Image.fromarray(image)
    scale = max(1, math.ceil(MIN_DRAWN_SIDE / max(canvas.size)))
    if masks is not None and len(masks):
        shaded = np.asarray(canvas, dtype=np.float32).copy()
        for detection, mask in zip(detections, masks):
            colour = np.asarray(COLOURS[detection["class_id"] % len(COLOURS)], np.float32)
            shaded[mask] = 0.45 * shaded[mask] + 0.55 * colour
        canvas = Image.fromarray(shaded.round().astype(np.uint8))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, canvas.height // 32))
    for detection in detections:
        ymin, xmin, ymax, xmax = detection["box"]
        box = (xmin * canvas.width, ymin * canvas.height, xmax * canvas.width, ymax * canvas.height)
        colour = COLOURS[detection["class_id"] % len(COLOURS)]
        draw.rectangle(box, outline=colour, width=max(2, canvas.height // 160))
        text = f"{detection['class_name']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
        lift = min(bottom - top + 4, box[1])  # above the box, or inside it at the image's top edge
        draw.rectangle((left, top - lift, right + 4, bottom - lift + 2), fill=colour)
        draw.text((box[0] + 2, box[1] - lift), text, fill=(255, 255, 255), font=font)
    return canvas


def predict(model: str, images: list[str], out_dir: str, min_score: float = 0.5, checkpoint: str | None = None,
            label_map: str | None = None, max_boxes: int = 20, tfrecord: str | None = None,
            count: int = 3) -> list[dict]:
    """Detect on each image, write OUT_DIR/<name>.png and OUT_DIR/predictions.json; returns the records."""
    if not 0.0 <= min_score <= 1.0:
        raise UserError(f"--min-score={min_score} must be between 0 and 1")
    if max_boxes < 1 or count < 1:
        raise UserError(f"--max-boxes={max_boxes} and --count={count} must be at least 1")
    if not images and not tfrecord:
        raise UserError("no images: give image files and/or --tfrecord GLOB")
    # Every image is read before the model loads: a bad path fails in a second, not after the model.
    inputs = [(Path(p).expanduser().stem, read_image(Path(p).expanduser())) for p in images]
    if tfrecord:
        inputs += read_tfrecord_images(tfrecord, count)
    names = None
    if label_map:
        from tfodtrain.data.tfrecord import load_label_map

        names = load_label_map(label_map)
    detector = Detector.load(model, checkpoint)
    names = names or detector.label_map
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name, image in inputs:
        found = detector.detect(image)
        keep = np.flatnonzero(found["detection_scores"] >= min_score)[:max_boxes]
        detections = [{"class_id": int(found["detection_classes"][i]),
                       "class_name": names.get(int(found["detection_classes"][i]),
                                               f"class {int(found['detection_classes'][i])}"),
                       "score": round(float(found["detection_scores"][i]), 4),
                       "box": [round(float(v), 4) for v in found["detection_boxes"][i]]} for i in keep]
        masks = None
        if "detection_masks" in found:
            masks = paste_masks(found["detection_masks"][keep], found["detection_boxes"][keep], *image.shape[:2])
            for detection, mask in zip(detections, masks):
                detection["mask_pixels"] = int(mask.sum())  # of the image's pixels, inside the box
        target = out / f"{name}.png"
        draw_detections(image, detections, masks).save(target, optimize=True)
        records.append({"image": name, "output": str(target), "detections": detections})
        summary = ", ".join(f"{d['class_name']} {d['score']:.2f}" for d in detections) or "nothing"
        print(f"{name}: {summary} -> {target}")
    (out / "predictions.json").write_text(json.dumps(
        {"model": detector.source, "min_score": min_score, "images": records}, indent=2) + "\n")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="SavedModel / export dir (mode=export) or run dir")
    parser.add_argument("images", nargs="*", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--tfrecord", help="also the first --count images of these TFRecords (a glob)")
    parser.add_argument("--count", type=int, default=3, help="images taken from --tfrecord (default 3)")
    parser.add_argument("--out", default="predictions", help="output folder (default: ./predictions)")
    parser.add_argument("--min-score", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--max-boxes", type=int, default=20, help="draw at most this many per image")
    parser.add_argument("--checkpoint", help="with a run dir: this checkpoint instead of the newest")
    parser.add_argument("--label-map", help='JSON {"1": "name", ...} overriding the model\'s class names')
    args = parser.parse_args(argv)
    try:
        predict(args.model, args.images, args.out, args.min_score, args.checkpoint, args.label_map, args.max_boxes,
                args.tfrecord, args.count)
    except UserError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
