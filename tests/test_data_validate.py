"""The record scan: every kind of bad record is named with its file and index; skip mode leaves them out."""

from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from helpers.cli import run_cli
from helpers.records import corrupt_data_crc, example, good_records, png_mask, write
from tfodtrain.data import validate
from tfodtrain.data.validate import check_example, iter_records, scan_records, validate_data
from tfodtrain.exit_codes import UserError

BAD = {
    "missing image": (example(drop=("image/encoded",)), "missing feature image/encoded"),
    "missing box key": (example(drop=("image/object/bbox/ymax",)), "missing feature image/object/bbox/ymax"),
    "missing labels": (example(drop=("image/object/class/label",)), "missing feature image/object/class/label"),
    "box outside": (example(boxes=((0.1, 1.3, 0.2, 0.6),)), "box 0 outside [0, 1]"),
    "negative box": (example(boxes=((-0.2, 0.5, 0.2, 0.6),)), "box 0 outside [0, 1]"),
    "min > max": (example(boxes=((0.1, 0.5, 0.7, 0.6),)), "box 0 has min > max"),
    "empty image": (example(image=b""), "empty image"),
    "not an image": (example(image=b"not a jpeg at all"), "is not a readable image"),
    "class 0": (example(labels=(0,)), "class id 0 of box 0 outside 1..3"),
    "class too big": (example(labels=(4,)), "class id 4 of box 0 outside 1..3"),
    "lengths differ": (example(labels=(1, 2)), "differ in length"),
    "not an example": (b"\xff\xff\xff garbage", "not a tf.train.Example"),
}


def test_good_records_pass():
    for record in good_records(2):
        assert check_example(record, num_classes=4) is None
    assert check_example(example(boxes=(), labels=()), num_classes=4) is None  # an image without objects
    # boxes touching the border, and the largest class id, are fine
    assert check_example(example(boxes=((0.0, 1.0, 0.0, 1.0),), labels=(3,)), num_classes=4) is None


BAD_MASKS = {
    "no mask": (example(), "missing feature image/object/mask"),
    "one mask for two boxes": (example(boxes=((0.1, 0.5, 0.2, 0.6), (0.5, 0.9, 0.5, 0.9)), labels=(1, 2),
                                       masks=[png_mask()]), "holds 1 masks for 2 boxes"),
    "mask of another size": (example(masks=[png_mask(16)]), "mask 0 is 16x16 pixels, the image 32x32"),
    "mask taller than the image": (example(masks=[png_mask(32, 48)]), "mask 0 is 32x48 pixels"),
    "mask not a PNG": (example(masks=[b"not a png"]), "mask 0 is not a readable PNG"),
}


def test_masks_are_checked_only_for_a_model_with_masks():
    for record in good_records(2, masks=True):
        assert check_example(record, num_classes=4, masks=True) is None
    assert check_example(example(boxes=(), labels=()), num_classes=4, masks=True) is None  # no objects, no masks
    record, _ = BAD_MASKS["no mask"]
    assert check_example(record, num_classes=4) is None  # boxes only: masks are not needed


@pytest.mark.parametrize("kind", sorted(BAD_MASKS))
def test_each_bad_mask_is_named(kind):
    record, expected = BAD_MASKS[kind]
    assert expected in check_example(record, num_classes=4, masks=True)


