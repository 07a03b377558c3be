"""Guard any training command from outside: ``python -m tfodtrain.watch [options] -- CMD [ARGS...]``.

For trainers that cannot take tfodtrain's Keras callbacks (the Object Detection API's
``model_main_tf2.py``, Model Garden's ``official/vision/train.py``, a PyTorch or JAX script), the watch
runs CMD as a child in its own process group and gives it the leak guard from outside:

* every ``--interval-s`` seconds (default 2 s) it reads the memory of CMD's process tree (CMD, its
  descendants and anything left in its session): the tree's host RSS against the cgroup limit (else
  physical memory), and each GPU's NVML per-process bytes summed over the tree's PIDs against what the
  card leaves it. Where NVML lists processes whose PIDs do not exist here (the tree runs in another PID
  namespace than the driver reports), it says so once and watches that GPU's whole-card used bytes;
* it feeds the readings to the same ``MemoryGuard`` (the same detector, policy and defaults) as the
  training callback, and writes ``memory_trace_<pool>.csv`` (replayable with
  ``python -m tfodtrain.memory.replay``; the ``step`` column counts readings, since a foreign process
  has no steps the watch can see), ``memory_readings.jsonl`` and, when the ``tensorboard`` package is
  installed, the callback's scalars ``memory/<pool>/used_mib`` and ``memory/<pool>/limit_mib`` (written
  by TensorBoard's own writer, without TensorFlow) to the run dir;
* on abort it sends ``--signal`` (SIGTERM) to CMD, waits ``--grace-s``, then SIGKILLs the tree. With
  ``--checkpoint-dir`` it follows CMD's saves there (the newest complete checkpoint, file or folder) and,
  when the projected exhaustion leaves time for CMD's next regular save (estimated from the intervals
  between the saves it saw), waits for that save first, so a trainer that ignores signals loses nothing.
  ``abort_report.json`` says why, what CMD did and whether a new checkpoint was seen; the exit code is 75.
  Otherwise the exit code is CMD's own (death by signal N: 128+N);
* SIGINT and SIGTERM are forwarded to CMD (a second one SIGKILLs the tree); when CMD ends, whatever is
  left of its tree is taken down;
* ``--restarts N`` restarts CMD after an abort (75) or an OOM kill (SIGKILL) with the supervisor's policy
  and backoff (tfodtrain.supervise), judging progress by the newest save in ``--checkpoint-dir``.

Framework-free: it imports neither TensorFlow nor Hydra.

Example:
    python -m tfodtrain.watch --checkpoint-dir runs/ssd -- \\
        python models/research/object_detection/model_main_tf2.py --model_dir=runs/ssd --pipeline_config_path=p.config
    python -m tfodtrain.watch --budget-mb 3000 --kill-over-budget -- python leaky.py
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tfodtrain import exit_codes, rundir
from tfodtrain.checkpoint_files import PREFIX, STATE_FILE, candidates
from tfodtrain.memory import probes
from tfodtrain.memory.guard import MemoryGuard, abort_fields, run_abort_command
from tfodtrain.memory.policy import GuardSettings, sparse_readings_warning
from tfodtrain.memory.traces import TraceWriter
from tfodtrain.supervise import Supervisor, _die_with_parent, describe_end, exit_code_of
from tfodtrain.units import MIB

log = logging.getLogger("tfodtrain.watch")

DEFAULT_INTERVAL_S = 2.0  # at least two readings in each 5-s chunk of the guard's fast window; ~1 ms a reading
DEFAULT_GRACE_S = 30.0
DEFAULT_BACKOFF_S = 5.0  # as trainer.restart_backoff_s
KILL_CHECK_S = 0.1  # --kill-over-budget: how often the budget is checked (the OOM killer acts at once)
TREE_REFRESH_S = 1.0  # the over-budget check lists the tree's processes at most this often
POLL_S = 0.25  # the main loop's tick: child exit, saves, grace deadline
SAVE_SETTLE_S = 1.0  # a save file or folder counts when unchanged for this long (and between two scans)
WAIT_SAFETY = 0.5  # wait for the next regular save only if it and the grace fit in this share of the time left
TAKE_DOWN_S = 3.0  # leftovers of the tree get SIGTERM, then SIGKILL after this long
TEMP_MARKS = (".tmp", "_temp", ".partial", ".part", ".lock", ".incomplete", "~")

RUN_DIR_FILES = ("memory_trace_<pool>.csv", "memory_readings.jsonl", "abort_report.json", "restarts.jsonl",
                 "watch.log", "tensorboard/")


class BadInput(Exception):
    """One line for the user; exit 2."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        raise BadInput(message)


def _positive(kind, name, allow_zero=False):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a {'whole ' if kind is int else ''}number, got {text!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else '> 0'}, got {text!r}")
        return value
    return parse


