"""Bad records found before training: a scan of the TFRecords that names the file and record.

The checks are those a detection record needs in Model Garden's decoder, in the Object Detection API
layout: intact TFRecord framing (length and data CRC-32C), a parseable `tf.train.Example`,
`image/encoded` present and a readable, non-empty image (its header only), the four
`image/object/bbox/*` lists and `image/object/class/label` all present (or all absent: an image without
objects) and of equal length, boxes inside [0, 1] with min <= max, and class ids in
1..`data.num_classes`-1 (Model Garden's `num_classes` counts the background).

The scan is pure Python (no TensorFlow): the CLI runs it before anything is built or written, so a bad
record costs the user a second, not a model build. Per split it reads at most `data.check_records`
records (null: all), the first ones of every file, so each file is opened and its framing checked;
records past that bound are left to TensorFlow's reader (which checks the CRC) and Model Garden's decoder.

`data.bad_records=error` (default): the first bad record stops the run, one line, exit 2.
`data.bad_records=skip`: bad records are counted, logged, and left out: each file holding one is copied
without them into the cache (`<cache>/clean-records/`), and training reads the copy.

Example:
    >>> scan = scan_records(["/data/train-00000.tfrecord"], num_classes=4)
    >>> scan.bad[:1]   # [BadRecord(path='/data/train-00000.tfrecord', index=17, problem='box 0 ...')]
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import struct
from pathlib import Path
from typing import Iterator

from tfodtrain.exit_codes import UserError, first_line

log = logging.getLogger(__name__)

BOX_KEYS = ("image/object/bbox/xmin", "image/object/bbox/xmax", "image/object/bbox/ymin", "image/object/bbox/ymax")
LABEL_KEY = "image/object/class/label"
MASK_KEY = "image/object/mask"
IMAGE_KEY = "image/encoded"
_EPSILON = 1e-6  # float32 rounding of coordinates written as exactly 0 or 1
_memo: dict = {}  # one scan per process: the CLI's pre-check and train() share it


# --------------------------------------------------------------------------------------------------
# TFRecord framing and tf.train.Example, without TensorFlow


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class CorruptRecord(Exception):
    """The framing of a TFRecord file is broken at a record."""

    def __init__(self, index: int, problem: str, resumable: bool):
        super().__init__(problem)
        self.index = index
        self.resumable = resumable  # False: the records after this one cannot be located


def iter_records(path: str, limit: int | None = None) -> Iterator[tuple[int, bytes | CorruptRecord]]:
    """(index, record bytes) of a TFRecord file, or (index, CorruptRecord) where a record is damaged.

    A bad data CRC damages one record (reading goes on); a bad length or a truncated file ends it.
    """
    with open(path, "rb") as f:
        index = 0
        while limit is None or index < limit:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                yield index, CorruptRecord(index, "truncated record header (the file ends mid-record)", False)
                return
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(header[:8]) != length_crc:
                yield index, CorruptRecord(index, "corrupt record length (CRC mismatch): the file is damaged "
                                                  "from here on", False)
                return
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                yield index, CorruptRecord(index, "truncated record (the file ends mid-record)", False)
                return
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                yield index, CorruptRecord(index, "corrupt record data (CRC mismatch)", True)
            else:
                yield index, data
            index += 1


def write_records(path: Path, records) -> None:
    """Write raw records in the TFRecord framing TensorFlow reads."""
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data)))


_example_class = None


def example_class():
    """`tf.train.Example` (tensorflow/core/example/{example,feature}.proto) built from its schema with
    protobuf's own runtime, in a private descriptor pool: the same wire format without importing TensorFlow."""
    global _example_class
    if _example_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fdp = descriptor_pb2.FileDescriptorProto(name="tfodtrain_example.proto", package="tfodtrain.records")
        label, f = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto

        def message(name, *fields, map_entry=False):
            m = fdp.message_type.add(name=name)
            for number, (fname, ftype, flabel, type_name, packed) in enumerate(fields, start=1):
                field = m.field.add(name=fname, number=number, type=ftype, label=flabel)
                if type_name:
                    field.type_name = type_name
                if packed:
                    field.options.packed = True
            return m

        rep, opt = label.LABEL_REPEATED, label.LABEL_OPTIONAL
        message("BytesList", ("value", f.TYPE_BYTES, rep, None, False))
        message("FloatList", ("value", f.TYPE_FLOAT, rep, None, True))
        message("Int64List", ("value", f.TYPE_INT64, rep, None, True))
        feature = message("Feature", ("bytes_list", f.TYPE_MESSAGE, opt, ".tfodtrain.records.BytesList", False),
                          ("float_list", f.TYPE_MESSAGE, opt, ".tfodtrain.records.FloatList", False),
                          ("int64_list", f.TYPE_MESSAGE, opt, ".tfodtrain.records.Int64List", False))
        feature.oneof_decl.add(name="kind")
        for field in feature.field:
            field.oneof_index = 0
        features = message("Features", ("feature", f.TYPE_MESSAGE, rep, ".tfodtrain.records.Features.FeatureEntry",
                                        False))
        entry = features.nested_type.add(name="FeatureEntry")
        entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=opt)
        entry.field.add(name="value", number=2, type=f.TYPE_MESSAGE, label=opt, type_name=".tfodtrain.records.Feature")
        entry.options.map_entry = True
        message("Example", ("features", f.TYPE_MESSAGE, opt, ".tfodtrain.records.Features", False))
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _example_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("tfodtrain.records.Example"))
    return _example_class


