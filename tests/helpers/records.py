"""Tiny detection TFRecords for tests, good and deliberately bad, written without TensorFlow."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tfodtrain.data.validate import example_class, write_records


def jpeg(size: int = 32, colour=(90, 140, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="JPEG")
    return out.getvalue()


def png_mask(size: int = 32, height: int | None = None) -> bytes:
    """A PNG instance mask (0/1, a filled square in the middle), `size` wide and `height` (default `size`) high."""
    height = height or size
    mask = Image.new("L", (size, height), 0)
    mask.paste(1, (size // 4, height // 4, 3 * size // 4, 3 * height // 4))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def example(image: bytes | None = None, boxes=((0.1, 0.5, 0.2, 0.6),), labels=(1,), drop=(), extra=None,
            masks=None) -> bytes:
    """A serialized tf.train.Example; boxes are (xmin, xmax, ymin, ymax); `drop` leaves feature keys out;
    `masks`: PNG bytes written as image/object/mask."""
    e = example_class()()
    feature = e.features.feature
    feature["image/encoded"].bytes_list.value.append(jpeg() if image is None else image)
    feature["image/format"].bytes_list.value.append(b"jpeg")
    feature["image/height"].int64_list.value.append(32)
    feature["image/width"].int64_list.value.append(32)
    for i, key in enumerate(("xmin", "xmax", "ymin", "ymax")):
        feature[f"image/object/bbox/{key}"].float_list.value.extend([b[i] for b in boxes])
    feature["image/object/class/label"].int64_list.value.extend(labels)
    if masks is not None:
        feature["image/object/mask"].bytes_list.value.extend(masks)
    for key in drop:
        del feature[key]
    for key, value in (extra or {}).items():
        feature[key].bytes_list.value.append(value)
    return e.SerializeToString()


def write(path: Path, records: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_records(path, records)
    return path


def good_records(n: int = 4, masks: bool = False) -> list[bytes]:
    """`n` records of two boxes each (`masks`: with a PNG instance mask per box)."""
    return [example(boxes=((0.1, 0.5, 0.2, 0.6), (0.5, 0.9, 0.5, 0.9)), labels=(1, 3),
                    masks=[png_mask(), png_mask()] if masks else None) for _ in range(n)]


def corrupt_data_crc(path: Path, record: int = 1) -> Path:
    """Flip one byte inside record `record`'s data (its data CRC no longer matches)."""
    data = bytearray(path.read_bytes())
    offset = 0
    for _ in range(record):
        length = int.from_bytes(data[offset:offset + 8], "little")
        offset += 12 + length + 4
    data[offset + 12 + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    return path
