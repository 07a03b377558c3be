"""Record real GPU memory traces of PyTorch trainings of torchvision detectors, leaking or not.

One command on a GPU machine starts many child trainings at once on the one GPU, each a separate
Python process training a torchvision detector (``weights=None, weights_backbone=None``: no
network) on synthetic random images and boxes made on the GPU. Each child:

* warms up (a few training steps, and one evaluation pass or big batch when it has those) with no
  cap, then caps its caching allocator with ``torch.cuda.set_per_process_memory_fraction`` at
  ``cap = max(planned cap, what the warm-up needed + headroom)``;
* measures its non-allocator overhead right then, as NVML sees it: NVML's bytes for its own PID
  minus ``torch.cuda.memory_reserved()`` (the CUDA context, kernels loaded so far, cuBLAS/cuDNN
  handles); ``limit_bytes = cap + overhead``, constant for the run, in the same terms as
  ``used_bytes``;
* records a reading every ``interval_s`` seconds from its own thread: ``step`` = training steps
  done, ``time_s`` since the child's start (readings start before the model is built), and
  ``used_bytes`` = NVML's per-process bytes for its own PID (nvmlDeviceGetComputeRunningProcesses
  through ``NvmlProbe``). Where NVML does not show its PID (PID namespaces), it falls back to
  ``torch.cuda.memory_reserved()`` with ``limit = cap``, and meta.json says so;
* leaking children keep, from their leak's start, each step's detached loss dict and a fixed-size
  GPU tensor (``leak_mib_step``) in a Python list, the seed's leak, sized from the measured step
  rate so that the room left under the cap fills in about ``fill_s`` seconds (a ``stairs`` leak
  keeps a bigger chunk every ``leak_every_s`` seconds instead, as when each evaluation's
  detections are kept). They run until ``torch.cuda.OutOfMemoryError``, then write one last
  reading (the ``oom_step``) and exit;
* healthy children train for ``duration_s`` seconds, some with an evaluation pass on a bigger
  batch every ``eval_every_s`` seconds (with or without ``torch.cuda.empty_cache()`` after it) or
  a training step on a double batch every ``big_every_s`` seconds.

The parent then writes ``OUT/gpu_traces.tar.gz``: ``gpu_traces/<name>.csv`` (``step,time_s,
used_bytes,limit_bytes``, tfodtrain.memory.traces format), ``labels.json`` ({file: {kind, leak,
oom_step}}, the shared leak_traces contract), ``meta.json`` (plan and outcome of every child),
``allocator/<name>.tsv`` (PyTorch's reserved/allocated bytes beside each reading) and
``logs/<name>.log`` (each child's log tail), and prints a summary table.

    # on the GPU machine (PyTorch, torchvision, pynvml there):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 scripts/gpu_torch_traces.py --out $OUT --wall 450
    # a held-out set: every child's start, fill time, interval and cap drawn again from a seed
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 scripts/gpu_torch_traces.py --out $OUT --wall 540 --seed 61
    # anywhere, no torch, no GPU: fake children on a fast clock, to check the plumbing
    PYTHONPATH=. python3 scripts/gpu_torch_traces.py --dry-run --out /tmp/dry --wall 30

Leaks that do not reach their OOM before the wall deadline, and children that fail, are left out
of labels.json (they stay in meta.json with their outcome).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

GiB = 1 << 30
MiB = 1 << 20

# --------------------------------------------------------------------------------------------
# The plan: 8 leaking and 8 healthy trainings, all at once on one GPU
# --------------------------------------------------------------------------------------------

MODELS = {
    # name: (torchvision builder, batch, image side, size kwargs allowed)
    "fasterrcnn": ("fasterrcnn_mobilenet_v3_large_fpn", 8, 640, True),
    "retinanet": ("retinanet_resnet50_fpn", 4, 512, True),
    "ssdlite": ("ssdlite320_mobilenet_v3_large", 32, 320, False),
    "maskrcnn": ("maskrcnn_resnet50_fpn", 4, 512, True),
    "fcos": ("fcos_resnet50_fpn", 4, 512, True),
}


def leak(name, model, cap, interval, start, fill, mode="per_step", every_s=0.0):
    return dict(name=name, model=model, cap_gib=cap, interval_s=interval, leak=True,
                leak_start_s=start, fill_s=fill, leak_mode=mode, leak_every_s=every_s,
                kind="gpu_leak_stairs" if mode == "stairs" else "gpu_leak_per_step")


def healthy(name, model, cap, interval, duration, eval_every=0.0, eval_mult=2, empty=False,
            big_every=0.0, kind="gpu_healthy"):
    return dict(name=name, model=model, cap_gib=cap, interval_s=interval, leak=False,
                duration_s=duration, eval_every_s=eval_every, eval_mult=eval_mult,
                empty_cache_after=empty, big_every_s=big_every, kind=kind)


PLAN = [
    # leaks that start at once (after the warm-up and a step-rate measurement, ~15 s)
    leak("leak_fasterrcnn_3min_0", "fasterrcnn", 8, 1.0, 15, 180),
    leak("leak_retinanet_4min_0", "retinanet", 10, 2.0, 15, 240),
    leak("leak_ssdlite_6min_0", "ssdlite", 6, 0.5, 15, 360),
    leak("leak_maskrcnn_6min_0", "maskrcnn", 12, 3.0, 15, 340),
    # leaks that start after 60-90 s of healthy training
    leak("leak_fasterrcnn_3min_1", "fasterrcnn", 7, 1.5, 90, 180),
    leak("leak_retinanet_5min_1", "retinanet", 9, 1.0, 75, 300),
    leak("leak_ssdlite_stairs_4min_1", "ssdlite", 6, 1.0, 60, 240, mode="stairs", every_s=20),
    leak("leak_fcos_5min_1", "fcos", 10, 2.0, 60, 300),
    # healthy runs, 6-6.7 minutes
    healthy("healthy_fasterrcnn_0", "fasterrcnn", 8, 1.0, 400),
    healthy("healthy_retinanet_0", "retinanet", 10, 2.0, 380, eval_every=60, eval_mult=2, empty=True,
            kind="gpu_healthy_eval_spikes"),
    healthy("healthy_ssdlite_0", "ssdlite", 6, 0.5, 400),
    healthy("healthy_maskrcnn_0", "maskrcnn", 12, 3.0, 380, eval_every=90, eval_mult=2, empty=False,
            kind="gpu_healthy_eval_cached"),
    healthy("healthy_fasterrcnn_1", "fasterrcnn", 7, 1.5, 360, big_every=45, empty=True,
            kind="gpu_healthy_big_batch"),
    healthy("healthy_retinanet_1", "retinanet", 9, 1.0, 360),
    # On the H200 with 16 children, this one's warm-up evaluation (128 images, SSD post-processing)
    # took ~340 s: its trace of 2026-11-30 is one long evaluation (labelled gpu_healthy_long_eval)
    healthy("healthy_ssdlite_1", "ssdlite", 6, 1.0, 400, eval_every=40, eval_mult=4, empty=True,
            kind="gpu_healthy_eval_spikes"),
    healthy("healthy_fcos_1", "fcos", 10, 2.0, 370),
]


def reseeded(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """The plan entry drawn again for ``--seed`` (0 keeps it): a held-out set of real traces.

    Same model and kind; the reading interval, the cap (+-2 GiB), a leak's start (15-90 s) and
    fill time (3-5.5 minutes), a stair leak's spacing and a healthy run's eval/big-batch spacing are
    drawn from ``seed`` and the child's name, so a seed always gives the same plan.
    """
    if not seed:
        return dict(spec)
    rng = random.Random(zlib.crc32(f"{seed}:{spec['name']}".encode()))
    out = dict(spec, seed=seed)
    out["interval_s"] = rng.choice([0.5, 1.0, 1.5, 2.0, 3.0])
    out["cap_gib"] = max(5, spec["cap_gib"] + rng.choice([-2, -1, 0, 1, 2]))
    if spec["leak"]:
        out["leak_start_s"] = round(rng.uniform(15, 90))
        out["fill_s"] = round(rng.uniform(180, 330))
        if spec["leak_mode"] == "stairs":
            out["leak_every_s"] = round(rng.uniform(15, 40))
    else:
        if spec.get("eval_every_s"):
            out["eval_every_s"] = round(rng.uniform(40, 90))
        if spec.get("big_every_s"):
            out["big_every_s"] = round(rng.uniform(30, 60))
    return out


WARMUP_STEPS = 3
RATE_WINDOW_S = 12.0  # the step rate that sizes a leak is measured over this many seconds


# --------------------------------------------------------------------------------------------
# Backends: the real one (PyTorch on the GPU) and a fake one for --dry-run
# --------------------------------------------------------------------------------------------


class TorchBackend:
    """A torchvision detector training on synthetic batches made on the GPU."""

    def __init__(self, spec: dict[str, Any], log):
        import torch
        import torchvision.models.detection as detection

        self.torch = torch
        self.OOM = torch.cuda.OutOfMemoryError
        torch.set_num_threads(1)
        self.dev = torch.device("cuda", 0)
        torch.empty(1, device=self.dev).fill_(0)  # the CUDA context, before the first reading
        torch.cuda.synchronize()
        self.total = torch.cuda.get_device_properties(0).total_memory
        builder, self.batch, self.side, sized = MODELS[spec["model"]]
        self.masks = spec["model"] == "maskrcnn"
        self._build = lambda: getattr(detection, builder)(
            weights=None, weights_backbone=None,
            **({"min_size": self.side, "max_size": self.side} if sized else {}))
        self.builder = builder
        self.log = log
        self.model = None
        self.opt = None
        self.held: list[Any] = []

    def build(self) -> None:
        torch = self.torch
        self.model = self._build().to(self.dev).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def _batch(self, n: int):
        torch, dev, side = self.torch, self.dev, self.side
        images = list(torch.rand(n, 3, side, side, device=dev))
        scale = torch.tensor([side, side], device=dev, dtype=torch.float32)
        targets = []
        for _ in range(n):
            k = random.randint(1, 8)
            xy = torch.rand(k, 2, device=dev) * 0.7 * scale
            wh = (0.05 + torch.rand(k, 2, device=dev) * 0.25) * scale
            boxes = torch.cat([xy, xy + wh], dim=1)
            target = {"boxes": boxes, "labels": torch.randint(1, 91, (k,), device=dev)}
            if self.masks:
                masks = torch.zeros(k, side, side, dtype=torch.uint8, device=dev)
                for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                    masks[i, y1:y2, x1:x2] = 1
                target["masks"] = masks
            targets.append(target)
        return images, targets

    def train_step(self, mult: int = 1) -> dict[str, Any]:
        torch = self.torch
        images, targets = self._batch(self.batch * mult)
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        if math.isfinite(loss.item()):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.opt.step()
        return {k: v.detach() for k, v in losses.items()}

    def eval_pass(self, mult: int) -> None:
        images, _ = self._batch(self.batch * mult)
        self.model.eval()
        with self.torch.no_grad():
            detections = self.model(images)
        self.torch.cuda.synchronize()
        del detections
        self.model.train()

    def empty_cache(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()

    def hold(self, nbytes: int, extra: Any) -> None:
        """The leak: keep this step's outputs and a fixed-size tensor, step after step."""
        chunk = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.dev)
        chunk.fill_(1)
        self.held.append((extra, chunk))

    def set_cap(self, cap_bytes: int) -> None:
        self.torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / self.total), 0)

    def reserved(self) -> int:
        return self.torch.cuda.memory_reserved(self.dev)

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated(self.dev)

    def peak_reserved(self) -> int:
        return self.torch.cuda.max_memory_reserved(self.dev)