# --------------------------------------------------------------------------------------------------
# What a detection record must satisfy


def _values(feature, kind: str):
    if feature.WhichOneof("kind") != kind:
        return None
    return getattr(feature, kind).value


def check_example(data: bytes, num_classes: int, masks: bool = False) -> str | None:
    """The first problem of one serialized record, or None when Model Garden can train on it
    (`masks`: a Mask R-CNN, which also needs an instance mask per box)."""
    from google.protobuf.message import DecodeError
    from PIL import Image, UnidentifiedImageError

    example = example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError:
        return "not a tf.train.Example (protobuf decode error)"
    feature = example.features.feature
    if IMAGE_KEY not in feature:
        return f"missing feature {IMAGE_KEY}"
    encoded = _values(feature[IMAGE_KEY], "bytes_list")
    if encoded is None or len(encoded) != 1:
        return f"{IMAGE_KEY} must hold one bytes value (the encoded image)"
    if not encoded[0]:
        return f"empty image ({IMAGE_KEY} has 0 bytes)"
    try:
        width, height = Image.open(io.BytesIO(encoded[0])).size  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return f"{IMAGE_KEY} is not a readable image ({first_line(error, 80)})"
    if width <= 0 or height <= 0:
        return f"empty image ({width}x{height} pixels)"
    for key in ("image/height", "image/width"):
        if key in feature:
            size = _values(feature[key], "int64_list")
            if size is not None and len(size) == 1 and size[0] == 0:
                return f"empty image ({key} is 0)"

    present = [k for k in (*BOX_KEYS, LABEL_KEY) if k in feature]
    if not present:
        return None  # an image without objects
    if len(present) < 5:
        missing = next(k for k in (*BOX_KEYS, LABEL_KEY) if k not in feature)
        return f"missing feature {missing} (the other box features are present)"
    coords = {}
    for key in BOX_KEYS:
        values = _values(feature[key], "float_list")
        if values is None:
            return f"{key} must be a float list"
        coords[key.rsplit("/", 1)[1]] = list(values)
    labels = _values(feature[LABEL_KEY], "int64_list")
    if labels is None:
        return f"{LABEL_KEY} must be an int64 list"
    counts = {len(v) for v in coords.values()} | {len(labels)}
    if len(counts) > 1:
        return f"box features and {LABEL_KEY} differ in length ({', '.join(f'{k} {len(v)}' for k, v in coords.items())}, labels {len(labels)})"
    for i, (xmin, xmax, ymin, ymax) in enumerate(zip(coords["xmin"], coords["xmax"], coords["ymin"], coords["ymax"])):
        box = f"xmin={xmin:.4g} xmax={xmax:.4g} ymin={ymin:.4g} ymax={ymax:.4g}"
        if not all(math.isfinite(v) and -_EPSILON <= v <= 1 + _EPSILON for v in (xmin, xmax, ymin, ymax)):
            return f"box {i} outside [0, 1] ({box}; boxes are normalised by the image size)"
        if xmin > xmax or ymin > ymax:
            return f"box {i} has min > max ({box})"
    for i, label in enumerate(labels):
        if not 1 <= label <= num_classes - 1:
            return (f"class id {label} of box {i} outside 1..{num_classes - 1} (data.num_classes={num_classes} "
                    "counts the background: raise it or fix the label)")
    return _check_masks(feature, len(labels), (width, height)) if masks else None


def _check_masks(feature, boxes: int, image_size: tuple[int, int]) -> str | None:
    """One PNG mask per box, each of the image's size (headers only)."""
    from PIL import Image, UnidentifiedImageError

    hint = "(the model has masks: write them with scripts/coco_to_tfrecord.py --masks, or train without model.masks)"
    if MASK_KEY not in feature:
        return f"missing feature {MASK_KEY} {hint}" if boxes else None
    encoded = _values(feature[MASK_KEY], "bytes_list")
    if encoded is None:
        return f"{MASK_KEY} must be a list of PNG-encoded masks, one per box"
    if len(encoded) != boxes:
        return f"{MASK_KEY} holds {len(encoded)} masks for {boxes} boxes: give one mask per box"
    for i, png in enumerate(encoded):
        try:
            size = Image.open(io.BytesIO(png)).size
        except (UnidentifiedImageError, OSError, ValueError) as error:
            return f"mask {i} is not a readable PNG ({first_line(error, 80)})"
        if size != image_size:
            return (f"mask {i} is {size[0]}x{size[1]} pixels, the image {image_size[0]}x{image_size[1]}: "
                    "a mask covers the whole image")
    return None


