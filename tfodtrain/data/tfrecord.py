"""The user's own TFRecords in the Object Detection API layout."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from tfodtrain.exit_codes import UserError


def expand_glob(pattern: str, what: str) -> list[str]:
    """The files a glob names; one clear error when there are none (before any model is built)."""
    if not pattern or not isinstance(pattern, str):
        raise UserError(f"{what} is empty: give a glob of TFRecord files, e.g. {what}='/data/train-*.tfrecord'")
    files = sorted(glob.glob(str(Path(pattern).expanduser())))
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise UserError(f"{what}='{pattern}' matches no file: check the path (globs like train-*.tfrecord are fine)")
    empty = [f for f in files if Path(f).stat().st_size == 0]
    if empty:
        raise UserError(f"{what}: {empty[0]} is empty (0 bytes): regenerate it or leave it out of the glob")
    return files


def load_label_map(path: str | None) -> dict[int, str] | None:
    if path is None:
        return None
    try:
        raw = json.loads(Path(path).expanduser().read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except FileNotFoundError:
        raise UserError(f"data.label_map='{path}' does not exist: give a JSON file like {{\"1\": \"cat\"}}") from None
    except (ValueError, AttributeError):
        raise UserError(f"data.label_map='{path}' is not a JSON object of class id -> name, e.g. {{\"1\": \"cat\"}}") from None


def check_tfrecord_inputs(data_cfg, masks: bool = False) -> dict:
    """The files, class count and label map of `data=tfrecord`, their records scanned (`masks`: each record
    must also hold one instance mask per box)."""
    train_files = expand_glob(data_cfg.train_path, "data.train_path")
    val_files = expand_glob(data_cfg.val_path, "data.val_path")
    data = {"train": ",".join(train_files), "val": ",".join(val_files),
            "num_classes": int(data_cfg.num_classes), "label_map": load_label_map(data_cfg.label_map)}
    from tfodtrain.data.validate import validate_data  # scans the records: bad ones stop the run or are skipped

    return validate_data(data_cfg, data, masks=masks)