class FakeOOM(Exception):
    pass


class FakeBackend:
    """--dry-run: no torch, no GPU. A reserved pool with a training peak, a leak and a cap."""

    OOM = FakeOOM
    total = 140 * GiB
    builder = "fake"

    def __init__(self, spec: dict[str, Any], log):
        self.base = {"fasterrcnn": 2, "retinanet": 3, "ssdlite": 1, "maskrcnn": 4, "fcos": 3}[spec["model"]] * GiB
        self.batch = MODELS[spec["model"]][1]
        self.pool = 0
        self.held_bytes = 0
        self.cap = None
        self.peak = 0
        self.built = False

    def build(self) -> None:
        self.pool = 300 * MiB
        self.built = True

    def _need(self, nbytes: int) -> None:
        want = max(self.pool, self.held_bytes + nbytes)
        if self.cap is not None and want > self.cap:
            self.pool = self.held_bytes  # the allocator empties its cache before it gives up
            raise FakeOOM(f"fake: {want} > cap {self.cap}")
        self.pool = want
        self.peak = max(self.peak, self.pool)

    def train_step(self, mult: int = 1) -> dict[str, Any]:
        time.sleep(0.01)
        self._need(self.base * mult)
        return {"loss": 0.0}

    def eval_pass(self, mult: int) -> None:
        self._need(self.base * mult)

    def empty_cache(self) -> None:
        self.pool = self.held_bytes

    def hold(self, nbytes: int, extra: Any) -> None:
        self._need(nbytes + self.base)
        self.held_bytes += nbytes

    def set_cap(self, cap_bytes: int) -> None:
        self.cap = cap_bytes

    def reserved(self) -> int:
        return self.pool

    def allocated(self) -> int:
        return self.held_bytes

    def peak_reserved(self) -> int:
        return self.peak


