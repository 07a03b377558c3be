"""Which Python objects accumulate: a census of the garbage collector's objects, compared over steps.

A host-memory leak in a training loop is mostly a Python container that keeps what it should drop: a
list of every batch's detections, a dict of tensors keyed by step. A census counts the objects the
garbage collector tracks, by type, and names a non-empty list, tuple, set or deque by what it holds
(`list of ndarray`); untracked objects held by such containers (NumPy arrays, strings, numbers) are
counted from them, so `ndarray` shows up too. Two censuses give each kind's growth per 100 steps.

It costs one pass over the tracked objects (a fraction of a second in a TensorFlow process), so it is
taken rarely: a baseline once training runs, then only when the leak guard warns or aborts (at most once
a minute), never per step. tracemalloc would name allocation sites, but it slows every allocation for the
whole run; the census costs nothing between calls. Framework-free.

Example:
    >>> watch = ObjectGrowth()
    >>> watch.baseline(step=10)
    >>> ...                                            # training leaks
    >>> watch.report(step=400)["growing"][0]
    {'kind': 'list of ndarray', 'count': 3120, 'growth': 3100, 'per_100_steps': 794.9}
"""

from __future__ import annotations

import collections
import gc
import time

_CONTAINERS = (list, tuple, set, frozenset, collections.deque)


def filled_items(obj) -> list | None:
    """The items of a list or tuple, read through the GC's traversal, or None for one that C code made and left
    unfilled.

    Such a list holds NULLs, and reading one of them crashes the process: a list of 5 NULLs was left in the heap
    after TensorFlow's export, restore and warm starts of tests/test_use.py, and a census after them segfaulted.
    The traversal skips NULLs, so it gives fewer items than the length."""
    present = gc.get_referents(obj)
    return present if len(present) == len(obj) else None


def first_item(obj, kind) -> tuple:
    """(its first item,) for a non-empty container of `kind` (its exact type), () for a list or tuple left unfilled."""
    if kind is list or kind is tuple:
        present = filled_items(obj)
        return tuple(present[:1]) if present is not None else ()
    return (next(iter(obj)),)


def count_object(counts: collections.Counter, obj, kind) -> bool:
    """Counts `obj` in `counts` under its kind: the type name, or `list of X` for a non-empty container whose first
    item is an X (and its items as X too when the GC does not track them: arrays, strings). False for a list or tuple
    left unfilled (counted by its type alone): its items must not be read."""
    if kind in _CONTAINERS and obj:
        firsts = first_item(obj, kind)
        if not firsts:
            counts[kind.__name__] += 1
            return False
        item = type(firsts[0]).__name__
        counts[f"{kind.__name__} of {item}"] += 1
        if not gc.is_tracked(firsts[0]):  # e.g. ndarray, str: not in gc.get_objects, count them from here
            counts[item] += len(obj)
        return True
    counts[kind.__name__] += 1
    return True


def census() -> collections.Counter:
    """Objects by kind (`count_object`): the type name, or `list of X`."""
    counts: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        count_object(counts, obj, type(obj))
    return counts


def growth(before: collections.Counter, after: collections.Counter, steps: int, top: int = 5,
           minimum: int = 20) -> list[dict]:
    """The `top` kinds that grew most (by at least `minimum` objects), with their rate per 100 steps."""
    grown = [(kind, after[kind] - before.get(kind, 0)) for kind in after]
    grown = sorted((g for g in grown if g[1] >= minimum), key=lambda g: -g[1])[:top]
    return [{"kind": kind, "count": after[kind], "growth": delta,
             "per_100_steps": round(100.0 * delta / steps, 1) if steps > 0 else None} for kind, delta in grown]


def describe(growing: list[dict]) -> str:
    """`list of ndarray +512 objects per 100 steps, ndarray +1024 ...` for logs."""
    return ", ".join(f"{g['kind']} +{g['per_100_steps']:g} objects per 100 steps" if g["per_100_steps"] is not None
                     else f"{g['kind']} +{g['growth']} objects" for g in growing)


class ObjectGrowth:
    """A baseline census and, on request (rate-limited), a census compared with it."""

    def __init__(self, min_interval_s: float = 60.0, clock=time.monotonic):
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.base: collections.Counter | None = None
        self.base_step: int | None = None
        self.last: dict | None = None
        self._last_time: float | None = None

    def baseline(self, step: int, counts: collections.Counter | None = None) -> None:
        """`counts`: a census already taken (tfodtrain.memory.census shares its pass over the objects)."""
        self.base, self.base_step = (census() if counts is None else counts), step

    def report(self, step: int, force: bool = False, counts: collections.Counter | None = None) -> dict | None:
        """Growth since the baseline; the previous report if the last census is under a minute old.
        `counts`: a census already taken (then it is not taken again)."""
        if self.base is None:
            return None
        now = self.clock()
        if not force and self.last is not None and now - self._last_time < self.min_interval_s:
            return self.last
        started = time.perf_counter()
        growing = growth(self.base, census() if counts is None else counts, step - self.base_step)
        self._last_time = now
        self.last = {"since_step": self.base_step, "step": step, "growing": growing,
                     "census_seconds": round(time.perf_counter() - started, 3)}
        return self.last
