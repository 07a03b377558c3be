"""The leak census (framework-free): planted leaks are named by their holder, path, bytes, growth and line;
a bounded cache is not; a fast leak (one census) still names the holder and the code that adds to it."""

from __future__ import annotations

import collections

import numpy as np

from helpers.c_lists import partly_filled_list, unfilled_list
from tfodtrain.memory.census import Census, describe_holder, find_paths

KEPT_BY_MODULE: list = []


class Keeper:
    def __init__(self):
        self.kept = []

    def on_step(self, step):
        self.kept.append([np.ones(4096), np.ones(4096)])  # ADDS-TO-KEEPER


def make_hook():
    seen = {}

    def on_batch_end(batch, logs=None):
        seen[batch] = np.ones(8192)  # ADDS-TO-CLOSURE

    return on_batch_end


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if text.endswith(marker))


def by_path(result) -> dict:
    return {h["path"]: h for h in result["holders"]}


def test_three_planted_leaks_named_by_holder_bytes_growth_and_line():
    keeper, hook, cache = Keeper(), make_hook(), collections.deque(maxlen=100)
    census = Census()
    census.baseline(step=0)
    try:
        def steps(first, last):
            for step in range(first, last):
                KEPT_BY_MODULE.append(np.ones(8192))  # ADDS-TO-MODULE
                keeper.on_step(step)
                hook(step)
                cache.append(np.ones(8192))  # healthy: bounded at 100

        steps(0, 200)
        first = census.run(step=200)  # "the first warning": names the holders, starts tracemalloc
        holders = by_path(first)
        assert set(holders) == {"Keeper.kept", "make_hook.<locals>.on_batch_end: closure variable 'seen'",
                                f"{__name__}.KEPT_BY_MODULE"}, holders.keys()
        assert first["tracing"]["state"].startswith("started at step 200")
        kept = holders["Keeper.kept"]
        assert kept["kind"] == "list" and kept["items"] == 200 and kept["growth_per_100_steps"] == 100.0
        assert 200 * 2 * 4096 * 8 <= kept["bytes"] < 1.2 * 200 * 2 * 4096 * 8
        keeper_line = f"tests/test_census.py:{line_of('# ADDS-TO-KEEPER')} in Keeper.on_step"
        assert kept["added_by"] == [keeper_line]  # found in the bytecode: tracemalloc was off until now
        assert (kept["added_at"], kept["added_at_source"]) == (keeper_line, "bytecode") and "starts it" in kept["added_at_note"]

        steps(200, 300)
        second_result = census.run(step=300)
        second = by_path(second_result)  # "the abort": reads tracemalloc, stops it
        assert second["Keeper.kept"]["added_at"] == keeper_line
        assert second["Keeper.kept"]["added_at_source"] == "tracemalloc" and "added_at_note" not in second["Keeper.kept"]
        closure = second["make_hook.<locals>.on_batch_end: closure variable 'seen'"]
        assert closure["kind"] == "dict" and closure["items"] == 300 and closure["growth_per_100_steps"] == 100.0
        assert closure["added_at"] == f"tests/test_census.py:{line_of('# ADDS-TO-CLOSURE')} in make_hook.<locals>.on_batch_end"
        module = second[f"{__name__}.KEPT_BY_MODULE"]
        # allocated in this test's function (tracemalloc), appended there too: no method call on the name
        assert module["added_at"] == f"tests/test_census.py:{line_of('# ADDS-TO-MODULE')} in " \
                                     "test_three_planted_leaks_named_by_holder_bytes_growth_and_line.<locals>.steps"
        assert second_result["top_lines"][0]["at"].startswith("tests/test_census.py:")
        assert second_result["tracing"]["state"] == "read and stopped (on since step 200)"
        assert "Keeper.kept (list, 300 items, " in describe_holder(second["Keeper.kept"])
    finally:
        census.stop()
        KEPT_BY_MODULE.clear()


def test_a_bounded_cache_is_not_named():
    cache = collections.deque(maxlen=100)
    lru: collections.OrderedDict = collections.OrderedDict()
    census = Census(min_bytes=64 << 10)
    census.baseline(step=0)
    for step in range(300):
        cache.append(np.ones(8192))
        lru[step] = np.ones(8192)
        if len(lru) > 100:
            lru.popitem(last=False)
        if step in (150, 299):
            result = census.run(step=step, trace=False)
            # the deque is full at its maxlen: never named; the capped dict grew from the baseline until
            # step 100 (named at the first census only), not since
            assert [h["kind"] for h in result["holders"]] == (["OrderedDict"] if step == 150 else []), result["holders"]


