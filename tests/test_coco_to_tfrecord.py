"""scripts/coco_to_tfrecord.py: a tiny COCO set becomes TFRecords the record scan and TensorFlow's reader accept."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tfodtrain.data.validate import example_class, iter_records, scan_records

REPO = Path(__file__).resolve().parent.parent


def _tiny_coco(root: Path) -> Path:
    images = root / "images"
    images.mkdir()
    for name, size in (("a.jpg", (64, 48)), ("b.jpg", (40, 40))):
        Image.new("RGB", size, (120, 60, 30)).save(images / name, format="JPEG")
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 9, "file_name": "b.jpg", "width": 40, "height": 40}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [8, 4, 32, 20], "area": 640, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10]},  # no area / iscrowd: filled in
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [30, 30, 20, 5], "area": 100, "iscrowd": 0},  # outside
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "coco_to_tfrecord.py"), *args], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _convert(capsys, *args) -> subprocess.CompletedProcess:
    """The script's `main(args)` in this process: TensorFlow, which a conversion imports, is loaded once for the
    test session instead of once per subprocess. The command line itself: test_bad_arguments_get_one_line."""
    spec = importlib.util.spec_from_file_location("coco_to_tfrecord", REPO / "scripts" / "coco_to_tfrecord.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_converts_a_tiny_coco_set(tmp_path, capsys):
    annotations = _tiny_coco(tmp_path)
    out = _convert(capsys, "--annotations", str(annotations), "--images", str(tmp_path / "images"),
               "--output", str(tmp_path / "out" / "train"), "--shards", "2", "--contiguous-ids")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["images"] == 2 and result["num_classes"] == 3 and result["skipped_boxes"] == 1
    assert json.loads((tmp_path / "out" / "label_map.json").read_text()) == {"1": "cat", "2": "dog"}
    files = sorted(str(p) for p in (tmp_path / "out").glob("train-*-of-00002.tfrecord"))
    assert len(files) == 2
    scan = scan_records(files, num_classes=result["num_classes"])
    assert scan.checked == 2 and scan.bad == []
    records = {}
    for path in files:
        for _, data in iter_records(path):
            example = example_class()()
            example.ParseFromString(data)
            feature = example.features.feature
            records[feature["image/source_id"].bytes_list.value[0]] = feature
    a = records[b"7"]
    assert list(a["image/object/class/label"].int64_list.value) == [2, 1]  # dog, cat renumbered
    assert [round(v, 3) for v in a["image/object/bbox/xmin"].float_list.value] == [0.125, 0.0]
    assert "image/object/class/label" not in records[b"9"]  # its only box reached outside the image: skipped


def test_bad_arguments_get_one_line(tmp_path):
    out = _run("--annotations", str(tmp_path / "missing.json"), "--images", str(tmp_path), "--output", str(tmp_path / "o"))
    assert out.returncode == 2 and out.stderr.strip().startswith("coco_to_tfrecord: error: --annotations")
    annotations = _tiny_coco(tmp_path)
    (tmp_path / "images" / "b.jpg").unlink()
    out = _run("--annotations", str(annotations), "--images", str(tmp_path / "images"), "--output", str(tmp_path / "o"))
    assert out.returncode == 2 and "1 images of instances.json are not in" in out.stderr and "Traceback" not in out.stderr


def test_masks_from_polygons_and_both_kinds_of_rle(tmp_path, capsys):
    """--masks: a polygon, an uncompressed RLE and a compressed RLE each become the PNG mask they describe."""
    import io

    import numpy as np
    from pycocotools import mask as coco_mask

    annotations = _tiny_coco(tmp_path)
    coco = json.loads(annotations.read_text())
    square = np.zeros((48, 64), np.uint8)
    square[10:20, 30:50] = 1  # 10 x 20
    compressed = coco_mask.encode(np.asfortranarray(square))
    band = np.zeros((48, 64), np.uint8)
    band[0:4, :] = 1  # 4 x 64, starting at the first pixel (the RLE starts with a run of 0 zeros)
    flat = band.flatten(order="F")
    uncompressed = {"size": [48, 64], "counts": [0] + [int(n) for n in np.diff(
        np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]]))]}
    coco["annotations"] = [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [8, 4, 32, 20], "iscrowd": 0,
         "segmentation": [[8, 4, 40, 4, 40, 24, 8, 24]]},  # a 32 x 20 rectangle as a polygon
        {"id": 2, "image_id": 7, "category_id": 18, "bbox": [30, 10, 20, 10], "iscrowd": 0,
         "segmentation": {"size": [48, 64], "counts": compressed["counts"].decode()}},
        {"id": 3, "image_id": 7, "category_id": 18, "bbox": [0, 0, 64, 4], "iscrowd": 0, "segmentation": uncompressed},
    ]
    annotations.write_text(json.dumps(coco))
    out = _convert(capsys, "--annotations", str(annotations), "--images", str(tmp_path / "images"),
               "--output", str(tmp_path / "out" / "val"), "--masks")
    assert out.returncode == 0, out.stderr[-2000:]
    files = [str(p) for p in (tmp_path / "out").glob("val-*.tfrecord")]
    assert scan_records(files, num_classes=19, masks=True).bad == []  # one PNG per box, of the image's size
    for _, data in iter_records(files[0]):
        example = example_class()()
        example.ParseFromString(data)
        feature = example.features.feature
        if feature["image/source_id"].bytes_list.value[0] != b"7":
            continue
        decoded = [np.asarray(Image.open(io.BytesIO(png))) for png in feature["image/object/mask"].bytes_list.value]
        assert [m.shape for m in decoded] == [(48, 64)] * 3
        assert abs(int(decoded[0].sum()) - 33 * 21) <= 33 + 21  # the polygon's area (pycocotools rasterisation)
        assert np.array_equal(decoded[1], square) and np.array_equal(decoded[2], band)
        break
    else:
        raise AssertionError("image 7 not written")
    del coco["annotations"][0]["segmentation"]
    annotations.write_text(json.dumps(coco))
    out = _convert(capsys, "--annotations", str(annotations), "--images", str(tmp_path / "images"),
               "--output", str(tmp_path / "out2" / "val"), "--masks")
    assert out.returncode == 2 and "annotation 1 has no 'segmentation'" in out.stderr and "Traceback" not in out.stderr