def parse_signal(text: str) -> signal.Signals:
    """'TERM', 'SIGTERM', 'sigint' or '15' -> the signal; BadInput otherwise."""
    name = text.strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown signal {text!r} (e.g. TERM, INT, USR1 or a number)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tfodtrain.watch", allow_abbrev=False,
                description="Run CMD under the leak guard: watch its process tree's memory, checkpoint-and-stop "
                            "it before memory runs out (exit 75), else exit with CMD's code.",
                usage="python -m tfodtrain.watch [options] -- CMD [ARGS...]")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where traces, readings and reports go (default outputs/watch/<date>)")
    p.add_argument("--interval-s", type=_positive(float, "--interval-s"), default=DEFAULT_INTERVAL_S,
                   help=f"seconds between memory readings (default {DEFAULT_INTERVAL_S:g})")
    p.add_argument("--budget-mb", type=_positive(float, "--budget-mb"), default=None,
                   help="caps every pool's limit at this many MiB, as memory.budget_mb does")
    p.add_argument("--guard-mode", choices=("abort", "warn"), default="abort",
                   help="abort: stop CMD (exit 75); warn: only log (default abort)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="one guard setting, as python -m tfodtrain.memory.replay takes it (repeatable)")
    p.add_argument("--kill-over-budget", action="store_true",
                   help="SIGKILL the tree once a pool passes --budget-mb, as the OOM killer would (demos, tests)")
    p.add_argument("--signal", dest="stop_signal", type=parse_signal, default=signal.SIGTERM,
                   help="signal that asks CMD to stop on abort (default SIGTERM)")
    p.add_argument("--grace-s", type=_positive(float, "--grace-s", allow_zero=True), default=DEFAULT_GRACE_S,
                   help=f"seconds between --signal and SIGKILL (default {DEFAULT_GRACE_S:g})")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="where CMD saves checkpoints: followed to wait for its next regular save before "
                        "stopping it, and to judge progress for --restarts")
    p.add_argument("--restarts", type=_positive(int, "--restarts", allow_zero=True), default=0,
                   help="restart CMD up to N times after an abort or an OOM kill (needs --checkpoint-dir)")
    p.add_argument("--backoff-s", type=_positive(float, "--backoff-s", allow_zero=True), default=DEFAULT_BACKOFF_S,
                   help=f"seconds before the first restart, doubled each time (default {DEFAULT_BACKOFF_S:g})")
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


@dataclasses.dataclass
class Options:
    command: list
    run_dir: Path
    interval_s: float
    budget_bytes: int | None
    settings: GuardSettings
    kill_over_budget: bool
    stop_signal: signal.Signals
    grace_s: float
    checkpoint_dir: Path | None
    restarts: int
    backoff_s: float


