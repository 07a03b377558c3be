"""Lists made by C code and left (partly) unfilled, as TensorFlow leaves some in the heap: their empty slots are
NULL, and reading one crashes the process. Made through ctypes, never touched from Python."""

from __future__ import annotations

import ctypes

_api = ctypes.pythonapi
_api.PyList_New.restype, _api.PyList_New.argtypes = ctypes.py_object, [ctypes.c_ssize_t]
_api.PyList_SetItem.restype, _api.PyList_SetItem.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_ssize_t,
                                                                            ctypes.py_object]


def unfilled_list(length: int) -> list:
    """`PyList_New(length)` with no item set: every item is NULL."""
    return _api.PyList_New(length)


def partly_filled_list(length: int, index: int, item) -> list:
    """`PyList_New(length)` with only `item` at `index` set; it refers to `item` (a referrer the GC sees)."""
    made = _api.PyList_New(length)
    _api.Py_IncRef(ctypes.py_object(item))  # PyList_SetItem steals a reference
    if _api.PyList_SetItem(made, index, item) != 0:
        raise IndexError(f"PyList_SetItem({length}-item list, {index}) failed")
    return made
