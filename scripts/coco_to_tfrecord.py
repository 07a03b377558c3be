"""Convert a COCO-format detection set (annotations JSON + image folder) to tfodtrain's TFRecords.

The records are written by Model Garden's own COCO converter pieces
(`official.vision.data.create_coco_tf_record.create_tf_example`, `tfrecord_lib.write_tf_record_dataset`),
so they are the Object Detection API layout its decoder reads; a `label_map.json` ({id: name}) is written
beside them. Boxes that are empty or reach outside their image are skipped (Model Garden's rule) and counted.

Class ids: COCO's category ids are kept by default (COCO's own go up to 90, so data.num_classes=91);
`--contiguous-ids` renumbers the categories 1..N in id order (data.num_classes=N+1).

`--masks` also writes each object's instance mask (`image/object/mask`, PNG, as Mask R-CNN reads it) from
its COCO `segmentation`: polygons, uncompressed RLE or compressed RLE.

Usage:
    python scripts/coco_to_tfrecord.py --annotations instances_train.json --images train2017/ \\
        --output /data/mine/train --shards 8
    # -> /data/mine/train-00000-of-00008.tfrecord ... and /data/mine/label_map.json; then:
    python -m tfodtrain +experiment=ssd data=tfrecord data.train_path='/data/mine/train-*.tfrecord' \\
        data.val_path='/data/mine/val-*.tfrecord' data.num_classes=91 data.label_map=/data/mine/label_map.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def uncompressed_segmentation(segmentation, iscrowd: bool):
    """A COCO segmentation in the forms Model Garden's converter decodes (`frPyObjects`): polygons as they
    are; RLE as uncompressed counts (compressed RLE strings are decoded first), in a list unless crowd."""
    if isinstance(segmentation, list):
        return segmentation
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError("a segmentation is neither polygons nor RLE ({'counts': ..., 'size': [h, w]})")
    if isinstance(segmentation["counts"], (str, bytes)):
        from pycocotools import mask as coco_mask

        counts = segmentation["counts"]
        binary = coco_mask.decode({"size": segmentation["size"],
                                   "counts": counts.encode() if isinstance(counts, str) else counts})
        flat = binary.flatten(order="F")  # COCO's RLE runs down the columns, starting with a run of zeros
        boundaries = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [len(flat)]])
        runs = [int(r) for r in np.diff(boundaries)]
        segmentation = {"size": list(segmentation["size"]), "counts": ([0] if len(flat) and flat[0] else []) + runs}
    return segmentation if iscrowd else [segmentation]


def load_coco(annotations: Path, contiguous_ids: bool, masks: bool = False):
    """(images, annotations by image id, id -> name) of a COCO json, categories renumbered if asked
    (`masks`: each annotation's segmentation made readable by Model Garden's converter)."""
    coco = json.loads(annotations.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{annotations} has no '{key}' list: is it a COCO detection file (instances_*.json)?")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    new_id = {c["id"]: (i + 1 if contiguous_ids else c["id"]) for i, c in enumerate(categories)}
    id_to_name = {new_id[c["id"]]: c["name"] for c in categories}
    by_image: dict = {}
    for annotation in coco["annotations"]:
        if annotation["category_id"] not in new_id:
            raise ValueError(f"annotation {annotation.get('id')} has category_id {annotation['category_id']}, "
                             "which is not in 'categories'")
        annotation = dict(annotation, category_id=new_id[annotation["category_id"]])
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", float(annotation["bbox"][2] * annotation["bbox"][3]))
        if masks:
            if "segmentation" not in annotation:
                raise ValueError(f"annotation {annotation.get('id')} has no 'segmentation' (needed by --masks)")
            annotation["segmentation"] = uncompressed_segmentation(annotation["segmentation"],
                                                                   bool(annotation["iscrowd"]))
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return coco["images"], by_image, id_to_name


def convert(annotations: Path, images_dir: Path, output: str, shards: int = 1, contiguous_ids: bool = False,
            workers: int = 0, masks: bool = False) -> dict:
    """Write `output`-0000i-of-0000n.tfrecord and label_map.json; returns counts and what to train with."""
    images, by_image, id_to_name = load_coco(annotations, contiguous_ids, masks)
    missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} images of {annotations.name} are not in {images_dir} (first: {missing[0]})")
    from official.vision.data import create_coco_tf_record, tfrecord_lib  # TensorFlow: once the inputs are known good

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    examples = create_coco_tf_record.generate_annotations(
        images=images, image_dirs=[str(images_dir)], img_to_obj_annotation=by_image, id_to_name_map=id_to_name,
        include_masks=masks)
    skipped = tfrecord_lib.write_tf_record_dataset(output, examples, create_coco_tf_record.create_tf_example,
                                                   shards, multiple_processes=workers)
    label_map = Path(output).parent / "label_map.json"
    label_map.write_text(json.dumps({str(k): v for k, v in sorted(id_to_name.items())}, indent=2) + "\n")
    return {"images": len(images), "boxes": sum(len(v) for v in by_image.values()), "skipped_boxes": int(skipped),
            "num_classes": max(id_to_name) + 1, "files": f"{output}-*-of-{shards:05d}.tfrecord",
            "label_map": str(label_map)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=Path, required=True, help="COCO detection JSON (instances_*.json)")
    parser.add_argument("--images", type=Path, required=True, help="folder holding the images the JSON names")
    parser.add_argument("--output", required=True, help="path prefix of the TFRecords, e.g. /data/mine/train")
    parser.add_argument("--shards", type=int, default=1, help="number of TFRecord files (default 1)")
    parser.add_argument("--contiguous-ids", action="store_true", help="renumber categories 1..N")
    parser.add_argument("--workers", type=int, default=0, help="processes encoding examples (0: this one)")
    parser.add_argument("--masks", action="store_true",
                        help="also write instance masks (image/object/mask) from the segmentations, for Mask R-CNN")
    args = parser.parse_args(argv)
    if not args.annotations.is_file():
        print(f"coco_to_tfrecord: error: --annotations {args.annotations} does not exist", file=sys.stderr)
        return 2
    if not args.images.is_dir():
        print(f"coco_to_tfrecord: error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    if args.shards < 1:
        print(f"coco_to_tfrecord: error: --shards {args.shards} must be at least 1", file=sys.stderr)
        return 2
    try:
        result = convert(args.annotations, args.images, args.output, args.shards, args.contiguous_ids, args.workers,
                         args.masks)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        print(f"coco_to_tfrecord: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    print(f"train with: data=tfrecord data.train_path='{result['files']}' data.num_classes={result['num_classes']} "
          f"data.label_map={result['label_map']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
