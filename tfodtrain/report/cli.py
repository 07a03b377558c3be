"""`python -m tfodtrain.report RUN_DIR [--out DIR]`: load the run, write the picture and the page."""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

from tfodtrain.exit_codes import BAD_INPUT, UserError
from tfodtrain.report.load import load_run
from tfodtrain.report.markdown import write_markdown
from tfodtrain.report.plots import plot_report


def _tensorboard_without_tensorflow() -> None:
    """TensorBoard's event reader imports TensorFlow when it is installed (tens of seconds on a busy
    machine) unless its `tensorboard.compat.notf` marker module exists (what TensorBoard's own
    no-TensorFlow build ships); the report needs only the pure-Python record reader."""
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def make_report(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write memory_report.png and report.md for `run_dir` into `out_dir` (default: the run dir)."""
    record = load_run(Path(run_dir))
    out_dir = Path(out_dir) if out_dir is not None else record.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"{out_dir}: not writable; pass --out DIR")
    image = plot_report(record, out_dir / "memory_report.png")
    page = write_markdown(record, out_dir / "report.md", image.name)
    return image, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfodtrain.report",
                                     description="Memory report of a tfodtrain run: memory_report.png and report.md.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run dir (hydra.run.dir of the training run)")
    parser.add_argument("--out", metavar="DIR", help="write the report here instead of into RUN_DIR")
    args = parser.parse_args(argv)
    _tensorboard_without_tensorflow()
    try:
        image, page = make_report(Path(args.run_dir), Path(args.out) if args.out else None)
    except UserError as error:
        print(f"report: {error}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {image}")
    print(f"wrote {page}")
    return 0
