"""How long a checkpoint save takes and how much host memory it needs: what the leak guard's abort horizon
must leave room for (an abort, or an insurance save at a warning, that itself runs out of memory saves nothing).

    python scripts/bench_checkpoint_save.py                      # +experiment=smoke
    python scripts/bench_checkpoint_save.py +experiment=ssd      # any Hydra overrides

One process builds the experiment's model and optimizer as a run does (train.py), trains one real step
(the optimizer's slots exist, as in a run), then saves through tfodtrain's Checkpointer (the run's
tf.train.CheckpointManager) into a temporary dir: a first save (the first of the process: it also builds
the saving machinery) and `--saves` more, one step apart. For each it prints the wall-clock seconds and the
peak RSS above the RSS just before the save (process and children, sampled every millisecond by a thread),
and the checkpoint's size on disk. Freed heap pages go back to the OS before each save (glibc malloc_trim),
so the delta is what the save touches (the worst case: a run near its limit has no spare heap). The last
line sums it up:
`save_seconds_first=... save_seconds=... peak_rss_delta_mib_first=... peak_rss_delta_mib=... checkpoint_mib=...`
(the steady-state figures are the medians over the later saves).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MIB = float(1 << 20)


class PeakRss(threading.Thread):
    """The highest RSS of this process (and its children) while running, sampled every `interval_s`."""

    def __init__(self, interval_s: float = 0.001):
        super().__init__(daemon=True)
        from tfodtrain.memory.probes import HostProbe

        self.probe = HostProbe()
        self.interval_s = interval_s
        self.peak = self.probe.read().process_tree_rss_bytes
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak = max(self.peak, self.probe.read().process_tree_rss_bytes)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, self.probe.read().process_tree_rss_bytes)


def build(cfg):
    """Model, optimizer and one trained step, as train.py builds them."""
    from tfodtrain import experiment

    exp = experiment.build(cfg, experiment.resolve_data(cfg), logging_dir=str(cfg.run_dir)).build_trainer()
    train_ds = exp.task.build_inputs(exp.params.task.train_data)
    exp.trainer_model.fit(train_ds, epochs=1, steps_per_epoch=1, verbose=0)  # the optimizer's slots, as in a run
    return exp.detector, exp.optimizer


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so the RSS delta counts what the save itself touches,
    not only what the allocator had no spare memory for: a leaking run near its limit has little spare."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed_save(checkpointer) -> tuple[float, float]:
    gc.collect()
    trim_heap()
    from tfodtrain.memory.probes import HostProbe

    before = HostProbe().read().process_tree_rss_bytes
    peak = PeakRss()
    peak.start()
    started = time.perf_counter()
    checkpointer.save()
    seconds = time.perf_counter() - started
    return seconds, (peak.stop() - before) / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=3, help="saves after the first (default: 3)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: +experiment=smoke)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tfodtrain.benchmarking import compose_run_config

    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        cfg = compose_run_config(args.overrides or ["+experiment=smoke"], Path(tmp) / "run")
        detector, optimizer = build(cfg)
        from tfodtrain.checkpointing import Checkpointer

        directory = Path(tmp) / "checkpoints"
        checkpointer = Checkpointer(directory, detector, optimizer, keep=args.saves + 1)
        results = []
        for index in range(args.saves + 1):
            optimizer.iterations.assign_add(1)  # a step is saved once: one step apart
            seconds, delta = timed_save(checkpointer)
            size = sum(p.stat().st_size for p in directory.glob(f"ckpt-{int(optimizer.iterations.numpy())}.*"))
            results.append((seconds, delta, size / MIB))
            print(f"save {index + 1}: {seconds:.3f} s, peak RSS +{delta:.1f} MiB, checkpoint {size / MIB:.1f} MiB",
                  flush=True)
    first, later = results[0], results[1:] or results[:1]
    print(f"experiment={cfg.experiment_name} save_seconds_first={first[0]:.3f} "
          f"save_seconds={statistics.median(r[0] for r in later):.3f} peak_rss_delta_mib_first={first[1]:.1f} "
          f"peak_rss_delta_mib={statistics.median(r[1] for r in later):.1f} checkpoint_mib={first[2]:.1f}")


if __name__ == "__main__":
    main()
