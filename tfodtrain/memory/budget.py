"""An OOM-killer stand-in: SIGKILL this process when its memory passes a budget.

The kernel's OOM killer ends a process with SIGKILL, no warning and no chance to save; this thread does
the same at a chosen budget, so a leak's real failure can be shown (and tested) on any machine.
Framework-free.

Example:
    >>> OomKillerEmulator(limit_bytes=3 << 30).start()   # the process dies once RSS passes 3 GiB
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from tfodtrain.memory.probes import HostProbe

log = logging.getLogger(__name__)


class OomKillerEmulator(threading.Thread):
    def __init__(self, limit_bytes: int, interval_s: float = 0.05, probe: HostProbe | None = None):
        super().__init__(name="oom-killer-emulator", daemon=True)
        self.limit_bytes = int(limit_bytes)
        self.interval_s = interval_s
        self.probe = probe or HostProbe()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = self.probe.read().process_tree_rss_bytes
            if used > self.limit_bytes:
                sys.stderr.write(f"tfodtrain: memory budget exceeded ({used >> 20} MiB > {self.limit_bytes >> 20} MiB): "
                                 "killing the process with SIGKILL, as the OOM killer would\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