class FakeProbe:
    def __init__(self, backend: FakeBackend):
        self.backend = backend

    def own_bytes(self) -> int | None:
        return 500 * MiB + self.backend.reserved()


class OwnNvml:
    """This process's bytes on GPU 0 from NvmlProbe (nvmlDeviceGetComputeRunningProcesses)."""

    def __init__(self):
        from tfodtrain.memory.probes import NvmlProbe

        self.probe = NvmlProbe()

    def own_bytes(self) -> int | None:
        readings = self.probe.read()
        if not readings or not readings[0].ok:
            return None
        return readings[0].process_bytes


# --------------------------------------------------------------------------------------------
# One child training
# --------------------------------------------------------------------------------------------


class Recorder:
    """Readings every interval_s from a thread; rows wait in memory until the limit is known."""

    def __init__(self, spec, workdir: Path, backend, probe, t0: float):
        from tfodtrain.memory.traces import TraceWriter

        self.spec, self.backend, self.probe, self.t0 = spec, backend, probe, t0
        self.interval = float(spec["interval_s"])
        self.csv_path = workdir / f"{spec['name']}.csv"
        self.tsv_path = workdir / f"{spec['name']}.tsv"
        self.writer = TraceWriter(self.csv_path)
        self.tsv = open(self.tsv_path, "w", encoding="utf-8")
        self.tsv.write("step\ttime_s\tnvml_bytes\treserved_bytes\tallocated_bytes\n")
        self.lock = threading.Lock()
        self.pending: list[tuple[int, float, int]] = []
        self.limit: int | None = None
        self.use_nvml: bool | None = None  # decided at the cap; rows before are NVML if it works
        self.steps = 0
        self.rows = 0
        self.last: tuple[int, float, int] | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        while True:
            next_t += self.interval
            self.read()
            if self.stop_event.wait(max(0.0, next_t - time.monotonic())):
                return

    def read(self) -> None:
        with self.lock:
            t = time.monotonic() - self.t0
            step = self.steps
            nvml = self.probe.own_bytes()
            reserved, allocated = self.backend.reserved(), self.backend.allocated()
            if self.use_nvml is False or (self.use_nvml is None and not nvml):
                used = reserved
            else:
                used = nvml if nvml else reserved
            self.tsv.write(f"{step}\t{t:.2f}\t{nvml if nvml is not None else ''}\t{reserved}\t{allocated}\n")
            self.tsv.flush()
            row = (step, t, int(used))
            self.last = row
            if self.limit is None:
                self.pending.append(row)
            else:
                self.writer.append(*row, self.limit)
                self.rows += 1

    def set_limit(self, limit: int, use_nvml: bool) -> None:
        with self.lock:
            self.limit, self.use_nvml = limit, use_nvml
            for step, t, used in self.pending:
                if not use_nvml:  # rows taken before the decision: keep them in the same terms
                    used = min(used, limit)
                self.writer.append(step, t, used, limit)
                self.rows += 1
            self.pending.clear()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def close(self) -> None:
        with self.lock:
            if self.limit is None and self.pending:  # died before the cap: write what we have
                self.limit = 0
            self.writer.close()
            self.tsv.close()


