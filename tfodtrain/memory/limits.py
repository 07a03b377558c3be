"""A memory pool's limit, decided in one place for the monitor, the leak guard and the pre-flight.

    gpuN   `memory.gpu_limit_mb` when set (TensorFlow enforces it), else what the card leaves this process
    host   the cgroup limit, else physical memory
    every  lowered to `memory.budget_mb` when that is smaller

Example:
    >>> pool_limit("host", natural_bytes=16 << 30, natural_source="physical memory", budget_bytes=1 << 30)
    PoolLimit(pool='host', limit_bytes=1073741824, source='memory.budget_mb')
"""

from __future__ import annotations

import dataclasses

from tfodtrain.units import MIB


@dataclasses.dataclass(frozen=True)
class PoolLimit:
    pool: str
    limit_bytes: int
    source: str  # what set it, for messages

    def target(self, headroom: float) -> int:
        """The share of the limit a step may use, keeping `headroom` free."""
        return int(self.limit_bytes * (1 - headroom))


@dataclasses.dataclass(frozen=True)
class MemorySettings:
    """The `memory` config group as the code uses it: bytes, made once at the boundary.

    Example:
        >>> MemorySettings.from_config(cfg.memory).budget_bytes   # memory.budget_mb=2048 -> 2147483648
    """

    gpu_cap_bytes: int | None = None  # memory.gpu_limit_mb
    budget_bytes: int | None = None  # memory.budget_mb
    interval_steps: int = 10
    interval_s: float = 5.0
    watch_host: bool = True
    kill_over_budget: bool = False

    @classmethod
    def from_config(cls, memory) -> "MemorySettings":
        """From the (checked) `memory` config node, or any object with its attributes."""
        return cls(gpu_cap_bytes=int(memory.gpu_limit_mb * MIB) if memory.gpu_limit_mb else None,
                   budget_bytes=int(memory.budget_mb * MIB) if memory.budget_mb else None,
                   interval_steps=int(memory.interval_steps), interval_s=float(memory.interval_s),
                   watch_host=bool(memory.watch_host), kill_over_budget=bool(memory.kill_over_budget))


def pool_limit(pool: str, natural_bytes: int | None, natural_source: str, cap_bytes: int | None = None,
               budget_bytes: int | None = None) -> PoolLimit | None:
    """The limit of `pool`: the configured cap, else the natural one, lowered to the budget; None if unknown."""
    limit, source = (cap_bytes, "memory.gpu_limit_mb") if cap_bytes else (natural_bytes, natural_source)
    if budget_bytes and (limit is None or budget_bytes < limit):
        limit, source = budget_bytes, "memory.budget_mb"
    return None if limit is None else PoolLimit(pool, int(limit), source)


def pool_limits(gpu_count: int, gpu_cap_bytes: int | None = None, budget_bytes: int | None = None,
                host_probe=None, nvml_probe=None) -> dict[str, PoolLimit]:
    """Each pool's limit now (host, gpu0..gpu{count-1}), read through the probes the monitor uses."""
    from tfodtrain.memory import probes

    if host_probe is None or nvml_probe is None:
        host_probe, nvml_probe = probes.default_probes()
    host = host_probe.read()
    limits = {"host": pool_limit("host", probes.host_limit_bytes(host),
                                 "the cgroup limit" if host.cgroup_limit_bytes is not None else "physical memory",
                                 budget_bytes=budget_bytes)}
    cards = {g.pool: g for g in nvml_probe.read() if g.ok} if gpu_count else {}
    for index in range(gpu_count):
        pool = f"gpu{index}"
        natural = probes.gpu_limit_bytes(cards[pool]) if pool in cards else None
        found = pool_limit(pool, natural, "what the card leaves this process", gpu_cap_bytes, budget_bytes)
        if found is not None:
            limits[pool] = found
    return limits
