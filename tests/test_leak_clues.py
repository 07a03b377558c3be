"""Leak clues: the Python objects that accumulate are named with their rate; a retracing tf.function is warned about."""

from __future__ import annotations

import numpy as np

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
