"""Check on a real GPU that NvmlProbe's per-process bytes grow by what we allocate.

Creates the CUDA context (and loads the fill kernel) first, so neither lands in the measurement,
reads the probe, allocates 4 GiB (PyTorch, else CuPy), touches it, synchronises, reads again,
and prints the growth of this process's NVML bytes against 4 GiB. PASS within 2%.

No TensorFlow needed. Run from the source tree:

    PYTHONPATH=. python3 scripts/gpu_probe_check.py [--gib 4] [--device 0] [--tolerance-percent 2]

Exit 0 on PASS, 1 on FAIL, 2 when there is no GPU or no framework to allocate with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfodtrain.memory.probes import NvmlProbe, gpu_limit_bytes

GiB = 1 << 30


class TorchAllocator:
    name = "torch"

    def __init__(self, device: int):
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)
        warm = torch.empty(1 << 20, dtype=torch.uint8, device=self.device)  # context + fill kernel
        warm.fill_(1)
        torch.cuda.synchronize(self.device)

    def allocate(self, nbytes: int):
        block = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        block.fill_(1)  # cudaMalloc commits at once; the fill proves the memory is really usable
        self.torch.cuda.synchronize(self.device)
        return block

    def framework_reserved_bytes(self) -> int:
        return int(self.torch.cuda.memory_reserved(self.device))


class CupyAllocator:
    name = "cupy"

    def __init__(self, device: int):
        import cupy

        self.cupy = cupy
        cupy.cuda.Device(device).use()
        cupy.cuda.set_allocator(None)  # plain cudaMalloc per array: no pool rounding
        warm = cupy.empty(1 << 20, dtype=cupy.uint8)
        warm.fill(1)
        cupy.cuda.Device().synchronize()

    def allocate(self, nbytes: int):
        block = self.cupy.empty(nbytes, dtype=self.cupy.uint8)
        block.fill(1)
        self.cupy.cuda.Device().synchronize()
        return block

    def framework_reserved_bytes(self) -> int:
        return -1


def make_allocator(device: int):
    for factory in (TorchAllocator, CupyAllocator):
        try:
            return factory(device)
        except ImportError:
            continue
    return None


def find_reading(probe: NvmlProbe, device: int):
    return next((r for r in probe.read() if r.cuda_index == device), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="how much to allocate (GiB)")
    parser.add_argument("--device", type=int, default=0, help="CUDA ordinal")
    parser.add_argument("--tolerance-percent", type=float, default=2.0)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    probe = NvmlProbe()
    if not probe.read():
        print(f"gpu_probe_check: no GPU to check ({probe.reason})")
        return 2
    allocator = make_allocator(args.device)
    if allocator is None:
        print("gpu_probe_check: neither PyTorch nor CuPy is installed")
        return 2

    before = find_reading(probe, args.device)
    if before is None or before.process_bytes is None:
        print(f"gpu_probe_check: NVML gives no per-process bytes for device {args.device}: {before}")
        return 1
    nbytes = int(args.gib * GiB)
    block = allocator.allocate(nbytes)
    after = find_reading(probe, args.device)

    grown = after.process_bytes - before.process_bytes
    delta_percent = (grown - nbytes) / nbytes * 100
    passed = abs(delta_percent) <= args.tolerance_percent
    result = {
        "pid": os.getpid(),
        "allocator": allocator.name,
        "gpu": {"nvml_index": after.index, "name": after.name, "uuid": after.uuid, "total_bytes": after.total_bytes},
        "allocated_bytes": nbytes,
        "process_bytes_before": before.process_bytes,
        "process_bytes_after": after.process_bytes,
        "process_bytes_grown": grown,
        "delta_vs_allocated_percent": round(delta_percent, 4),
        "card_used_bytes_before": before.used_bytes,
        "card_used_bytes_after": after.used_bytes,
        "other_processes_bytes": after.other_processes_bytes,
        "limit_bytes_after": gpu_limit_bytes(after),
        "framework_reserved_bytes": allocator.framework_reserved_bytes(),
        "tolerance_percent": args.tolerance_percent,
        "passed": passed,
    }
    del block
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    mib = 1 << 20
    print(
        f"per-process bytes: {before.process_bytes / mib:.0f} MiB before, {after.process_bytes / mib:.0f} MiB after, "
        f"grew {grown / mib:.0f} MiB for {nbytes / mib:.0f} MiB allocated ({delta_percent:+.3f}%)"
    )
    verdict = "PASS" if passed else "FAIL"
    print(f"{verdict}: growth off by {delta_percent:+.3f}% (tolerance {args.tolerance_percent}%)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
