"""The sample traces in tests/data/sample_traces are what scripts/make_sample_traces.py makes, and stay small."""

from __future__ import annotations

import importlib.util
import json

from helpers.repo import REPO

FOLDER = REPO / "tests" / "data" / "sample_traces"


def _script():
    spec = importlib.util.spec_from_file_location("make_sample_traces", REPO / "scripts" / "make_sample_traces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_traces_are_what_the_script_makes(tmp_path):
    _script().main(["--out", str(tmp_path)])
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in FOLDER.iterdir())
    for name in made:
        assert (tmp_path / name).read_bytes() == (FOLDER / name).read_bytes(), name


def test_sample_traces_are_small_and_labelled():
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 2 << 20
    labels = json.loads((FOLDER / "labels.json").read_text())
    assert sorted(labels) == sorted(p.name for p in FOLDER.glob("*.csv"))
    assert {label["leak"] for label in labels.values()} == {True, False}
