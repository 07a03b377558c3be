"""A run's checkpoint files, read without TensorFlow (the supervisor and scripts/chaos.py never import it).

`tf.train.CheckpointManager` writes a checkpoint in three moves: the tensors go to `ckpt-N_temp/`, are
merged into `ckpt-N.index` + `ckpt-N.data-*`, and only then is the `checkpoint` state file rewritten
(atomically, via a temp file and a rename) to name `ckpt-N`. A kill at any moment therefore leaves the
state file naming complete checkpoints only; what a kill can leave behind is a `ckpt-N_temp/` folder,
a half-merged `ckpt-N` that the state file does not name, or a `checkpoint.tmp*` file.

`candidates()` lists what a restore should try, in order: the checkpoints the state file names, newest
first, then complete-looking `ckpt-N` files it does not name (a state file lost or damaged), newest first.

Example:
    >>> latest_step(run_dir / "checkpoints")       # 600, or None before the first checkpoint
    >>> [c.step for c in candidates(run_dir / "checkpoints")]
    [600, 500, 400]
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

from tfodtrain.exit_codes import UserError

STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's state file
PREFIX = "ckpt"  # tf.train.CheckpointManager's default checkpoint_name
_NAME = re.compile(rf"^{PREFIX}-(\d+)$")
_STATE_LINE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths):\s*"(.*)"\s*$')
_DATA_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    prefix: Path  # e.g. RUN_DIR/checkpoints/ckpt-600 (what tf.train.Checkpoint.restore takes)
    step: int  # tfodtrain numbers checkpoints by the global step

    @property
    def complete(self) -> bool:
        """The index and every data shard it needs are on disk (content is checked by the restore)."""
        index = self.prefix.with_name(self.prefix.name + ".index")
        if not index.is_file() or index.stat().st_size == 0:
            return False
        shards = list(self.prefix.parent.glob(self.prefix.name + ".data-*-of-*"))
        counts = {int(m.group(2)) for m in (_DATA_SHARD.search(p.name) for p in shards) if m}
        if len(counts) != 1:
            return False
        (total,) = counts
        present = {int(m.group(1)) for m in (_DATA_SHARD.search(p.name) for p in shards) if m}
        return present == set(range(total))


def step_of(name: str) -> int | None:
    match = _NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


def state_names(directory: Path) -> list[str]:
    """Checkpoint names in the state file, newest first; [] if there is no readable state file."""
    try:
        text = (Path(directory) / STATE_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return []
    latest, listed = None, []
    for line in text.splitlines():
        match = _STATE_LINE.match(line.strip())
        if match:
            if match.group(1) == "model_checkpoint_path":
                latest = match.group(2)
            else:
                listed.append(match.group(2))
    names = ([latest] if latest else []) + listed[::-1]
    return list(dict.fromkeys(Path(name).name for name in names))


def candidates(directory: Path) -> list[CheckpointFiles]:
    """Complete checkpoints to try restoring, newest first (see the module docstring)."""
    directory = Path(directory)
    named = [CheckpointFiles(directory / name, step) for name in state_names(directory)
             if (step := step_of(name)) is not None]
    named_prefixes = {c.prefix for c in named}
    unnamed = [CheckpointFiles(directory / p.name.removesuffix(".index"), step)
               for p in directory.glob(f"{PREFIX}-*.index")
               if (step := step_of(p.name.removesuffix(".index"))) is not None
               and directory / p.name.removesuffix(".index") not in named_prefixes]
    unnamed.sort(key=lambda c: c.step, reverse=True)
    return [c for c in named + unnamed if c.complete]


def latest_step(directory: Path) -> int | None:
    """Step of the newest complete checkpoint, as a restore would pick it first; None if there is none."""
    found = candidates(directory)
    return found[0].step if found else None


def remove_partial_saves(directory: Path) -> list[Path]:
    """Delete what a save killed midway leaves (`ckpt-N_temp/`, `checkpoint.tmp*`); returns what went."""
    directory = Path(directory)
    removed = []
    for path in list(directory.glob(f"{PREFIX}-*_temp")) + list(directory.glob(f"{STATE_FILE}.tmp*")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def remove_unlisted(directory: Path, step: int) -> None:
    """Delete the files of checkpoint `step` if the state file does not name it (a failed save's leftovers)."""
    directory = Path(directory)
    if f"{PREFIX}-{step}" in state_names(directory):
        return
    for path in directory.glob(f"{PREFIX}-{step}.*"):
        path.unlink(missing_ok=True)
    shutil.rmtree(directory / f"{PREFIX}-{step}_temp", ignore_errors=True)


def find_checkpoint(path: str | os.PathLike, what: str) -> str:
    """The checkpoint prefix named by `path`: a prefix (…/ckpt-600), a checkpoints dir or a run dir;
    `what` names the setting in the one-line error when there is none.

    Example:
        >>> find_checkpoint("runs/ssd1", "checkpoint")   # -> 'runs/ssd1/checkpoints/ckpt-600'
    """
    path = Path(path).expanduser()
    if Path(f"{path}.index").is_file():
        return str(path)
    for directory in (path, path / "checkpoints"):
        found = candidates(directory) if directory.is_dir() else []
        if found:
            return str(found[0].prefix)
    if not path.exists():
        raise UserError(f"{what}={path} does not exist: give a checkpoint (RUN_DIR/checkpoints/ckpt-N), "
                        "a checkpoints dir or a run dir")
    raise UserError(f"{what}={path} holds no checkpoint (no ckpt-N.index, no checkpoints/ with one): "
                    "train it first or point at another run")