def test_a_bad_mask_is_one_line_and_exit_2(tmp_path):
    """The CLI's pre-check, before TensorFlow: +experiment=maskrcnn on records whose second mask is of
    another size than its image."""
    train = write(tmp_path / "train.tfrecord", good_records(2, masks=True)
                  + [example(masks=[png_mask(24)])])
    val = write(tmp_path / "val.tfrecord", good_records(1, masks=True))
    result = run_cli(["+experiment=maskrcnn", "data=tfrecord", f"data.train_path={train}", f"data.val_path={val}",
                      "data.num_classes=4"], run_dir=tmp_path / "run", timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert lines == [f"tfodtrain: error: bad train record: {train} record 2: mask 0 is 24x24 pixels, the image "
                     "32x32: a mask covers the whole image; fix or remove it, or set data.bad_records=skip to train "
                     "without such records"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_record_is_named(kind):
    record, expected = BAD[kind]
    assert expected in check_example(record, num_classes=4)


def test_scan_names_file_and_index_and_sees_corrupt_bytes(tmp_path):
    good = write(tmp_path / "a.tfrecord", good_records(3))
    bad = corrupt_data_crc(write(tmp_path / "b.tfrecord", good_records(3)), record=1)
    scan = scan_records([str(good), str(bad)], num_classes=4)
    assert scan.checked == 6
    assert [(b.path, b.index) for b in scan.bad] == [(str(bad), 1)]
    assert "CRC mismatch" in scan.bad[0].problem
    truncated = tmp_path / "c.tfrecord"
    truncated.write_bytes(bad.read_bytes()[:-7])
    scan = scan_records([str(truncated)], num_classes=4)
    assert scan.bad[-1].problem.startswith("truncated") and scan.unreadable_tails == [str(truncated)]


def test_reader_reads_tensorflow_framing(data_cache):
    """The pure-Python reader reads TFRecords written by TensorFlow (the shapes set) with every CRC intact."""
    from tfodtrain.data.shapes import ensure_shapes_dataset

    paths = ensure_shapes_dataset(data_cache, num_train=32, num_val=8, image_size=128)
    files = sorted(paths.root.glob("train-*.tfrecord"))
    scan = scan_records([str(f) for f in files], num_classes=4)
    assert scan.checked == 32 and scan.bad == []


def _cfg(mode, check_records=None):
    return OmegaConf.create({"bad_records": mode, "check_records": check_records})


def test_error_mode_raises_one_line_with_file_and_index(tmp_path):
    train = write(tmp_path / "train.tfrecord", good_records(2) + [BAD["class too big"][0]])
    val = write(tmp_path / "val.tfrecord", good_records(2))
    with pytest.raises(UserError) as error:
        validate_data(_cfg("error"), {"train": str(train), "val": str(val), "num_classes": 4})
    message = str(error.value)
    assert f"{train} record 2: class id 4" in message and "data.bad_records=skip" in message
    assert "\n" not in message


def test_skip_mode_counts_and_trains_on_a_clean_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("TFODTRAIN_CACHE", str(tmp_path / "cache"))
    records = good_records(4)
    records.insert(1, BAD["box outside"][0])
    records.insert(3, BAD["missing image"][0])
    train = write(tmp_path / "train.tfrecord", records)
    val = write(tmp_path / "val.tfrecord", good_records(2))
    data = validate_data(_cfg("skip"), {"train": str(train), "val": str(val), "num_classes": 4})
    assert data["bad_records"] == {"train": 2, "val": 0}
    assert data["val"] == str(val)
    cleaned = data["train"]
    assert cleaned != str(train) and cleaned.startswith(str(tmp_path / "cache" / "clean-records"))
    assert [r for _, r in iter_records(cleaned)] == [r for i, r in iter_records(str(train)) if i not in (1, 3)]
    assert scan_records([cleaned], num_classes=4).bad == []


def test_bounded_scan_reads_the_first_records_of_every_file(tmp_path):
    first = write(tmp_path / "a.tfrecord", good_records(5))
    second = write(tmp_path / "b.tfrecord", good_records(1) + [BAD["min > max"][0]] + good_records(3))
    late = write(tmp_path / "c.tfrecord", good_records(4) + [BAD["min > max"][0]])
    scan = scan_records([str(first), str(second), str(late)], num_classes=4, max_records=6)
    assert scan.checked == 6  # two of each file
    assert [(b.path, b.index) for b in scan.bad] == [(str(second), 1)]  # c's 5th record is past the bound


def test_scan_does_not_import_tensorflow(tmp_path):
    import subprocess

    path = write(tmp_path / "t.tfrecord", good_records(2))
    code = ("import sys; from tfodtrain.data.validate import scan_records; "
            f"assert scan_records([{str(path)!r}], 4).bad == []; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_memo_scans_once(tmp_path, monkeypatch):
    train = write(tmp_path / "train.tfrecord", good_records(2))
    calls = []
    monkeypatch.setattr(validate, "_validate_split", lambda *a: calls.append(a) or (",".join(a[1]), 0))
    data = {"train": str(train), "val": str(train), "num_classes": 4}
    validate_data(_cfg("error", 7), data)
    validate_data(_cfg("error", 7), data)
    assert len(calls) == 1  # train and val are the same files here: one scan for both, then memoised
