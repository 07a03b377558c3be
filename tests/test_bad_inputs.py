"""A catalogue of bad inputs, each answered by one actionable line and exit 2, with no traceback and no
change to an existing run dir (a copy of the shared smoke run, checked by hashing every file).

All of them fail in the CLI's pre-check (config values, data files and records), before Hydra starts
the job or TensorFlow is imported, so each takes a second or two. `CATALOGUE` is the README's list.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.records import corrupt_data_crc, example, good_records, png_mask, write
from helpers.cli import run_cli

SMOKE = "+experiment=smoke"


def _tfrecord(train: str, val: str, *extra: str) -> list[str]:
    return [SMOKE, "data=tfrecord", f"data.train_path={train}", f"data.val_path={val}", "data.num_classes=4", *extra]


def catalogue(data: Path) -> list[tuple[str, list[str], str]]:
    """(what is wrong, CLI arguments, what the one line must say)."""
    good, val = str(data / "good.tfrecord"), str(data / "val.tfrecord")
    bad = {name: str(data / f"{name}.tfrecord") for name in
           ("corrupt", "missing_key", "box_outside", "box_inverted", "empty_image", "class_id", "mask_size")}
    return [
        ("no experiment", [], "no experiment chosen"),
        ("unknown experiment", ["+experiment=ssdd"], "unknown experiment 'ssdd'; available:"),
        ("unknown override key", [SMOKE, "trainer.batchsize=4"], "trainer.batchsize"),
        ("wrong type", [SMOKE, "trainer.batch_size=eight"], "trainer.batch_size='eight' is not an integer"),
        ("out of range", [SMOKE, "trainer.steps=0"], "trainer.steps=0 must be at least 1"),
        ("input size not a multiple of 32", [SMOKE, "model.input_size=300"], "must be a multiple of 32"),
        ("invalid dtype name", [SMOKE, "trainer.mixed_precision=float17"],
         "trainer.mixed_precision='float17' is not one of"),
        ("invalid float64 policy", [SMOKE, "data.float64=float32"],
         "data.float64='float32' is not one of: cast, error, allow"),
        ("negative budget", [SMOKE, "memory.budget_mb=-512"], "memory.budget_mb=-512 must be at least 1"),
        ("budget not a number", [SMOKE, "memory.budget_mb=2GB"], "memory.budget_mb='2GB' is not a number"),
        ("bad guard mode", [SMOKE, "guard.mode=panic"], "guard.mode='panic' is not one of"),
        ("bad guard setting value", [SMOKE, "+guard.settings.horizon_s=-60"], "guard.settings: horizon_s must be >= 0"),
        ("unknown guard setting", [SMOKE, "+guard.settings.horizon=60"], "guard.settings: unknown setting 'horizon'"),
        ("auto batch without pre-flight", [SMOKE, "trainer.batch_size=auto", "trainer.preflight=false"],
         "trainer.batch_size=auto needs trainer.preflight=true"),
        ("data path not set", [SMOKE, "data=tfrecord", "data.num_classes=4"], "data.train_path must be set"),
        ("data path matches nothing", _tfrecord(str(data / "nope-*.tfrecord"), val), "matches no file"),
        ("too few classes", _tfrecord(good, val)[:-1] + ["data.num_classes=1"], "data.num_classes=1 must be at least 2"),
        ("label map missing", _tfrecord(good, val, f"data.label_map={data / 'labels.json'}"), "does not exist"),
        ("corrupt TFRecord bytes", _tfrecord(bad["corrupt"], val), f"{bad['corrupt']} record 1: corrupt record data"),
        ("missing feature key", _tfrecord(bad["missing_key"], val),
         f"{bad['missing_key']} record 2: missing feature image/object/class/label"),
        ("box outside [0, 1]", _tfrecord(good, bad["box_outside"]), f"{bad['box_outside']} record 0: box 0 outside [0, 1]"),
        ("box with min > max", _tfrecord(bad["box_inverted"], val), f"{bad['box_inverted']} record 1: box 1 has min > max"),
        ("empty image", _tfrecord(bad["empty_image"], val), f"{bad['empty_image']} record 0: empty image"),
        ("class id out of range", _tfrecord(bad["class_id"], val),
         f"{bad['class_id']} record 3: class id 4 of box 0 outside 1..3"),
        ("Mask R-CNN on records without masks", ["+experiment=maskrcnn"] + _tfrecord(good, val)[1:],
         f"{good} record 0: missing feature image/object/mask"),
        ("mask of another size than its image", ["+experiment=maskrcnn"] + _tfrecord(bad["mask_size"], val)[1:],
         f"{bad['mask_size']} record 1: mask 1 is 16x16 pixels, the image 32x32"),
    ]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("bad-data")
    write(data / "good.tfrecord", good_records(4))
    write(data / "val.tfrecord", good_records(2))
    corrupt_data_crc(write(data / "corrupt.tfrecord", good_records(3)), record=1)
    write(data / "missing_key.tfrecord", good_records(2) + [example(drop=("image/object/class/label",))])
    write(data / "box_outside.tfrecord", [example(boxes=((0.2, 1.4, 0.1, 0.5),))])
    write(data / "box_inverted.tfrecord", good_records(1) + [example(boxes=((0.1, 0.2, 0.1, 0.2), (0.8, 0.3, 0.1, 0.2)),
                                                                        labels=(1, 2))])
    write(data / "empty_image.tfrecord", [example(image=b"")] + good_records(1))
    write(data / "class_id.tfrecord", good_records(3) + [example(labels=(4,))])
    write(data / "mask_size.tfrecord", good_records(1, masks=True)
          + [example(boxes=((0.1, 0.5, 0.2, 0.6), (0.5, 0.9, 0.5, 0.9)), labels=(1, 2), masks=[png_mask(), png_mask(16)])])
    return data


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_every_bad_input_gets_one_line_and_exit_2_and_leaves_the_run_dir_alone(smoke_run, bad_data, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    assert any((run_dir / "checkpoints").glob("ckpt-*.index"))
    before = _hashes(run_dir)
    cases = catalogue(bad_data)
    assert len(cases) >= 12

    def run(case):
        started = time.monotonic()
        result = run_cli(case[1], run_dir=run_dir, timeout=120)
        return case, result, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(run, cases))
    failures = []
    for (what, args, expected), result, seconds in outcomes:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problems = []
        if result.returncode != 2:
            problems.append(f"exit {result.returncode}")
        if "Traceback" in result.stderr:
            problems.append("traceback")
        if len(lines) != 1 or not lines[0].startswith("tfodtrain: error: "):
            problems.append(f"not one error line: {lines[-3:]}")
        elif expected not in lines[0]:
            problems.append(f"says {lines[0]!r}, expected {expected!r}")
        if problems:
            failures.append(f"{what} ({' '.join(args)}): {'; '.join(problems)}")
        print(f"{what} [{seconds:.1f} s]: {lines[-1] if lines else ''}")
    assert not failures, "\n".join(failures)
    assert _hashes(run_dir) == before
