"""The pure search for the largest batch size that fits: measured trials in, a batch size out.

No TensorFlow here: `run_step(batch_size) -> Trial` is what measures (tfodtrain.preflight.step in this
process, tfodtrain.preflight.fresh in a fresh one).
"""

from __future__ import annotations

import dataclasses
import math

MAX_SEARCH_STEPS = 3  # steps after the first one, at most, to find the largest batch size that fits
NOISE_MARGIN = 0.04  # share of a limit a found batch size stays below, for run-to-run noise (seen: 2% on CPU)


class SearchFailed(Exception):
    """A search step's fresh process failed; the message says how."""


@dataclasses.dataclass
class Trial:
    batch_size: int
    peaks: dict | None  # pool -> peak bytes; None: the step ran out of memory
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fits(trial: Trial, targets: dict[str, int]) -> bool:
    return trial.peaks is not None and all(trial.peaks.get(p, 0) <= t for p, t in targets.items())


def _line(trials: list[Trial], pool: str):
    """(fixed, per_example) bytes of a least-squares line through the measured peaks of `pool`."""
    points = [(t.batch_size, t.peaks[pool]) for t in trials if t.peaks is not None and pool in t.peaks]
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / sum((b - mean_b) ** 2 for b, _ in points)
    return mean_p - slope * mean_b, slope


def largest_fitting(trials: list[Trial], run_step, targets: dict[str, int], upper: int,
                    max_steps: int = MAX_SEARCH_STEPS) -> int | None:
    """The largest batch size in 1..upper whose measured step fits all `targets`, after at most
    `max_steps` more steps (`run_step(batch_size) -> Trial`); None when even batch size 1 does not fit.

    Each proposal is the batch size where the line through the peaks reaches the binding pool's target
    (halving, as Hugging Face's auto batch size does, or growing 4x, while there is no line yet).
    """
    trials = list(trials)
    for _ in range(max_steps):
        fitting = [t.batch_size for t in trials if fits(t, targets)]
        failing = [t.batch_size for t in trials if not fits(t, targets)]
        lo = max(fitting, default=0)
        hi = min([b for b in failing if b > lo], default=upper + 1)
        if hi - lo <= 1:
            break
        proposal = None
        over = [t for t in trials if t.peaks is not None and not fits(t, targets)]
        pools = [max(targets, key=lambda p: over[0].peaks.get(p, 0) / targets[p])] if over else list(targets)
        for pool in pools:
            line = _line(trials, pool)
            if line is not None and line[1] > 0:
                candidate = math.floor((targets[pool] - line[0]) / line[1])
                proposal = candidate if proposal is None else min(proposal, candidate)
        if proposal is None:
            proposal = min(lo * 4, upper) if lo else max(1, hi // 2)
        proposal = max(lo + 1, min(hi - 1, proposal))
        trials.append(run_step(proposal))
    best = max((t.batch_size for t in trials if fits(t, targets)), default=None)
    return best
