"""The embedded synthetic `shapes` detection set, generated on first use into a cache.

Rectangles, ellipses and triangles (3 classes, ids 1..3; Model Garden's `num_classes` is 4 because it
counts the background) on noisy backgrounds, 1-4 objects an image, JPEG-encoded, written as TFRecords
in the Object Detection API layout with Model Garden's `TfExampleBuilder`: boxes, class ids and an
instance mask per object (`image/object/mask`, PNG). A mask is exact (the shape drawn again on its own
canvas) and holds what is visible: the pixels a later shape covers are taken out of it. The same seed and sizes
always give the same bytes, so a cache hit is as good as regenerating.

Example:
    >>> paths = ensure_shapes_dataset("~/.cache/tfodtrain", num_train=256, num_val=64)
    >>> paths.train_pattern   # '.../shapes-v2-.../train-*.tfrecord'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import typing
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

CLASS_NAMES = ("rectangle", "ellipse", "triangle")  # class ids 1, 2, 3
_FORMAT_VERSION = 3  # 2: shapes placed apart and drawn in a colour that stands out; 3: instance masks
_SHARDS = 2


@dataclasses.dataclass(frozen=True)
class ShapesPaths:
    root: Path
    train_pattern: str
    val_pattern: str
    label_map: dict[int, str]


# Every label must show in its image: a shape hidden under later ones, or drawn in nearly the
# background's colour under its noise (sigma 18), would be a label no detector can learn.
_MAX_COVERED = 0.25  # the most of a box (and of each earlier box) another shape's box may cover
_MIN_CONTRAST = 64  # the least difference from the background in the shape's most different channel
_PLACEMENT_TRIES = 30  # placements tried before a shape is left out (its image then has fewer)


def _covered_share(box, other) -> float:
    """The share of `box` (x0, y0, x1, y1) that `other` covers."""
    width = min(box[2], other[2]) - max(box[0], other[0])
    height = min(box[3], other[3]) - max(box[1], other[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / ((box[2] - box[0]) * (box[3] - box[1]))


class Drawn(typing.NamedTuple):
    """One generated image and its objects, in drawing order."""

    pixels: np.ndarray  # uint8 [size, size, 3], before JPEG encoding
    boxes: list  # normalised (ymin, xmin, ymax, xmax) of each drawn shape
    classes: list  # class ids 1..3
    masks: np.ndarray  # uint8 [objects, size, size], 1 where the object is visible
    colours: list  # the RGB fill of each shape


def _draw_shape(draw: ImageDraw.ImageDraw, class_id: int, box, fill) -> None:
    x0, y0, x1, y1 = box
    if class_id == 1:
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif class_id == 2:
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)


def _draw_image(rng: np.random.Generator, size: int) -> Drawn:
    """One noisy background with 1-4 visible shapes, their normalised boxes, class ids and visible masks."""
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    placed, classes, masks, colours = [], [], [], []
    for _ in range(int(rng.integers(1, 5))):
        class_id = int(rng.integers(1, len(CLASS_NAMES) + 1))
        for _ in range(_PLACEMENT_TRIES):
            w, h = (int(v) for v in rng.integers(size // 8, size // 2.5, size=2))
            x0 = int(rng.integers(0, size - w))
            y0 = int(rng.integers(0, size - h))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_covered_share(box, other) <= _MAX_COVERED and _covered_share(other, box) <= _MAX_COVERED
                   for other in placed):
                break
        else:
            continue
        colour = rng.integers(0, 256, size=3)
        while np.abs(colour - base).max() < _MIN_CONTRAST:
            colour = rng.integers(0, 256, size=3)
        fill = tuple(int(c) for c in colour)
        _draw_shape(draw, class_id, box, fill)
        canvas = Image.new("L", (size, size), 0)  # the same primitive again: exactly the pixels just drawn
        _draw_shape(ImageDraw.Draw(canvas), class_id, box, 1)
        mask = np.asarray(canvas, dtype=np.uint8)
        for earlier in masks:
            earlier[mask > 0] = 0  # covered now: no longer visible
        placed.append(box)
        classes.append(class_id)
        masks.append(mask.copy())
        colours.append(fill)
    boxes = [(y0 / size, x0 / size, y1 / size, x1 / size) for x0, y0, x1, y1 in placed]
    return Drawn(np.asarray(image), boxes, classes, np.stack(masks) if masks else np.zeros((0, size, size), np.uint8),
                 colours)


def _write_split(directory: Path, split: str, count: int, size: int, seed: int, first_id: int) -> None:
    import tensorflow as tf  # heavy: only when the cache is cold
    from official.vision.data.tf_example_builder import TfExampleBuilder

    rng = np.random.default_rng(seed)
    writers = [
        tf.io.TFRecordWriter(str(directory / f"{split}-{shard:05d}-of-{_SHARDS:05d}.tfrecord"))
        for shard in range(_SHARDS)
    ]
    try:
        for index in range(count):
            pixels, boxes, classes, masks, _ = _draw_image(rng, size)
            ymin, xmin, ymax, xmax = (list(v) for v in zip(*boxes))
            example = (
                TfExampleBuilder()
                .add_image_matrix_feature(
                    pixels, image_format="JPEG", image_source_id=str(first_id + index).encode()
                )
                .add_boxes_feature(xmin, xmax, ymin, ymax, classes)
                .add_instance_mask_matrices_feature(masks)
                .example
            )
            writers[index % _SHARDS].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()


def ensure_shapes_dataset(
    cache_dir: str | os.PathLike,
    num_train: int = 512,
    num_val: int = 64,
    image_size: int = 320,
    seed: int = 0,
) -> ShapesPaths:
    """Generate the shapes TFRecords into `cache_dir` unless an identical set is already there."""
    key = json.dumps(
        {"v": _FORMAT_VERSION, "train": num_train, "val": num_val, "size": image_size, "seed": seed},
        sort_keys=True,
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() / f"shapes-v{_FORMAT_VERSION}-{digest}"
    done_marker = root / "COMPLETE"
    if not done_marker.exists():
        log.info("Generating the shapes dataset (%d train, %d val images) into %s", num_train, num_val, root)
        staging = root.with_name(root.name + f".tmp{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        # Train and validation images come from separate streams, so they never repeat each other.
        _write_split(staging, "train", num_train, image_size, seed * 2 + 1, first_id=1)
        _write_split(staging, "val", num_val, image_size, seed * 2 + 2, first_id=num_train + 1)
        (staging / "label_map.json").write_text(
            json.dumps({str(i + 1): name for i, name in enumerate(CLASS_NAMES)}, indent=2)
        )
        (staging / "COMPLETE").write_text(key)
        try:
            staging.rename(root)  # atomic: a concurrent or killed generator never leaves half a set
        except OSError:
            if not done_marker.exists():
                raise
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return ShapesPaths(
        root=root,
        train_pattern=str(root / "train-*.tfrecord"),
        val_pattern=str(root / "val-*.tfrecord"),
        label_map={i + 1: name for i, name in enumerate(CLASS_NAMES)},
    )