def run_child(spec: dict[str, Any], workdir: Path, deadline_unix: float, dry: bool) -> int:
    name = spec["name"]
    log_file = open(workdir / f"{name}.log", "a", encoding="utf-8")
    started = time.monotonic()

    def log(message: str) -> None:
        line = f"[{time.monotonic() - started:7.2f}s {name}] {message}"
        log_file.write(line + "\n")
        log_file.flush()

    random.seed(zlib.crc32(name.encode()) + int(spec.get("seed", 0)))
    result: dict[str, Any] = {"name": name, "outcome": "error", "pid": os.getpid()}
    recorder = None
    try:
        backend = FakeBackend(spec, log) if dry else TorchBackend(spec, log)
        probe = FakeProbe(backend) if dry else OwnNvml()
        clock_scale = float(spec.get("time_scale", 1.0))  # --dry-run: plan seconds / scale
        t0 = time.monotonic()
        result["start_unix"] = time.time()
        recorder = Recorder(spec, workdir, backend, probe, t0)
        recorder.start()
        backend.build()
        log(f"built {backend.builder}, batch {backend.batch}; device total {backend.total / GiB:.1f} GiB")

        def now() -> float:
            return (time.monotonic() - t0) * clock_scale  # plan seconds

        # -- warm-up with no cap: what does this training need? --
        for _ in range(WARMUP_STEPS):
            backend.train_step()
            recorder.steps += 1
        if spec.get("eval_every_s"):
            backend.eval_pass(spec["eval_mult"])
            if spec.get("empty_cache_after"):
                backend.empty_cache()
        if spec.get("big_every_s"):
            backend.train_step(2)
            recorder.steps += 1
            if spec.get("empty_cache_after"):
                backend.empty_cache()
        peak = backend.peak_reserved()
        planned = int(spec["cap_gib"] * GiB)
        need = int(peak * 1.5) if not spec["leak"] else peak + 3 * GiB
        cap = max(planned, -(-need // (GiB // 2)) * (GiB // 2))
        backend.set_cap(cap)
        nvml = probe.own_bytes()
        reserved = backend.reserved()
        use_nvml = bool(nvml)
        overhead = (nvml - reserved) if use_nvml else 0
        limit = cap + overhead
        recorder.set_limit(limit, use_nvml)
        result.update(cap_bytes=cap, planned_cap_bytes=planned, warmup_peak_reserved_bytes=peak,
                      overhead_bytes_at_cap=overhead, limit_bytes=limit, nvml_per_process=use_nvml,
                      cap_set_at_s=round(now(), 2), batch=backend.batch, builder=backend.builder)
        log(f"warm-up peak reserved {peak / GiB:.2f} GiB; cap {cap / GiB:.2f} GiB; NVML own "
            f"{'n/a' if nvml is None else f'{nvml / GiB:.2f} GiB'}; overhead {overhead / MiB:.0f} MiB; "
            f"limit {limit / GiB:.2f} GiB; nvml_per_process={use_nvml}")

        # -- training --
        rate_window: collections.deque[tuple[float, int]] = collections.deque()
        leak_bytes = 0
        leak_started_at = None
        leak_steps = 0
        next_leak_event = None
        next_eval = spec.get("eval_every_s") or None
        next_big = spec.get("big_every_s") or None
        deadline = (deadline_unix - time.time()) * clock_scale + now()
        end = min(deadline, spec["duration_s"]) if not spec["leak"] else deadline
        result["stop_at_plan_s"] = round(end, 1)
        evals = bigs = 0
        try:
            while now() < end:
                t = now()
                outputs = backend.train_step()
                recorder.steps += 1
                rate_window.append((now(), recorder.steps))
                while rate_window and rate_window[0][0] < now() - RATE_WINDOW_S:
                    rate_window.popleft()
                if spec["leak"]:
                    if leak_started_at is None and t >= spec["leak_start_s"] and len(rate_window) >= 5:
                        (t_a, s_a), (t_b, s_b) = rate_window[0], rate_window[-1]
                        rate = (s_b - s_a) / max(1e-6, t_b - t_a)
                        room = max(64 * MiB, cap - backend.reserved())
                        if spec["leak_mode"] == "stairs":
                            events = max(1.0, spec["fill_s"] / spec["leak_every_s"])
                            next_leak_event = now()
                        else:
                            events = max(1.0, spec["fill_s"] * rate)
                        leak_bytes = max(MiB, int(room / events) // MiB * MiB)
                        leak_started_at = now()
                        result.update(leak_started_s=round(leak_started_at, 2),
                                      leak_started_step=recorder.steps, steps_per_s_at_leak=round(rate, 3),
                                      room_at_leak_bytes=room, leak_bytes_per_event=leak_bytes)
                        log(f"leak starts at step {recorder.steps}: {rate:.2f} steps/s, room "
                            f"{room / GiB:.2f} GiB, {leak_bytes / MiB:.0f} MiB per "
                            f"{'event every %gs' % spec['leak_every_s'] if next_leak_event is not None else 'step'}")
                    if leak_started_at is not None:
                        if next_leak_event is None:
                            backend.hold(leak_bytes, outputs)
                            leak_steps += 1
                        elif now() >= next_leak_event:
                            backend.hold(leak_bytes, outputs)
                            leak_steps += 1
                            next_leak_event += spec["leak_every_s"]
                if next_eval is not None and now() >= next_eval:
                    backend.eval_pass(spec["eval_mult"])
                    if spec.get("empty_cache_after"):
                        backend.empty_cache()
                    evals += 1
                    next_eval += spec["eval_every_s"]
                if next_big is not None and now() >= next_big:
                    backend.train_step(2)
                    recorder.steps += 1
                    if spec.get("empty_cache_after"):
                        backend.empty_cache()
                    bigs += 1
                    next_big += spec["big_every_s"]
            result["outcome"] = "done" if not spec["leak"] else "deadline"
        except backend.OOM as error:
            recorder.stop()
            recorder.read()  # the reading at which the process dies
            step, t, used = recorder.last
            result.update(outcome="oom", oom_step=step, oom_time_s=round(t, 2),
                          used_at_oom_bytes=used, oom_error=str(error).splitlines()[0][:300])
            if leak_started_at is not None:
                result["leak_to_oom_s"] = round(t - leak_started_at / clock_scale, 2)
            log(f"CUDA OOM at step {step}, {t:.1f} s: {result['oom_error']}")
        recorder.stop()
        if result["outcome"] != "oom":
            recorder.read()  # the last reading of a run that ended
        nvml_end = probe.own_bytes()
        result.update(steps=recorder.steps, evals=evals, big_batches=bigs, leak_events=leak_steps,
                      wall_s=round(time.monotonic() - t0, 2),
                      overhead_bytes_at_end=(nvml_end - backend.reserved()) if use_nvml and nvml_end else None,
                      peak_reserved_bytes=backend.peak_reserved(), rows=recorder.rows)
        log(f"end: {result['outcome']} after {recorder.steps} steps, {result['wall_s']} s")
        code = 0
    except Exception:  # noqa: BLE001 - a failed child is reported, the others go on
        result["error"] = traceback.format_exc()[-2000:]
        log("FAILED\n" + result["error"])
        code = 1
    finally:
        if recorder is not None:
            recorder.stop()
            recorder.close()
        (workdir / f"{name}.json").write_text(json.dumps(result, indent=1))
        log_file.close()
    return code


# --------------------------------------------------------------------------------------------
# The parent
# --------------------------------------------------------------------------------------------


def last_row(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 200))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""
    except OSError:
        return ""


def progress(plan, workdir: Path, elapsed: float) -> None:
    parts = []
    for spec in plan:
        row = last_row(workdir / f"{spec['name']}.tsv").split("\t")
        if len(row) >= 4 and row[0].isdigit():
            used = int(row[2]) if row[2] else int(row[3])
            short = spec["name"].replace("healthy_", "h_").replace("leak_", "L_")
            parts.append(f"{short}:{row[0]}st/{used / GiB:.1f}G")
    print(f"[{elapsed:5.0f}s] " + "  ".join(parts), flush=True)


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_traces_out"),
                        help="where gpu_traces.tar.gz goes (default $OUT)")
    parser.add_argument("--wall", type=float, default=450.0,
                        help="seconds from launch after which every child stops (default 450)")
    parser.add_argument("--only", default="", help="comma-separated child names (default: all 16)")
    parser.add_argument("--seed", type=int, default=0,
                        help="draw each child's start, fill time, interval and cap again from this "
                             "seed (default 0: the fixed plan of tests/data/gpu_traces)")
    parser.add_argument("--dry-run", action="store_true",
                        help="fake children (no torch, no GPU) on a clock --time-scale times faster")
    parser.add_argument("--time-scale", type=float, default=20.0, help="for --dry-run (default 20)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        return run_child(spec, Path(args.workdir), args.deadline, args.dry_run)

    plan = [reseeded(s, args.seed) for s in PLAN if not args.only or s["name"] in args.only.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_torch_traces_{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    scale = args.time_scale if args.dry_run else 1.0
    launch = time.time()
    deadline = launch + args.wall - 12  # children stop by then; the parent kills stragglers at wall
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    env["PYTHONUNBUFFERED"] = "1"
    procs = {}
    for spec in plan:
        spec["time_scale"] = scale
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec),
               "--workdir", str(workdir), "--deadline", str(deadline)]
        if args.dry_run:
            cmd.append("--dry-run")
        out_file = open(workdir / f"{spec['name']}.stdout", "w")
        procs[spec["name"]] = (subprocess.Popen(cmd, env=env, stdout=out_file, stderr=subprocess.STDOUT), out_file)
    print(f"gpu_torch_traces: {len(procs)} children started, wall {args.wall:g} s, workdir {workdir}"
          + (f" (dry run, time x{scale:g})" if args.dry_run else ""), flush=True)

    next_progress = time.time() + (30 if not args.dry_run else 2)
    while any(p.poll() is None for p, _ in procs.values()):
        now = time.time()
        if now >= launch + args.wall:
            for name, (p, _) in procs.items():
                if p.poll() is None:
                    print(f"gpu_torch_traces: {name} still running at the wall: killed", flush=True)
                    p.send_signal(signal.SIGKILL)
            break
        if now >= next_progress:
            progress(plan, workdir, now - launch)
            next_progress += 30 if not args.dry_run else 2
        time.sleep(0.5)
    for p, f in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        f.close()

    # -- collect --
    labels, meta = {}, {"made_by": "scripts/gpu_torch_traces.py", "dry_run": args.dry_run,
                        "launch_unix": launch, "wall_s": args.wall, "seed": args.seed, "children": {}}
    try:
        import torch

        meta["torch"] = torch.__version__
        import torchvision

        meta["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        meta["gpu"] = name.decode() if isinstance(name, bytes) else name
        meta["gpu_total_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        driver = pynvml.nvmlSystemGetDriverVersion()
        meta["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception as error:  # noqa: BLE001
        meta["gpu"] = f"unknown ({error})"
    rows = []
    for spec in plan:
        name = spec["name"]
        result_path = workdir / f"{name}.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {"outcome": "killed"}
        p, _ = procs[name]
        result["exit_code"] = p.returncode
        entry = {**spec, **{k: v for k, v in result.items() if k != "name"}}
        entry["model"] = MODELS[spec["model"]][0]
        if "leak_bytes_per_event" in result:
            entry["leak_mib_per_event"] = round(result["leak_bytes_per_event"] / MiB, 1)
        meta["children"][name] = entry
        file = f"{name}.csv"
        ok = (spec["leak"] and result["outcome"] == "oom" and result.get("leak_started_s") is not None) or (
            not spec["leak"] and result["outcome"] == "done")
        if ok:
            labels[file] = {"kind": spec["kind"], "leak": spec["leak"],
                            "oom_step": result.get("oom_step") if spec["leak"] else None}
        rows.append((name, entry, ok))

    pack = out / "gpu_traces.tar.gz"
    with tarfile.open(pack, "w:gz") as tar:
        def add_text(arcname: str, text: str) -> None:
            import io

            data = text.encode()
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))

        for name, entry, ok in rows:
            csv_path = workdir / f"{name}.csv"
            if ok and csv_path.exists():
                tar.add(csv_path, arcname=f"gpu_traces/{name}.csv")
            elif csv_path.exists():
                tar.add(csv_path, arcname=f"gpu_traces/unlabelled/{name}.csv")
            if (workdir / f"{name}.tsv").exists():
                tar.add(workdir / f"{name}.tsv", arcname=f"gpu_traces/allocator/{name}.tsv")
            log_text = ""
            for suffix in (".log", ".stdout"):
                if (workdir / f"{name}{suffix}").exists():
                    log_text += (workdir / f"{name}{suffix}").read_text(errors="replace")[-6000:]
            add_text(f"gpu_traces/logs/{name}.log", log_text)
        add_text("gpu_traces/labels.json", json.dumps(labels, indent=1, sort_keys=True) + "\n")
        add_text("gpu_traces/meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")

    # -- summary --
    print()
    print(f"{'file':34} {'model':34} {'batch':>5} {'capGiB':>6} {'limGiB':>6} {'int_s':>5} {'nvml':>4} "
          f"{'outcome':>8} {'steps':>6} {'leak@s':>6} {'MiB/ev':>7} {'oom_step':>8} {'oom_s':>6} {'leak->oom_s':>11}")
    for name, e, ok in rows:
        print(f"{name + '.csv':34} {e['model']:34} {e.get('batch', '-')!s:>5} "
              f"{fmt(e.get('cap_bytes') and e['cap_bytes'] / GiB):>6} {fmt(e.get('limit_bytes') and e['limit_bytes'] / GiB, '.2f'):>6} "
              f"{e['interval_s']:>5g} {str(e.get('nvml_per_process', '-'))[:4]:>4} {e['outcome']:>8} "
              f"{e.get('steps', '-')!s:>6} {fmt(e.get('leak_started_s')):>6} {fmt(e.get('leak_mib_per_event')):>7} "
              f"{e.get('oom_step', '-')!s:>8} {fmt(e.get('oom_time_s')):>6} {fmt(e.get('leak_to_oom_s')):>11}"
              + ("" if ok else "   (not labelled)"))
        if e.get("error"):
            print("    " + e["error"].strip().splitlines()[-1])
    print(f"\ngpu_torch_traces: {len(labels)}/{len(rows)} traces labelled; wrote {pack} "
          f"({pack.stat().st_size / 1024:.0f} KiB)")
    return 0 if len(labels) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