def parse_options(argv: list[str]) -> Options:
    """Options and CMD from the command line; BadInput (one line) on anything wrong."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        args = build_parser().parse_args(argv[:cut])
        if args.command:
            raise BadInput(f"unexpected argument {args.command[0]!r} before '--'")
        command = argv[cut + 1:]
    else:
        args = build_parser().parse_args(argv)
        command = args.command
    if not command:
        raise BadInput("no command to watch: python -m tfodtrain.watch [options] -- CMD [ARGS...]")
    executable = command[0]
    if os.sep in executable:
        if not os.path.isfile(executable) or not os.access(executable, os.X_OK):
            raise BadInput(f"command not found or not executable: {executable}")
    elif shutil.which(executable) is None:
        raise BadInput(f"command not found: {executable}")
    for item in args.overrides:
        if item.partition("=")[0].strip() == "mode":
            raise BadInput("--set mode=...: use --guard-mode abort|warn")
    from tfodtrain.memory.replay import _settings_from  # the same option parsing as the replay tool

    try:
        settings = _settings_from(list(args.overrides) + [f"mode={args.guard_mode}"])
    except ValueError as error:
        raise BadInput(f"--set: {str(error).removeprefix('leak guard: ')}") from None
    if args.kill_over_budget and args.budget_mb is None:
        raise BadInput("--kill-over-budget needs --budget-mb (the budget it enforces)")
    if args.restarts and args.checkpoint_dir is None:
        raise BadInput("--restarts needs --checkpoint-dir: progress between restarts is judged by the newest save there")
    if args.checkpoint_dir is not None and args.checkpoint_dir.exists() and not args.checkpoint_dir.is_dir():
        raise BadInput(f"--checkpoint-dir {args.checkpoint_dir} is not a directory")
    run_dir = args.run_dir or Path("outputs", "watch", datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInput(f"--run-dir {run_dir} is not a directory")
    budget = int(args.budget_mb * (1 << 20)) if args.budget_mb is not None else None
    return Options(command, run_dir, args.interval_s, budget, settings, args.kill_over_budget, args.stop_signal,
                   args.grace_s, args.checkpoint_dir, args.restarts, args.backoff_s)


# --------------------------------------------------------------------------------------------
# The process tree and its memory
# --------------------------------------------------------------------------------------------


class ProcessTree:
    """CMD's process and everything it started: its descendants, and whatever else holds its session
    (CMD starts a new session, so orphans reparented to init are still found). Processes seen once are
    remembered until they end, even if they leave the session.

    Example:
        >>> tree = ProcessTree(child.pid); tree.refresh(); sorted(tree.pids())
    """

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        try:
            self.sid = os.getsid(root_pid)
        except OSError:
            self.sid = None
        self._known: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._listed_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.root_pid)
            found[root.pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
        if self.sid is not None:
            me = os.getpid()
            for process in psutil.process_iter():
                if process.pid in found or process.pid == me:
                    continue
                try:
                    if os.getsid(process.pid) == self.sid:
                        found[process.pid] = process
                except OSError:
                    continue
        with self._lock:
            for pid, process in list(self._known.items()):
                if pid not in found and _alive(process):
                    found[pid] = process
            self._known = found
            self._listed_at = time.monotonic()

    def processes(self, max_age_s: float | None = None) -> list[psutil.Process]:
        if max_age_s is not None and time.monotonic() - self._listed_at > max_age_s:
            self.refresh()
        with self._lock:
            return [p for p in self._known.values() if _alive(p)]

    def pids(self) -> set[int]:
        with self._lock:
            return set(self._known)

    def rss_bytes(self, max_age_s: float | None = None) -> int:
        total = 0
        for process in self.processes(max_age_s):
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def signal(self, signum: int, max_age_s: float | None = 0.0) -> int:
        """Send signum to every process of the tree (and CMD's process group); returns how many got it."""
        sent = 0
        try:
            os.killpg(self.root_pid, signum)
        except OSError:
            pass
        for process in self.processes(max_age_s):
            try:
                process.send_signal(signum)
                sent += 1
            except psutil.Error:
                continue
        return sent


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class TreeMemory:
    """Pools of a process tree, as the training callback's pools are of its own process: ``host`` (the
    tree's RSS against the cgroup limit, else physical memory) and ``gpuN`` (NVML's bytes of the tree's
    PIDs against what the card leaves them), every limit capped by the budget.

    A GPU pool appears once the tree holds memory on that card. Where NVML lists processes on a card
    whose PIDs do not exist here (the driver reports another PID namespace's PIDs) and none of the tree's,
    the card's used bytes stand in for the tree's, against its total: said once per GPU.
    """

    def __init__(self, tree: ProcessTree, budget_bytes: int | None, nvml: probes.NvmlProbe | None = None,
                 host: probes.HostProbe | None = None, gpu_modes: dict | None = None):
        self.tree = tree
        self.budget_bytes = budget_bytes
        self.host_probe = host or probes.HostProbe(include_children=False)  # system and cgroup figures
        self.nvml = nvml or probes.NvmlProbe(pids=tree.pids)
        # pool -> "process" (the tree's PIDs) or "card" (fallback); shared across attempts, so said once
        self.gpu_modes: dict[str, str] = {} if gpu_modes is None else gpu_modes

    def cap(self, limit: int | None) -> int | None:
        if self.budget_bytes is None:
            return limit
        return self.budget_bytes if limit is None else min(limit, self.budget_bytes)

    def read(self) -> tuple[dict[str, tuple[int, int]], dict] | None:
        """The pools and the raw figures; None once no process of the tree is alive (the command ended
        between the poll and this reading, or during it: its 0 bytes would be recorded as a reading of
        nothing). Judged on the bytes read, so that no process can end between the check and the reading."""
        self.tree.refresh()
        tree_rss = self.tree.rss_bytes()
        if tree_rss == 0:
            return None
        host = self.host_probe.read()
        gpus = self.nvml.read()
        pools = {"host": (tree_rss, self.cap(probes.host_limit_bytes(host)))}
        tree_pids = self.tree.pids()
        for gpu in gpus:
            pool = self._gpu_pool(gpu, tree_pids)
            if pool is not None:
                pools[gpu.pool] = pool
        raw = {"tree": {"root_pid": self.tree.root_pid, "pids": sorted(tree_pids), "rss_bytes": tree_rss},
               "host": host.to_dict(), "gpus": [g.to_dict() for g in gpus], "gpu_modes": dict(self.gpu_modes),
               "nvml": {"available": self.nvml.available, "reason": self.nvml.reason},
               "pools": {name: {"used_bytes": u, "limit_bytes": lim} for name, (u, lim) in pools.items()}}
        return pools, raw

    def _gpu_pool(self, gpu: probes.GpuReading, tree_pids: set[int]) -> tuple[int, int] | None:
        if not gpu.ok:
            return None
        listed = self.nvml.listed_pids.get(gpu.index, set())
        mode = self.gpu_modes.get(gpu.pool)
        if listed & tree_pids:
            if mode == "card":
                log.warning("watch: NVML now lists the watched processes on %s: watching their own bytes again",
                            gpu.pool)
            mode = self.gpu_modes[gpu.pool] = "process"
        elif mode is None and listed and not any(psutil.pid_exists(pid) for pid in listed):
            mode = self.gpu_modes[gpu.pool] = "card"
            log.warning("watch: NVML lists processes on %s (PIDs %s) that do not exist here, none of the watched "
                        "tree's: the driver reports another PID namespace's PIDs. %s is watched as the whole "
                        "card's used memory (every process on it) against its total", gpu.pool,
                        ", ".join(map(str, sorted(listed)[:5])), gpu.pool)
        if mode == "process":
            used, limit = gpu.process_bytes, probes.gpu_limit_bytes(gpu)
        elif mode == "card":
            used, limit = gpu.used_bytes, gpu.total_bytes
        else:
            return None
        if used is None or limit is None:
            return None
        return int(used), self.cap(int(limit))


# --------------------------------------------------------------------------------------------
# The child's saves
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Save:
    identity: str  # changes with every new save (name, and time for a file overwritten in place)
    path: Path
    mtime: float  # time.time() domain


def _is_temp(name: str) -> bool:
    return name.startswith(".") or any(mark in name for mark in TEMP_MARKS) or name.startswith(f"{STATE_FILE}.tmp")


def _signature(path: Path) -> tuple[float, int]:
    """(newest mtime, total size) of a file, or of a folder's files."""
    if path.is_dir():
        newest, size = path.stat().st_mtime, 0
        for sub in path.rglob("*"):
            try:
                st = sub.stat()
            except OSError:
                continue
            newest, size = max(newest, st.st_mtime), size + (st.st_size if sub.is_file() else 0)
        return newest, size
    st = path.stat()
    return st.st_mtime, st.st_size


class SaveFollower:
    """The newest complete save in a checkpoint directory, and when the saves came.

    A TensorFlow checkpoint directory (a ``checkpoint`` state file or ``ckpt-N.index``, as the Object
    Detection API's and tfodtrain's CheckpointManager write) is read as the supervisor reads it: the
    newest checkpoint whose index and data shards are all there. Any other directory: the newest file or
    folder that is not hidden or temporary (``.tmp``, ``_temp``, ``.partial``, ...) and has not changed
    for ``SAVE_SETTLE_S`` and between two scans (a save still being written is not taken).

    Example:
        >>> follower = SaveFollower(Path("runs/ssd"))
        >>> follower.scan()           # a Save when a new one has come since the last scan, else None
    """

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory is not None else None
        self._signatures: dict[str, tuple[float, int]] = {}
        self.saves: list[Save] = []  # new saves seen since following began, in order
        # what is there already counts as complete once settled, and is no new save
        self.latest: Save | None = newest_save(self.directory, self._signatures, require_unchanged=False)
        self.first = self.latest

    def scan(self) -> Save | None:
        """Look again; returns a save that is new since the last scan, else None."""
        if self.directory is None:
            return None
        newest = newest_save(self.directory, self._signatures)
        if newest is None or (self.latest is not None and newest.identity == self.latest.identity):
            return None
        if self.latest is not None and newest.mtime < self.latest.mtime:
            return None  # an older one settling late: not the newest save
        self.latest = newest
        self.saves.append(newest)
        return newest

    def interval_s(self) -> float | None:
        """The median interval between the new saves seen (None before two)."""
        times = [s.mtime for s in self.saves]
        gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
        return statistics.median(gaps) if gaps else None


def newest_save(directory: Path | None, signatures: dict | None = None, require_unchanged: bool = True) -> Save | None:
    """The newest complete save in `directory` (see SaveFollower); None if there is none.

    A file or folder counts once unchanged for SAVE_SETTLE_S; with `signatures` (a dict kept between
    calls, updated here) and `require_unchanged`, it must also be unchanged since the previous call."""
    if directory is None:
        return None
    directory = Path(directory)
    if not directory.is_dir():
        return None
    if (directory / STATE_FILE).is_file() or any(directory.glob(f"{PREFIX}-*.index")):
        found = candidates(directory)
        if found:
            index = found[0].prefix.with_name(found[0].prefix.name + ".index")
            try:
                mtime = index.stat().st_mtime
            except OSError:
                mtime = time.time()
            return Save(f"{found[0].prefix.name}", found[0].prefix, mtime)
        return None
    now = time.time()
    best: Save | None = None
    seen = {}
    try:
        entries = list(directory.iterdir())
    except OSError:
        return None
    for path in entries:
        if _is_temp(path.name):
            continue
        try:
            sig = _signature(path)
        except OSError:
            continue
        seen[path.name] = sig
        stable = now - sig[0] >= SAVE_SETTLE_S and (
            signatures is None or not require_unchanged or signatures.get(path.name) == sig)
        if stable and (best is None or sig[0] > best.mtime):
            best = Save(f"{path.name}@{sig[0]:.3f}", path, sig[0])
    if signatures is not None:
        signatures.clear()
        signatures.update(seen)
    return best


def progress_of(directory: Path) -> str | None:
    """What the supervisor compares between restarts: the newest save's identity."""
    save = newest_save(directory)
    if save is None:
        return None
    if save.identity.startswith(f"{PREFIX}-"):
        return save.identity
    return f"{save.path.name} ({datetime.datetime.fromtimestamp(save.mtime).isoformat(timespec='seconds')})"


# --------------------------------------------------------------------------------------------
# One watched run of CMD
# --------------------------------------------------------------------------------------------


def time_left_s(assessment) -> float | None:
    """Seconds until the pool runs out: the guard's projection, or the point slope's if that is sooner
    (the guard projects with the low end of the slope's interval, which is the later end)."""
    if assessment is None or assessment.seconds_to_limit is None:
        return None
    left = float(assessment.seconds_to_limit)
    slope = assessment.slope_bytes_per_second
    if slope and slope > 0:
        room = assessment.limit_bytes - assessment.floor_bytes - assessment.peak_headroom_bytes
        left = min(left, max(0.0, room / slope))
    return left


def plan_wait(now_unix: float, time_left: float | None, follower: SaveFollower | None, grace_s: float,
              poll_s: float = POLL_S) -> tuple[float | None, str]:
    """(unix time to wait for the next regular save until, or None: stop now; the reason in words)."""
    if follower is None or follower.directory is None:
        return None, "no --checkpoint-dir: stopping it now"
    interval = follower.interval_s()
    if interval is None or follower.latest is None:
        return None, (f"{len(follower.saves)} new save(s) seen in {follower.directory}, too few to know when the "
                      "next comes: stopping it now")
    due = follower.latest.mtime + interval
    slack = max(4 * poll_s, 0.25 * interval)
    wait = max(0.0, due - now_unix) + slack
    if time_left is None:
        return None, "no projection of the time left: stopping it now"
    if wait + grace_s <= WAIT_SAFETY * time_left:
        return now_unix + wait, (f"the next regular save (every {interval:.0f} s, due in {max(0.0, due - now_unix):.0f} s) "
                                 f"fits before the projected exhaustion in {time_left:.0f} s: waiting up to {wait:.0f} s "
                                 "for it, then stopping")
    return None, (f"the next regular save (every {interval:.0f} s, due in {max(0.0, due - now_unix):.0f} s) "
                  f"would come too close to the projected exhaustion in {time_left:.0f} s: stopping it now")


class Watch:
    """Runs CMD once (``attempt``) under the guard; returns 75 after an abort, else its return code."""

    def __init__(self, options: Options, env: dict | None = None):
        self.o = options
        self.env = dict(os.environ if env is None else env)
        self.run_dir = Path(options.run_dir)
        self.t0 = time.monotonic()
        self.readings = 0  # the trace's step column: readings since the watch began (all attempts)
        self.writers: dict[str, TraceWriter] = {}
        self._jsonl = None
        self._tb = None
        self._tb_failed = False
        self.supervisor: WatchSupervisor | None = None
        self.tree: ProcessTree | None = None  # the current attempt's
        self.gpu_modes: dict[str, str] = {}
        self.host_probe = probes.HostProbe(include_children=False)
        self.nvml = probes.NvmlProbe(pids=self._tree_pids)  # made once: NVML handles and its warnings
        self.killer_nvml = probes.NvmlProbe(pids=self._tree_pids)  # the over-budget thread's own

    def _tree_pids(self) -> set[int]:
        return self.tree.pids() if self.tree is not None else set()

    # -- outputs ------------------------------------------------------------------------------

    def _record(self, attempt: int, time_s: float, pools: dict, raw: dict) -> None:
        for pool, (used, limit) in pools.items():
            writer = self.writers.get(pool)
            if writer is None:
                writer = self.writers[pool] = TraceWriter(self.run_dir / f"memory_trace_{pool}.csv")
            writer.append(self.readings, time_s, used, limit)
        if self._jsonl is None:
            self._jsonl = open(self.run_dir / "memory_readings.jsonl", "a", encoding="utf-8")
        line = {"step": self.readings, "time_s": round(time_s, 3), "time_unix": time.time(), "attempt": attempt, **raw}
        self._jsonl.write(json.dumps(line, default=str) + "\n")
        self._jsonl.flush()

    def _scalars(self, pools: dict, guard: MemoryGuard | None = None) -> None:
        """The callback's tags, written with TensorBoard's own protos (no TensorFlow); skipped without it."""
        scalars = {}
        for pool, (used, limit) in pools.items():
            scalars[f"memory/{pool}/used_mib"] = used / MIB
            scalars[f"memory/{pool}/limit_mib"] = limit / MIB
        if guard is not None:
            scalars.update(guard.state_scalars(pools))
        if self._tb_failed or not scalars:
            return
        try:
            if self._tb is None:
                self._tb = ScalarEvents(self.run_dir / "tensorboard")
            self._tb.write(self.readings, scalars)
        except Exception as error:  # noqa: BLE001 - scalars are optional: no tensorboard package, or a write failed
            self._tb_failed = True
            log.info("watch: no TensorBoard scalars (%s); traces and readings go on", error)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            try:
                self._tb.close()
            except Exception:  # noqa: BLE001
                pass

    # -- one attempt --------------------------------------------------------------------------

    def run_attempt(self, attempt: int) -> int:
        o = self.o
        follower = SaveFollower(o.checkpoint_dir) if o.checkpoint_dir is not None else None
        guard = MemoryGuard(o.settings)
        log.info("watch: attempt %d: starting %s (readings every %g s, guard %s%s)", attempt,
                 " ".join(o.command), o.interval_s, o.settings.mode,
                 f", budget {o.budget_bytes / MIB:.0f} MiB" if o.budget_bytes else "")
        try:
            child = subprocess.Popen(o.command, env=self.env, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as error:
            raise BadInput(f"cannot start {o.command[0]}: {error.strerror or error}") from None
        if self.supervisor is not None:
            self.supervisor.child = child
        tree = self.tree = ProcessTree(child.pid)
        memory = TreeMemory(tree, o.budget_bytes, self.nvml, self.host_probe, self.gpu_modes)
        state = _AttemptState()
        killer = None
        if o.kill_over_budget:
            killer = _OverBudgetKiller(tree, o.budget_bytes, state, self.killer_nvml, lambda: self.nvml.available)
            killer.start()
        next_reading = time.monotonic()
        try:
            while child.poll() is None:
                now = time.monotonic()
                if now >= next_reading:
                    next_reading += o.interval_s
                    if next_reading < now:  # a slow reading: skip ahead rather than burst
                        next_reading = now + o.interval_s
                    self._reading(attempt, memory, guard, follower, state, child)
                elif follower is not None and state.abort is not None:
                    self._note_save(follower, state)
                self._act(child, tree, follower, guard, state)
                time.sleep(max(0.0, min(POLL_S, next_reading - time.monotonic())))
        finally:
            returncode = child.wait()
            if killer is not None:
                killer.stop()
            self._take_down(tree)
            if self.supervisor is not None:
                self.supervisor.child = None
        if follower is not None:
            time.sleep(min(SAVE_SETTLE_S, 1.0))  # a save written just before the end settles
            self._note_save(follower, state, final=True)
        cause, _, _ = describe_end(returncode)
        if state.killed_over_budget:
            cause = f"killed with SIGKILL over the {o.budget_bytes / MIB:.0f} MiB budget (--kill-over-budget)"
        log.info("watch: attempt %d: the command ended: %s (exit %d)", attempt, cause, exit_code_of(returncode))
        if state.abort is not None:
            self._finish_report(state, returncode, cause, follower)
            return exit_codes.GUARD_ABORT
        return returncode

    def _reading(self, attempt, memory: TreeMemory, guard: MemoryGuard, follower, state, child) -> None:
        read = memory.read()
        if read is None:
            return
        pools, raw = read
        time_s = time.monotonic() - self.t0
        self.readings += 1
        self._record(attempt, time_s, pools, raw)
        if follower is not None:
            self._note_save(follower, state)
        decision = guard.observe_many((pool, self.readings, time_s, used, limit)
                                      for pool, (used, limit) in pools.items() if limit)
        self._scalars(pools, guard)
        state.last_pools = pools
        stopping = self.supervisor is not None and self.supervisor.stop_signal is not None
        if decision.action == "warn":
            log.warning("watch: leak guard at reading %d (%.0f s): %s", self.readings, time_s, decision.reason)
        elif decision.action == "abort":
            if state.abort is None and not stopping and not state.killed_over_budget:
                self._start_abort(attempt, decision, time_s, pools, follower, state, child)
            elif state.abort is not None:
                state.abort["latest_assessment"] = decision.assessment
        if state.abort is not None and state.phase == "waiting":
            a = guard.assessments.get(state.abort["pool"])
            left = time_left_s(a)
            if left is not None and (state.wait_until - time.time()) + self.o.grace_s > WAIT_SAFETY * left:
                state.note(f"the projected exhaustion came closer ({left:.0f} s): not waiting for the save any longer")
                state.wait_until = time.time()

    def _start_abort(self, attempt, decision, time_s, pools, follower, state, child) -> None:
        o = self.o
        a = decision.assessment
        log.error("watch: leak guard: %s; stopping the command (exit %d)", decision.reason, exit_codes.GUARD_ABORT)
        report = {
            **abort_fields(decision),
            "exit_code": exit_codes.GUARD_ABORT,
            "step": self.readings,
            "step_is": "the reading count: a watched process has no training steps the watch can see",
            "time": _now(),
            "time_s": round(time_s, 2),
            "pools": {name: {"used_bytes": used, "limit_bytes": limit} for name, (used, limit) in pools.items()},
            "checkpoint": None,
            "settings": o.settings.to_dict(),
            "command": list(o.command),
            "attempt": attempt,
            "child_pid": child.pid,
            "checkpoint_dir": str(o.checkpoint_dir) if o.checkpoint_dir is not None else None,
            "checkpoint_before": follower.latest.identity if follower and follower.latest else None,
            "save_interval_s": follower.interval_s() if follower else None,
        }
        state.abort = report
        state.abort_unix = time.time()
        state.saves_before = len(follower.saves) if follower else 0
        wait_until, note = plan_wait(time.time(), time_left_s(a), follower, o.grace_s)
        state.note(note)
        log.warning("watch: %s", note)
        if wait_until is not None:
            state.phase, state.wait_until = "waiting", wait_until
        self._write_report(report)

    def _note_save(self, follower: SaveFollower, state, final: bool = False) -> None:
        save = follower.scan()
        if save is None:
            return
        log.info("watch: new save %s", save.path)
        if state.abort is not None and state.new_save is None:
            state.new_save = {"path": str(save.path), "identity": save.identity,
                              "seen_s_after_abort": round(time.time() - state.abort_unix, 2),
                              "mtime_s_after_abort": round(save.mtime - state.abort_unix, 2)}
            if state.phase == "waiting":
                state.note(f"the regular save {save.path.name} came {state.new_save['seen_s_after_abort']:.1f} s "
                           "after the abort decision: stopping the command now")
                state.wait_until = time.time()

    def _act(self, child, tree: ProcessTree, follower, guard, state) -> None:
        """The abort's moves: wait for the save (if planned), --signal, then SIGKILL after the grace."""
        if state.abort is None or child.poll() is not None:
            return
        now = time.time()
        if state.phase == "waiting":
            if now < state.wait_until:
                return
            if state.new_save is None:
                state.note("the expected regular save did not come in time: stopping the command without it")
            state.phase = "decided"
        if state.phase == "decided" or (state.phase is None):
            signame = self.o.stop_signal.name
            log.warning("watch: sending %s to the command (pid %d); SIGKILL in %g s if it has not ended", signame,
                        child.pid, self.o.grace_s)
            try:
                child.send_signal(self.o.stop_signal)
            except OSError:
                pass
            state.phase, state.signalled_unix = "signalled", now
            state.abort["stop"] = {"signal": signame, "signalled_s_after_abort": round(now - state.abort_unix, 2),
                                   "grace_s": self.o.grace_s}
            return
        if state.phase == "signalled" and now >= state.signalled_unix + self.o.grace_s:
            log.warning("watch: the command did not end within %g s of %s: SIGKILL", self.o.grace_s,
                        self.o.stop_signal.name)
            tree.signal(signal.SIGKILL)
            state.phase = "killed"
            state.abort["stop"]["sigkill_s_after_abort"] = round(now - state.abort_unix, 2)

    def _take_down(self, tree: ProcessTree) -> None:
        """Whatever is left of the tree after CMD ended: SIGTERM, then SIGKILL."""
        tree.refresh()
        left = [p for p in tree.processes() if p.pid != tree.root_pid]
        if not left:
            return
        log.info("watch: %d process(es) of the command's tree outlived it: SIGTERM, then SIGKILL", len(left))
        tree.signal(signal.SIGTERM)
        deadline = time.monotonic() + TAKE_DOWN_S
        while time.monotonic() < deadline and tree.processes(max_age_s=0.0):
            time.sleep(0.1)
        tree.signal(signal.SIGKILL)

    def _finish_report(self, state, returncode: int, cause: str, follower) -> None:
        report = state.abort
        report["notes"] = state.notes
        report["child_exit"] = {"returncode": returncode, "exit_code": exit_code_of(returncode), "cause": cause,
                                "s_after_abort": round(time.time() - state.abort_unix, 2),
                                "killed_over_budget": state.killed_over_budget}
        if follower is not None:
            report["new_checkpoint_seen"] = state.new_save is not None
            report["new_checkpoint"] = state.new_save
            report["checkpoint"] = str(follower.latest.path) if follower.latest else None
        else:
            report["new_checkpoint_seen"] = None
        self._write_report(report)
        run_abort_command(self.o.settings.on_abort_command, report, self.run_dir / rundir.ABORT_REPORT,
                          self.run_dir)

    def _write_report(self, report: dict) -> None:
        rundir.write_json(self.run_dir / rundir.ABORT_REPORT, report)


class ScalarEvents:
    """A TensorBoard event file of scalars, one event a reading, from TensorBoard's own protos and record
    writer: tensorboard.summary.Writer would import TensorFlow where it is installed (for its file API)."""

    def __init__(self, directory: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary, self._scalar_pb = event_pb2.Event, summary_pb2.Summary, scalar_pb
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{os.uname().nodename}.{os.getpid()}.watch"
        self._file = open(directory / name, "ab")
        self._writer = RecordWriter(self._file)
        self._writer.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self._file.flush()

    def write(self, step: int, scalars: dict[str, float]) -> None:
        summary = self._summary()
        for tag, value in scalars.items():
            summary.value.extend(self._scalar_pb(tag, float(value)).value)
        self._writer.write(self._event(wall_time=time.time(), step=int(step), summary=summary).SerializeToString())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _AttemptState:
    def __init__(self):
        self.abort: dict | None = None
        self.abort_unix = 0.0
        self.phase: str | None = None  # None -> "waiting" -> "decided" -> "signalled" -> "killed"
        self.wait_until = 0.0
        self.signalled_unix = 0.0
        self.new_save: dict | None = None
        self.saves_before = 0
        self.killed_over_budget = False
        self.last_pools: dict = {}
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


class _OverBudgetKiller(threading.Thread):
    """--kill-over-budget: SIGKILL the tree once a pool passes the budget, as the OOM killer would."""

    def __init__(self, tree: ProcessTree, budget_bytes: int, state: _AttemptState, nvml: probes.NvmlProbe,
                 gpus_watched):
        super().__init__(name="watch-over-budget", daemon=True)
        self.tree, self.budget, self.state, self.nvml = tree, budget_bytes, state, nvml
        self.gpus_watched = gpus_watched  # the main probe found NVML working
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(KILL_CHECK_S):
            used = {"host": self.tree.rss_bytes(max_age_s=TREE_REFRESH_S)}
            if self.gpus_watched():
                for gpu in self.nvml.read():
                    if gpu.ok and gpu.process_bytes:
                        used[gpu.pool] = gpu.process_bytes
            over = {pool: u for pool, u in used.items() if u > self.budget}
            if over:
                pool, u = next(iter(over.items()))
                sys.stderr.write(f"tfodtrain.watch: memory budget exceeded ({pool}: {u / MIB:.0f} MiB > "
                                 f"{self.budget / MIB:.0f} MiB): killing the command's tree with SIGKILL, as the "
                                 "OOM killer would\n")
                sys.stderr.flush()
                self.state.killed_over_budget = True
                self.tree.signal(signal.SIGKILL)
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Attempts under the supervisor's policy
# --------------------------------------------------------------------------------------------


class WatchSupervisor(Supervisor):
    """The supervisor's restart loop (policy, backoff, restarts.jsonl, signal forwarding), each attempt
    a watched run of CMD; progress is the newest save in --checkpoint-dir."""

    def __init__(self, watch: Watch):
        o = watch.o
        super().__init__(o.command, o.run_dir, max_restarts=o.restarts, backoff_s=o.backoff_s, env=watch.env,
                         checkpoint_dir=o.checkpoint_dir or Path(o.run_dir, "no-checkpoint-dir"),
                         progress=progress_of if o.checkpoint_dir is not None else (lambda _: None))
        self.watch = watch
        watch.supervisor = self
        self._tree_signals = 0

    def _run_child(self, attempt: int, started_step) -> int:
        return self.watch.run_attempt(attempt)

    def _forward(self, signum, frame) -> None:
        child = self.child
        self._tree_signals += 1
        if self._tree_signals > 1 and child is not None and child.poll() is None:
            log.warning("watch: %s again: SIGKILL to the command's tree", signal.Signals(signum).name)
            try:
                ProcessTree(child.pid).signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001
                child.kill()
            return
        super()._forward(signum, frame)

    def _show_fault_log(self, attempt: int) -> None:  # a foreign command writes no faults.log
        return

    def _record(self, record: dict) -> None:
        record.pop("fault_log", None)
        super()._record(record)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _setup_logging(run_dir: Path) -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("tfodtrain")
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / "watch.log")):
        handler.setFormatter(formatter)
        root.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse_options(argv)
        options.run_dir.mkdir(parents=True, exist_ok=True)
    except BadInput as error:
        print(f"tfodtrain.watch: error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except OSError as error:
        print(f"tfodtrain.watch: error: cannot make the run dir: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    _setup_logging(options.run_dir)
    sparse = sparse_readings_warning(options.interval_s, "--interval-s")
    if sparse:
        log.warning("watch: %s", sparse)
    watch = Watch(options)
    supervisor = WatchSupervisor(watch)
    try:
        code = supervisor.run()
    except BadInput as error:
        print(f"tfodtrain.watch: error: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    finally:
        watch.close()
    log.info("watch: exit %d (run dir %s)", code, options.run_dir)
    return code


if __name__ == "__main__":
    sys.exit(main())
