"""The watch on a real GPU: leaking and healthy PyTorch trainings, each under `python -m tfodtrain.watch`.

Runs, all at once on GPU 0, each a `scripts/torch_train_workload.py` training under its own watch with
the product's default guard settings (nothing scaled), capped with set_per_process_memory_fraction so that
CUDA's out-of-memory error comes at the budget the watch is given (`--budget-mb`):

* `--leaks N` leaking trainings (retinanet_resnet50_fpn and ssdlite320_mobilenet_v3_large alternately; the
  leak starts 60 s into training and would fill the room under the cap in 240 s), each with
  `--checkpoint-dir` and `--restarts 1`: the resumed attempt does not leak, trains 40 steps and exits 0;
* one healthy retinanet training, watched for `--healthy-s` seconds (default 500).

Pass: every leaking run is aborted (exit 75 of its first attempt) with no CUDA OOM, a checkpoint was
seen, and the second attempt resumed from it and finished (the watch exits 0); the healthy run is never
aborted and exits 0. Writes OUT/watch_drill_summary.json and OUT/watch_drill.tar.gz (every run dir's
traces, readings, reports, restarts.jsonl and logs; no checkpoints) and prints a table.

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 scripts/gpu_watch_drill.py --out $OUT --wall 560
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_MB = {"retinanet": 10240, "ssdlite": 9216}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "watch_drill_out")))
    p.add_argument("--leaks", type=int, default=5)
    p.add_argument("--healthy-s", type=float, default=500.0)
    p.add_argument("--wall", type=float, default=560.0, help="seconds after which every watch gets SIGTERM")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "watch_drill")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    plan = [(f"leak{i}_{m}", m, True) for i, m in enumerate(["retinanet", "ssdlite"] * args.leaks)][:args.leaks]
    plan.append(("healthy_retinanet", "retinanet", False))
    procs = {}
    launch = time.time()
    for name, model, leaking in plan:
        run = args.work / name
        ckpt = run / "ckpt"
        budget = BUDGET_MB[model]
        watch = [sys.executable, "-m", "tfodtrain.watch", "--run-dir", str(run), "--budget-mb", str(budget),
                 "--checkpoint-dir", str(ckpt), "--grace-s", "60"]
        workload = [sys.executable, str(REPO / "scripts" / "torch_train_workload.py"), "--model", model,
                    "--ckpt-dir", str(ckpt), "--status-dir", str(run), "--gpu-budget-mb", str(budget)]
        if leaking:
            watch += ["--restarts", "1", "--backoff-s", "2"]
            workload += ["--leak", "--leak-unless-resumed", "--save-every", "60", "--duration-s", "900"]
        else:
            workload += ["--save-every", "200", "--duration-s", str(args.healthy_s)]
        run.mkdir(parents=True, exist_ok=True)
        out = open(run / "console.log", "w")
        procs[name] = (subprocess.Popen(watch + ["--"] + workload, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=REPO), out)
    print(f"gpu_watch_drill: {len(procs)} watched trainings started", flush=True)
    next_note = time.time() + 60
    while any(proc.poll() is None for proc, _ in procs.values()):
        if time.time() >= launch + args.wall:
            for name, (proc, _) in procs.items():
                if proc.poll() is None:
                    print(f"gpu_watch_drill: {name} still running at the wall: SIGTERM", flush=True)
                    proc.send_signal(signal.SIGTERM)
            break
        if time.time() >= next_note:
            print(f"[{time.time() - launch:4.0f}s] running: "
                  + ", ".join(n for n, (pr, _) in procs.items() if pr.poll() is None), flush=True)
            next_note += 60
        time.sleep(1)
    for proc, out in procs.values():
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()

    summary = {"launch_unix": launch, "wall_s": round(time.time() - launch, 1), "runs": {}}
    try:
        import torch

        summary.update(torch=torch.__version__, gpu=torch.cuda.get_device_name(0))
    except Exception as error:  # noqa: BLE001
        summary["gpu"] = f"unknown ({error})"
    passed = 0
    for name, model, leaking in plan:
        run = args.work / name
        proc, _ = procs[name]
        records = [json.loads(line) for line in (run / "restarts.jsonl").read_text().splitlines()] \
            if (run / "restarts.jsonl").exists() else []
        report = json.loads((run / "abort_report.json").read_text()) if (run / "abort_report.json").exists() else None
        statuses = [json.loads(s.read_text()) for s in sorted(run.glob("status_*.json"))]
        console = (run / "console.log").read_text(errors="replace")
        resumed = [line for line in console.splitlines() if "resumed from" in line]
        entry = {"model": model, "leak": leaking, "watch_exit": proc.returncode,
                 "attempts": [(r["exit_code"], r["cause"], r.get("step")) for r in records],
                 "cuda_oom": (run / "oom.json").exists(), "resumed": resumed[:1],
                 "abort": None if report is None else {
                     k: report.get(k) for k in ("reason", "pool", "time_s", "used_bytes", "limit_bytes",
                                                "seconds_to_limit", "new_checkpoint_seen", "checkpoint",
                                                "child_exit", "stop", "notes", "save_interval_s")},
                 "workload": statuses}
        if leaking:
            ok = (report is not None and not entry["cuda_oom"] and records and records[0]["exit_code"] == 75
                  and report.get("checkpoint") and bool(resumed) and proc.returncode == 0)
        else:
            ok = report is None and not entry["cuda_oom"] and proc.returncode == 0
        entry["pass"] = bool(ok)
        passed += bool(ok)
        summary["runs"][name] = entry
        print(f"{name:20} {model:10} watch exit {proc.returncode!s:>4}  attempts {entry['attempts']}  "
              f"OOM {entry['cuda_oom']}  abort at {report and report.get('time_s')} s "
              f"({report and report.get('used_bytes', 0) / 2**30:.2f} of {report and report.get('limit_bytes', 0) / 2**30:.2f} GiB, "
              f"{report and report.get('seconds_to_limit')} s to limit)  resumed {bool(resumed)}  "
              f"{'PASS' if ok else 'FAIL'}" if report else
              f"{name:20} {model:10} watch exit {proc.returncode!s:>4}  attempts {entry['attempts']}  "
              f"OOM {entry['cuda_oom']}  no abort  {'PASS' if ok else 'FAIL'}", flush=True)
    summary["passed"] = f"{passed}/{len(plan)}"
    (args.out / "watch_drill_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    with tarfile.open(args.out / "watch_drill.tar.gz", "w:gz") as tar:
        for name, _, _ in plan:
            run = args.work / name
            for path in sorted(run.iterdir()):
                if path.name != "ckpt":
                    tar.add(path, arcname=f"watch_drill/{name}/{path.name}")
    print(f"gpu_watch_drill: {passed}/{len(plan)} passed; {args.out / 'watch_drill_summary.json'}", flush=True)
    return 0 if passed == len(plan) else 1


if __name__ == "__main__":
    sys.exit(main())