def test_a_fast_leak_one_census_names_the_holder_and_the_code_that_adds_to_it():
    keeper = Keeper()
    census = Census()
    census.baseline(step=0)
    for step in range(100):
        keeper.on_step(step)
    result = census.run(step=100, trace=False, untraced_note="no warning before the abort")
    holder = by_path(result)["Keeper.kept"]
    line = f"tests/test_census.py:{line_of('# ADDS-TO-KEEPER')} in Keeper.on_step"
    assert holder["added_by"] == [line] and (holder["added_at"], holder["added_at_source"]) == (line, "bytecode")
    assert holder["added_at_note"].startswith("no warning before the abort; the line is the code that adds to it")
    assert result["tracing"]["state"] == "off"
    assert result["seconds"] < 5 and result["census_bytes"] > 0


def test_paths_look_through_wrappers_and_name_dict_keys():
    class ListWrapper:  # like tf_keras': a list set on a model is wrapped, its items in `_storage`
        def __init__(self, items):
            self._storage = items

    class Model:
        pass

    model, items = Model(), [1.5] * 50
    model.history = ListWrapper(items)
    model.caches = {"by_step": {"x": items[:]}}
    paths = find_paths([items, model.caches["by_step"]["x"]])
    assert paths[id(items)]["path"] == "Model.history"
    assert paths[id(model.caches["by_step"]["x"])]["path"] == "Model.caches['by_step']['x']"


def test_the_census_and_its_text_import_neither_tensorflow_nor_hydra():
    import subprocess
    import sys

    code = ("import sys, tfodtrain.memory.census, tfodtrain.memory.pyobjects; "
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'hydra', 'omegaconf') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_clue_text_for_the_warning_the_report_and_the_picture():
    from tfodtrain.memory.census import clues_caption, clues_markdown

    holder = {"path": "KeepDetections.kept", "kind": "list", "items": 3040, "bytes": 5 << 30, "growth_items": 800,
              "growth_per_100_steps": 800.0, "bytes_per_100_steps": 1 << 30, "added_at_source": "tracemalloc",
              "added_at": "tfodtrain/callbacks/leak_demo.py:69 in KeepDetections.on_train_batch_end"}
    retraced = {"function": "scaled_loss", "defined_at": "x.py:3", "traces": 40, "new_traces": 20,
                "arguments": [{"argument": "step", "what": "Python int value", "distinct": 40, "values": ["0", "1", "2"]}]}
    clues = {"holders": [holder], "retracing": {"functions": [retraced]},
             "tensors": {"devices": {"CPU:0": {"tensors": 3, "tensor_bytes": 12, "variables": 2, "variable_bytes": 8}}},
             "census": {"step": 96, "seconds": 1.2, "census_bytes": 6 << 20, "tracing": {"state": "off"}}}
    assert describe_holder(holder) == ("KeepDetections.kept (list, 3040 items, 5.0 GiB, +800 items per 100 steps) "
                                       "added at tfodtrain/callbacks/leak_demo.py:69 in KeepDetections.on_train_batch_end")
    assert clues_caption(clues) == ("leak held by KeepDetections.kept (list, 3040 items, 5.0 GiB), added at "
                                    "tfodtrain/callbacks/leak_demo.py:69 in KeepDetections.on_train_batch_end")
    text = clues_markdown(clues)
    assert "| `KeepDetections.kept` | list | 3040 | 5.0 GiB | +800 items, +1.0 GiB |" in text
    assert "tf.function scaled_loss (x.py:3) retraced 20 times (40 traces) by 'step' (Python int value: 0, 1, 2, ...)" in text
    assert "census at step 96: 1.2 s, its own memory 6.0 MiB" in text


def test_a_list_that_c_code_left_unfilled_is_counted_not_read():
    """A list of 5 NULLs is left in the heap after test_use's TensorFlow work (export, restore, warm starts); a
    census that read its first item segfaulted. ctypes makes one here: PyList_New(40) with no item set."""
    import gc

    unfilled = unfilled_list(40)
    assert len(unfilled) == 40 and gc.get_referents(unfilled) == []
    scan = Census(min_items=32).scan()
    assert not any(holder is unfilled for holder in scan["big"])
    assert scan["counts"]["list"] >= 1


def test_a_path_through_a_list_that_c_code_left_partly_unfilled_is_walked_without_reading_its_nulls():
    """Such a list refers to the items it holds, so it can be a referrer on a holder's path; reading its NULLs
    crashed the process. ctypes makes one here: PyList_New(3) with only its middle item set."""
    class Owner:
        pass

    owner = Owner()
    owner.held = [float(i) for i in range(50)]
    partly = partly_filled_list(3, 1, owner.held)
    paths = find_paths([owner.held])
    assert paths[id(owner.held)]["path"] == "Owner.held"
    assert len(partly) == 3
