"""helpers/resident_pages.py: the session's files kept in memory for the slow tests' processes (Linux only)."""

from __future__ import annotations

import os
import sys

import pytest

from helpers import resident_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mlock and /proc/self/maps: Linux")


def _locked_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmLck:"))


def test_lock_maps_and_locks_whole_files_and_passes_over_empty_and_missing_ones(tmp_path):
    data = tmp_path / "library.so"
    data.write_bytes(os.urandom(300_000))
    (tmp_path / "empty.pyc").write_bytes(b"")
    before = _locked_kib()
    files, locked = resident_pages.lock([str(data), str(tmp_path / "empty.pyc"), str(tmp_path / "missing.so")])
    if files == 0:
        pytest.skip("mlock is refused for this user (RLIMIT_MEMLOCK): the locker ends and the suite runs without it")
    assert (files, locked) == (1, 300_000)
    assert _locked_kib() - before >= 300_000 // 1024  # its pages, rounded up to whole pages


def test_loaded_files_name_the_shared_libraries_and_the_modules_imported():
    import json  # noqa: F401 - a module whose file is listed

    files = resident_pages.loaded_files()
    assert any(path.endswith((".pyc", ".py")) and os.sep + "json" + os.sep in path for path in files)
    assert any(".so" in os.path.basename(path) for path in files)
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in files)