# --------------------------------------------------------------------------------------------------
# Scans


@dataclasses.dataclass(frozen=True)
class BadRecord:
    path: str
    index: int  # 0-based position of the record in its file
    problem: str

    def describe(self) -> str:
        return f"{self.path} record {self.index}: {self.problem}"


@dataclasses.dataclass
class Scan:
    checked: int = 0
    bad: list = dataclasses.field(default_factory=list)  # BadRecord, in file order
    unreadable_tails: list = dataclasses.field(default_factory=list)  # files whose end could not be read


def scan_records(files: list[str], num_classes: int, max_records: int | None = None,
                 stop_at_first: bool = False, masks: bool = False) -> Scan:
    """Check up to `max_records` records (the first ones of every file; None: all) of these files."""
    scan = Scan()
    per_file = None if max_records is None else max(1, math.ceil(max_records / max(len(files), 1)))
    for path in files:
        for index, record in iter_records(path, per_file):
            scan.checked += 1
            if isinstance(record, CorruptRecord):
                problem = record
                scan.bad.append(BadRecord(path, index, str(problem)))
                if not problem.resumable:
                    scan.unreadable_tails.append(path)
            else:
                problem = check_example(record, num_classes, masks)
                if problem:
                    scan.bad.append(BadRecord(path, index, problem))
            if scan.bad and stop_at_first:
                return scan
    return scan


def _clean_copy(path: str, bad_indices: set[int], cache_root: Path) -> str:
    """A copy of `path` without the bad records (kept in the cache, keyed by the file and the records left out)."""
    stat = os.stat(path)
    key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{sorted(bad_indices)}"
    target = cache_root / hashlib.sha1(key.encode()).hexdigest()[:12] / Path(path).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        write_records(tmp, (r for i, r in iter_records(path) if i not in bad_indices and isinstance(r, bytes)))
        os.replace(tmp, target)
    return str(target)


def _cache_root() -> Path:
    return Path(os.environ.get("TFODTRAIN_CACHE") or "~/.cache/tfodtrain").expanduser() / "clean-records"


def validate_data(data_cfg, data: dict, masks: bool = False) -> dict:
    """Scan the train and val files of `data` (from `check_tfrecord_inputs`); raise on the first bad record
    (`data.bad_records=error`) or return `data` with the bad records left out and counted (`skip`).
    `masks`: the model has masks (model.masks), so each record must hold one per box."""
    mode = data_cfg.get("bad_records", "error")
    max_records = data_cfg.get("check_records", None)
    if max_records == 0:
        return data
    num_classes = int(data["num_classes"])
    result = dict(data, bad_records={})
    for split in ("train", "val"):
        files = data[split].split(",")
        key = (tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files), num_classes, mode, max_records,
               masks)
        if key not in _memo:
            _memo[key] = _validate_split(split, files, num_classes, mode, max_records, masks)
        result[split], result["bad_records"][split] = _memo[key]
    return result


def _validate_split(split: str, files: list[str], num_classes: int, mode: str, max_records,
                    masks: bool = False) -> tuple[str, int]:
    scan = scan_records(files, num_classes, max_records, stop_at_first=(mode == "error"), masks=masks)
    if scan.bad and mode == "error":
        raise UserError(f"bad {split} record: {scan.bad[0].describe()}; fix or remove it, "
                        "or set data.bad_records=skip to train without such records")
    if not scan.bad:
        bound = "" if max_records is None or scan.checked < max_records else f" (the first {scan.checked}; data.check_records bounds the scan)"
        log.info("data: %d %s records checked%s, none bad", scan.checked, split, bound)
        return ",".join(files), 0
    if len(scan.bad) >= scan.checked:
        raise UserError(f"every checked {split} record is bad (first: {scan.bad[0].describe()}): check the files and data.num_classes")
    by_file: dict[str, set[int]] = {}
    for bad in scan.bad:
        by_file.setdefault(bad.path, set()).add(bad.index)
    root = _cache_root()
    cleaned = [_clean_copy(f, by_file[f], root) if f in by_file else f for f in files]
    log.warning("data: skipping %d bad %s records of %d checked (first: %s)%s; training reads cleaned copies in %s",
                len(scan.bad), split, scan.checked, scan.bad[0].describe(),
                f"; unreadable after the damage: {', '.join(scan.unreadable_tails)}" if scan.unreadable_tails else "",
                root)
    for bad in scan.bad[1:20]:
        log.warning("data: skipped %s", bad.describe())
    return ",".join(cleaned), len(scan.bad)
