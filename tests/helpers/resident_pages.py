"""Keeps the files a training process loads in memory for the test session: `python resident_pages.py HOME PID`.

Why: on the 2-core machines this suite runs on, the page cache is reclaimed within a minute or two (2026-12-05:
TensorFlow's 972 MiB library read in 70 s, and again in 83 s straight after; 2.7 GB cached with 21 GB free).
Every process that imports TensorFlow then reads its libraries and modules (about 2 GB) from disk again:
`import tensorflow, official.vision` took 54-101 s for 12 s of CPU, a smoke run 131-297 s; with those files
locked in memory, 14 s and 55 s. The slow tests start dozens of such processes.

It imports what a training process imports, maps every shared library and module file that loaded and locks
them in memory (mlock), then waits until the session's main process PID is gone; the main process also kills
it at the session's end (`SessionRuns.kill_unfinished`: it is kept like a session run, HOME/pid, no
result.json). Best effort: where locking is refused (a user's RLIMIT_MEMLOCK), it ends, and the suite runs as
it would without it. `TFODTRAIN_TEST_RESIDENT_PAGES=0` turns it off.

Example (conftest.py, once per session):
    keep_resident(runs.root / NAME, main_pid)
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

NAME = "resident-pages"
OFF_VARIABLE = "TFODTRAIN_TEST_RESIDENT_PAGES"
LIFETIME_S = 3 * 3600  # the suite's own limit is 90 minutes: a lost session does not lock memory for long
PROT_READ, MAP_SHARED = 1, 1


def keep_resident(home: Path, main_pid: int) -> bool:
    """Start the locker for the session unless a process of the session already has (an atomic mkdir of
    `home`), or it is turned off. True where this call started it."""
    if os.environ.get(OFF_VARIABLE) == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        home.mkdir()
    except FileExistsError:
        return False
    with open(home / "output.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, str(home), str(main_pid)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    (home / "pid").write_text(str(proc.pid))
    return True


def loaded_files() -> list[str]:
    """Every shared library this process has mapped and every module file it has imported."""
    files = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/") and ".so" in parts[5]:
                files.add(parts[5])
    for module in list(sys.modules.values()):
        for path in (getattr(module, "__cached__", None), getattr(module, "__file__", None)):
            if path and os.path.isfile(path):
                files.add(path)
    return sorted(files)


def lock(paths: list[str]) -> tuple[int, int]:
    """Map each file and lock its pages in memory; (files locked, bytes locked). The mappings last as long as
    this process. Stops at the first refusal (a memlock limit refuses every later one too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    files = locked = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            address = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                continue
            if libc.mlock(address, size) != 0:
                print(f"resident pages: mlock refused ({os.strerror(ctypes.get_errno())}) after {files} files",
                      flush=True)
                break
            files, locked = files + 1, locked + size
        finally:
            os.close(fd)
    return files, locked


def main(home: Path, main_pid: int) -> int:
    started = time.monotonic()
    import tfodtrain.evaluate  # noqa: F401 - what the training, evaluation and export processes import
    import tfodtrain.export  # noqa: F401
    import tfodtrain.supervise  # noqa: F401
    import tfodtrain.train  # noqa: F401

    files, locked = lock(loaded_files())
    print(f"resident pages: {files} files, {locked / 2**20:.0f} MiB locked in {time.monotonic() - started:.0f} s",
          flush=True)
    if not files:
        return 0
    while psutil.pid_exists(main_pid) and time.monotonic() - started < LIFETIME_S:
        time.sleep(2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
