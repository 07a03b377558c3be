"""A real PyTorch training of a torchvision detector, to be guarded from outside by ``python -m tfodtrain.watch``.

torchvision's ``ssdlite320_mobilenet_v3_large`` or ``retinanet_resnet50_fpn`` (``weights=None,
weights_backbone=None``: no download) trains with SGD on synthetic images and boxes made on the GPU. It

* saves ``CKPT_DIR/ckpt_<step>.pt`` (model, optimizer, step; through a ``.tmp`` file and a rename; the
  newest 2 kept) every ``--save-every`` steps and on SIGTERM (then exits 143), and resumes from the newest;
* caps itself with ``torch.cuda.set_per_process_memory_fraction`` so that CUDA's out-of-memory error comes
  when NVML's bytes for this process reach ``--gpu-budget-mb``: after a warm-up it measures its overhead
  outside the caching allocator (NVML's bytes minus ``memory_reserved``: the CUDA context, kernels, cuBLAS)
  and caps the allocator at the budget minus that. Give the watch the same ``--budget-mb``;
* with ``--leak``, from ``--leak-start-s`` seconds on keeps each step's outputs (the detached loss dict)
  and a fixed-size GPU tensor in a Python list, sized from the measured step rate so that the room left
  under the cap fills in about ``--leak-fill-s`` seconds; ``--leak-unless-resumed``: a resumed run does not
  leak (the fix that came with the restart);
* on ``torch.cuda.OutOfMemoryError`` writes ``STATUS_DIR/oom.json`` and exits 76;
* ends after ``--duration-s`` seconds (a resumed run: after ``--resumed-steps`` steps), saving first.

    # on the GPU machine, under the watch:
    PYTHONPATH=. python3 -m tfodtrain.watch --budget-mb 10240 --checkpoint-dir /tmp/r1/ckpt --restarts 1 -- \\
        python3 scripts/torch_train_workload.py --model retinanet --ckpt-dir /tmp/r1/ckpt --gpu-budget-mb 10240 \\
        --leak --leak-unless-resumed --status-dir /tmp/r1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
MODELS = {  # name: (torchvision builder, batch, image side, takes min_size/max_size)
    "ssdlite": ("ssdlite320_mobilenet_v3_large", 32, 320, False),
    "retinanet": ("retinanet_resnet50_fpn", 4, 512, True),
}
WARMUP_STEPS = 3
RATE_WINDOW_S = 12.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="retinanet")
    p.add_argument("--ckpt-dir", type=Path, required=True)
    p.add_argument("--status-dir", type=Path, default=None, help="oom.json and status.json go here (default: ckpt dir's parent)")
    p.add_argument("--save-every", type=int, default=100, help="steps between regular saves")
    p.add_argument("--gpu-budget-mb", type=float, required=True)
    p.add_argument("--duration-s", type=float, default=900.0)
    p.add_argument("--resumed-steps", type=int, default=40)
    p.add_argument("--leak", action="store_true")
    p.add_argument("--leak-start-s", type=float, default=60.0, help="seconds after training starts")
    p.add_argument("--leak-fill-s", type=float, default=240.0)
    p.add_argument("--leak-unless-resumed", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    import torchvision.models.detection as detection

    from tfodtrain.memory.probes import NvmlProbe

    status_dir = args.status_dir or args.ckpt_dir.parent
    status_dir.mkdir(parents=True, exist_ok=True)
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s workload {os.getpid()}] {message}", flush=True)

    stop = {"signal": None}

    def on_term(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_term)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    dev = torch.device("cuda", 0)
    torch.empty(1, device=dev).fill_(0)
    total = torch.cuda.get_device_properties(0).total_memory
    builder, batch, side, sized = MODELS[args.model]
    model = getattr(detection, builder)(weights=None, weights_backbone=None,
                                        **({"min_size": side, "max_size": side} if sized else {})).to(dev).train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

    step = 0
    found = sorted(args.ckpt_dir.glob("ckpt_*.pt"))
    resumed = bool(found)
    if resumed:
        state = torch.load(found[-1], map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"resumed from {found[-1].name} at step {step}")
    leak = args.leak and not (args.leak_unless_resumed and resumed)
    end_step = step + args.resumed_steps if resumed else None

    def save(why: str) -> None:
        path = args.ckpt_dir / f"ckpt_{step:07d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, path)
        for old in sorted(args.ckpt_dir.glob("ckpt_*.pt"))[:-2]:
            old.unlink(missing_ok=True)
        log(f"saved {path.name} ({why})")

    def make_batch(n: int):
        images = list(torch.rand(n, 3, side, side, device=dev))
        scale = torch.tensor([side, side], device=dev, dtype=torch.float32)
        targets = []
        for _ in range(n):
            k = random.randint(1, 8)
            xy = torch.rand(k, 2, device=dev) * 0.7 * scale
            wh = (0.05 + torch.rand(k, 2, device=dev) * 0.25) * scale
            targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                            "labels": torch.randint(1, 91, (k,), device=dev)})
        return images, targets

    def train_step():
        images, targets = make_batch(batch)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        if math.isfinite(loss.item()):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
        return {k: v.detach() for k, v in losses.items()}

    result = {"pid": os.getpid(), "model": builder, "batch": batch, "resumed": resumed, "start_step": step,
              "leak": leak, "outcome": "running"}

    def write_status() -> None:
        (status_dir / f"status_{os.getpid()}.json").write_text(json.dumps(result, indent=1))

    held = []
    try:
        for _ in range(WARMUP_STEPS):
            train_step()
            step += 1
        torch.cuda.synchronize()
        nvml = NvmlProbe().read()
        own = nvml[0].process_bytes if nvml and nvml[0].ok else None
        reserved = torch.cuda.memory_reserved(dev)
        overhead = (own - reserved) if own else 800 * MIB
        budget = int(args.gpu_budget_mb * MIB)
        cap = budget - overhead
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
        result.update(nvml_own_at_cap=own, reserved_at_cap=reserved, overhead_bytes=overhead, cap_bytes=cap,
                      budget_bytes=budget, warmup_peak_reserved=torch.cuda.max_memory_reserved(dev))
        log(f"warm-up done: reserved {reserved / GIB:.2f} GiB, NVML own {own and own / GIB:.2f} GiB, overhead "
            f"{overhead / MIB:.0f} MiB; allocator capped at {cap / GIB:.2f} GiB so that OOM comes at the "
            f"{budget / GIB:.2f} GiB budget; leak={leak}")
        write_status()
        train_start = time.monotonic()
        rate = []
        leak_bytes = None
        while True:
            if stop["signal"] is not None:
                save("SIGTERM")
                result["outcome"] = "sigterm"
                write_status()
                log("SIGTERM: saved, exiting 143")
                return 143
            elapsed = time.monotonic() - train_start
            if (end_step is not None and step >= end_step) or (end_step is None and elapsed >= args.duration_s):
                save("end")
                result.update(outcome="done", steps=step)
                write_status()
                log(f"done at step {step}")
                return 0
            outputs = train_step()
            step += 1
            rate.append((time.monotonic(), step))
            rate = [r for r in rate if r[0] >= time.monotonic() - RATE_WINDOW_S]
            if leak and leak_bytes is None and elapsed >= args.leak_start_s and len(rate) >= 5:
                steps_per_s = (rate[-1][1] - rate[0][1]) / max(1e-6, rate[-1][0] - rate[0][0])
                room = max(256 * MIB, cap - torch.cuda.memory_reserved(dev))
                leak_bytes = max(MIB, int(room / max(1.0, args.leak_fill_s * steps_per_s)) // MIB * MIB)
                result.update(leak_started_s=round(time.monotonic() - t0, 1), leak_started_step=step,
                              leak_mib_per_step=leak_bytes / MIB, steps_per_s_at_leak=round(steps_per_s, 3))
                write_status()
                log(f"leak starts at step {step}: {steps_per_s:.2f} steps/s, room {room / GIB:.2f} GiB, "
                    f"{leak_bytes / MIB:.0f} MiB a step")
            if leak_bytes is not None:
                chunk = torch.empty(leak_bytes, dtype=torch.uint8, device=dev)
                chunk.fill_(1)
                held.append((outputs, chunk))
            if step % args.save_every == 0:
                save("regular")
            if step % 50 == 0:
                log(f"step {step}: reserved {torch.cuda.memory_reserved(dev) / GIB:.2f} GiB, held {len(held)}")
    except torch.cuda.OutOfMemoryError as error:
        result.update(outcome="cuda_oom", oom_step=step, oom_time_s=round(time.monotonic() - t0, 1),
                      oom_error=str(error).splitlines()[0][:300])
        (status_dir / "oom.json").write_text(json.dumps(result, indent=1))
        write_status()
        log(f"CUDA OOM at step {step}: {result['oom_error']}")
        return 76


if __name__ == "__main__":
    sys.exit(main())
