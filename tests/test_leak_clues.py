"""Leak clues: the Python objects that accumulate are named with their rate; a retracing tf.function is warned about."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.c_lists import unfilled_list
from tfodtrain.callbacks.clues import LeakClues, RetraceWatch
from tfodtrain.memory.pyobjects import ObjectGrowth, census, describe, growth


def test_census_names_containers_by_what_they_hold():
    kept = [[np.zeros(3), np.zeros(3)] for _ in range(50)]
    counts = census()
    assert counts["list of ndarray"] >= 50
    assert counts["ndarray"] >= 100  # ndarrays are not tracked by gc: counted from the lists holding them
    del kept


def test_growth_names_the_kinds_growing_fastest_per_100_steps():
    watch = ObjectGrowth(min_interval_s=0)
    watch.baseline(step=10)
    kept = []
    for _ in range(200):  # "200 steps", each keeping one list of 2 arrays
        kept.append([np.ones(4), np.ones(4)])
    report = watch.report(step=210)
    kinds = {g["kind"]: g for g in report["growing"]}
    assert kinds["list of ndarray"]["growth"] >= 200 and kinds["list of ndarray"]["per_100_steps"] >= 100
    assert kinds["ndarray"]["per_100_steps"] >= 200
    assert report["growing"][0]["kind"] in ("ndarray", "list of ndarray")
    assert "list of ndarray +" in describe(report["growing"]) and "objects per 100 steps" in describe(report["growing"])
    del kept


def test_report_is_rate_limited():
    now = [0.0]
    watch = ObjectGrowth(min_interval_s=60, clock=lambda: now[0])
    watch.baseline(step=0)
    first = watch.report(step=10)
    assert watch.report(step=20) is first  # a second census within the minute is not taken
    now[0] = 61.0
    assert watch.report(step=30) is not first


def test_growth_ignores_small_changes():
    assert growth({"dict": 100}, {"dict": 110}, steps=10) == []


def test_retracing_train_function_is_warned_about():
    import tensorflow as tf

    class FakeModel:  # what RetraceWatch reads of a Keras model: its train_function
        def __init__(self):
            self.train_function = tf.function(lambda x: x * 2)

    watch, model = RetraceWatch(), FakeModel()
    model.train_function(tf.constant(1.0))
    assert watch.check(step=1, model=model) is None  # first look: the baseline
    model.train_function(tf.constant([1.0]))  # a new shape: one retrace
    assert watch.check(step=2, model=model) is None
    model.train_function(tf.constant([[1.0]]))
    warning = watch.check(step=3, model=model)
    assert warning and "traced 2 more times since step 1" in warning
    assert watch.to_dict()["retraces"] == 2
    model.train_function(tf.constant(2.0))  # same shape as before: no new trace, no new warning
    assert watch.check(step=4, model=model) is None


def test_leak_clues_report_for_the_abort_report():
    clues = LeakClues()
    clues.observe(step=1, model=object())
    kept = [[np.zeros(2)] for _ in range(100)]
    report = clues.report(step=101)
    assert report["python_objects"]["since_step"] == 1
    assert any(g["kind"] == "list of ndarray" for g in report["python_objects"]["growing"])
    assert report["retracing"]["train_function_traces"] is None  # no tf.function on this model
    del kept


# --------------------------------------------------------------------------------------------------
# Planted leaks in a small tf_keras fit: the census names the holder, its line, tensors and retracing.
# A `Driver` callback plays the guard: the baseline at the first step, a "warning" census, the "abort" one.

EAGER_KEPT: list = []  # (a): a module-level list of eager tensors


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if text.endswith(marker))


def fit_with_clues(callbacks, steps: int = 80, warn_at: int = 40, model=None):
    import tensorflow as tf
    import tf_keras

    clues = LeakClues()
    seen = {}

    class Driver(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = batch + 1
            if step == 1:
                clues.observe(step, self.model)
            elif step == warn_at:
                seen["warning"] = clues.describe(step)
            elif step == steps:
                seen["abort"] = clues.report(step)

    if model is None:
        model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(4,))])
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensors((tf.ones([2, 4]), tf.ones([2, 1]))).repeat(steps)
    try:
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[*callbacks, Driver()])
    finally:
        clues.stop()
    return seen["warning"], seen["abort"], model


def holder(report, path):
    found = [h for h in report["holders"] if h["path"] == path]
    assert found, [h["path"] for h in report["holders"]]
    return found[0]


@pytest.mark.slow
def test_a_module_list_of_eager_tensors_appended_by_a_callback():
    import tensorflow as tf
    import tf_keras

    class KeepTensors(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            EAGER_KEPT.append(tf.fill([128, 128], float(batch)))  # ADDS-EAGER

    try:
        warning, report, _ = fit_with_clues([KeepTensors()])
    finally:
        kept = len(EAGER_KEPT)
        EAGER_KEPT.clear()
    h = holder(report, f"{__name__}.EAGER_KEPT")
    assert h["kind"] == "list" and h["items"] == kept == 80 and h["item_types"] == "EagerTensor"
    assert 80 * 128 * 128 * 4 <= h["bytes"] < 1.3 * 80 * 128 * 128 * 4  # the tensors' elements x 4 bytes
    assert h["growth_per_100_steps"] == 100.0
    assert h["added_at"] == f"tests/test_leak_clues.py:{line_of('# ADDS-EAGER')} in " \
                            "test_a_module_list_of_eager_tensors_appended_by_a_callback.<locals>.KeepTensors.on_train_batch_end"
    # TensorFlow allocates tensors outside Python's allocator: tracemalloc cannot see them, the bytecode can
    assert h["added_at_source"] == "bytecode" and "outside Python's allocator" in h["added_at_note"]
    assert f"held by {__name__}.EAGER_KEPT (list, 40 items" in warning  # the warning's census, before the line
    cpu = report["tensors"]["devices"]["CPU:0"]
    assert cpu["tensors"] >= 80 and cpu["tensor_bytes"] >= 80 * 128 * 128 * 4
    grown = report["tensors"]["growing"][0]
    assert (grown["kind"], grown["dtype"], grown["shape"]) == ("tensor", "float32", "(128, 128)") and grown["growth"] >= 40


@pytest.mark.slow
def test_b_a_dict_keyed_by_step_in_the_closure_of_a_lambda_callback():
    import tf_keras

    def make_callback():
        by_step = {}

        def remember(batch, logs):
            by_step[batch] = np.ones(16384)  # ADDS-CLOSURE

        return tf_keras.callbacks.LambdaCallback(on_train_batch_end=remember)

    _, report, _ = fit_with_clues([make_callback()])
    h = holder(report, "test_b_a_dict_keyed_by_step_in_the_closure_of_a_lambda_callback.<locals>.make_callback."
                       "<locals>.remember: closure variable 'by_step'")
    assert h["kind"] == "dict" and h["items"] == 80 and h["bytes"] >= 80 * 16384 * 8
    assert h["added_at"] == f"tests/test_leak_clues.py:{line_of('# ADDS-CLOSURE')} in " \
                            "test_b_a_dict_keyed_by_step_in_the_closure_of_a_lambda_callback.<locals>.make_callback.<locals>.remember"


@pytest.mark.slow
def test_c_a_tf_function_retraced_every_step_by_a_python_int():
    import tensorflow as tf
    import tf_keras

    @tf.function
    def scaled_loss(x, step):
        return tf.reduce_sum(x) * step

    class Scale(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            scaled_loss(tf.ones([3]), batch)  # a Python int: a new trace every step

    tf.get_logger().setLevel("ERROR")  # TensorFlow's own retracing warnings
    warning, report, _ = fit_with_clues([Scale()], steps=20, warn_at=10)
    functions = report["retracing"]["functions"]
    assert functions[0]["function"] == "test_c_a_tf_function_retraced_every_step_by_a_python_int.<locals>.scaled_loss"
    assert functions[0]["traces"] == 20 and functions[0]["new_traces"] == 10
    argument = functions[0]["arguments"]
    assert [a["argument"] for a in argument] == ["step"] and argument[0]["what"] == "Python int value"
    assert "retraced" in warning and "by 'step' (Python int value: " in warning
    assert report["retracing"]["retraces"] == 0  # Keras' own training function is traced once


@pytest.mark.slow
def test_d_host_objects_held_by_an_attribute_of_the_model():
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(4,))])
    model.batch_log = []  # tf_keras wraps it in a ListWrapper: the attribute's name must still show

    class Log(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.batch_log.append({"batch": batch, "inputs": np.ones((64, 64, 3))})  # ADDS-MODEL

    _, report, _ = fit_with_clues([Log()], model=model)
    h = holder(report, "Sequential.batch_log")
    assert h["items"] == 80 and h["bytes"] >= 80 * 64 * 64 * 3 * 8
    assert h["added_at"] == f"tests/test_leak_clues.py:{line_of('# ADDS-MODEL')} in " \
                            "test_d_host_objects_held_by_an_attribute_of_the_model.<locals>.Log.on_train_batch_end"


@pytest.mark.slow
def test_a_healthy_bounded_cache_names_no_holder():
    import collections

    import tf_keras

    class Cache(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.recent = collections.deque(maxlen=32)  # full before the warning's census at step 40

        def on_train_batch_end(self, batch, logs=None):
            self.recent.append(np.ones(16384))

    warning, report, _ = fit_with_clues([Cache()])
    assert report["holders"] == [] and "held by" not in warning


def test_a_failing_census_is_one_line_and_the_guard_goes_on(caplog):
    clues = LeakClues()
    clues.observe(step=1, model=object())
    clues.census.scan = lambda: 1 / 0
    report = clues.report(step=2)
    assert report["census_error"] == "ZeroDivisionError: division by zero" and report["holders"] == []
    assert [r.getMessage() for r in caplog.records if "census" in r.getMessage()] == [
        "Leak clues: the census at step 2 failed (ZeroDivisionError: division by zero); the guard goes on"]


def test_census_counts_a_list_that_c_code_left_unfilled_by_its_kind():
    """A list of NULLs (left in the heap after test_use's TensorFlow work) segfaulted this census in the suite;
    ctypes makes one here: PyList_New(40) with no item set."""
    unfilled = unfilled_list(40)
    counts = census()
    assert counts["list"] >= 1 and len(unfilled) == 40
