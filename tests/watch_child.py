"""A stand-in trainer for tests/test_watch.py: no framework, just the behaviour the watch must handle.

    python tests/watch_child.py [--flat-s S] [--leak-mib-s R] [--run-s T] [--exit-code N]
                                [--ckpt-dir D] [--save-every S] [--on-term save|ignore|exit]
                                [--leak-unless-resumed] [--grandchild PIDFILE]

It sits at a flat memory for --flat-s seconds (a trainer's steady state), then keeps R MiB a second of
filled bytearrays in a list (the seed's leak: every step's outputs kept), for --run-s seconds in all
(0: until stopped), then exits with --exit-code. With --ckpt-dir it writes ``ckpt_<n>.bin`` every
--save-every seconds (through a ``.tmp`` file and a rename) and, with ``--on-term save``, one more
``ckpt_<n>.bin`` on SIGTERM before exiting 143; ``--on-term ignore`` ignores SIGTERM (as the Object
Detection API's trainer, which only saves every N steps). ``--leak-unless-resumed``: no leak when the
checkpoint directory already holds a checkpoint (a resumed run; --resumed-run-s: how long it runs). Every event is a line on stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20
CHUNK_MIB = 2


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--flat-s", type=float, default=0.0)
    p.add_argument("--leak-mib-s", type=float, default=0.0)
    p.add_argument("--run-s", type=float, default=0.0)
    p.add_argument("--exit-code", type=int, default=0)
    p.add_argument("--ckpt-dir", type=Path)
    p.add_argument("--save-every", type=float, default=0.0)
    p.add_argument("--save-mib", type=float, default=1.0)
    p.add_argument("--on-term", choices=("save", "ignore", "exit"), default="exit")
    p.add_argument("--leak-unless-resumed", action="store_true")
    p.add_argument("--resumed-run-s", type=float, default=None, help="--run-s of a resumed run")
    p.add_argument("--grandchild", type=Path, help="start a sleeping grandchild and write its pid here")
    args = p.parse_args()

    start = time.monotonic()
    saves = 0
    if args.ckpt_dir:
        args.ckpt_dir.mkdir(parents=True, exist_ok=True)
        saves = len(list(args.ckpt_dir.glob("ckpt_*.bin")))
    resumed = saves > 0
    leak = args.leak_mib_s if not (args.leak_unless_resumed and resumed) else 0.0
    if resumed and args.resumed_run_s is not None:
        args.run_s = args.resumed_run_s
    print(f"child: pid {os.getpid()}, resumed={resumed}, leak {leak} MiB/s", flush=True)

    def save(why: str) -> None:
        nonlocal saves
        saves += 1
        final = args.ckpt_dir / f"ckpt_{saves:04d}.bin"
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_bytes(b"\0" * int(args.save_mib * MIB))
        os.replace(tmp, final)
        print(f"child: saved {final.name} ({why}) at {time.monotonic() - start:.1f} s", flush=True)

    def on_term(signum, frame):
        if args.on_term == "save" and args.ckpt_dir:
            save("SIGTERM")
        print("child: SIGTERM: exiting 143", flush=True)
        os._exit(143)

    if args.on_term == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_term)
    if args.grandchild:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        args.grandchild.write_text(str(grandchild.pid))

    held = []
    chunk = b"\1" * (CHUNK_MIB * MIB)
    next_save = start + args.save_every if args.save_every else None
    while not args.run_s or time.monotonic() - start < args.run_s:
        now = time.monotonic()
        elapsed = now - start
        if leak and elapsed >= args.flat_s:
            due = int((elapsed - args.flat_s) * leak / CHUNK_MIB)
            while len(held) < due:
                held.append(bytearray(chunk))  # a filled copy: its pages are touched
        if next_save is not None and args.ckpt_dir and now >= next_save:
            save("periodic")
            next_save += args.save_every
        time.sleep(0.05)
    print(f"child: done after {time.monotonic() - start:.1f} s: exit {args.exit_code}", flush=True)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
