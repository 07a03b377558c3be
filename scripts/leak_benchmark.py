"""Score the leak guard on a folder of memory traces with labels.json.

    python scripts/leak_benchmark.py DIR [--lead 60] [--set key=value ...]
    python scripts/leak_benchmark.py --generate 80 --seed 3 [--keep OUT_DIR]

Every trace is replayed through ``MemoryGuard`` (default settings unless ``--set``), exactly as
``python -m tfodtrain.memory.replay`` does. A leak is caught when the guard aborts at least
``--lead`` seconds (by ``time_s``) before the reading that died; a healthy run must never be
aborted. Prints one line per trace, the misses and false aborts, and a last summary line:

    caught=N/M false_aborts=K/H median_lead_steps=X median_lead_s=Y

Exit 0 only when every leak is caught and no healthy run is aborted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfodtrain.memory.replay import _settings_from, replay_rows  # noqa: E402
from tfodtrain.memory.traces import read_trace  # noqa: E402


def score_folder(folder: str, lead_s: float, settings, verbose: bool = True) -> dict:
    with open(os.path.join(folder, "labels.json"), encoding="utf-8") as f:
        labels = json.load(f)
    caught, leaks, false_aborts, healthy = 0, 0, 0, 0
    lead_steps, lead_seconds, problems = [], [], []
    for name, label in sorted(labels.items()):
        rows = list(read_trace(os.path.join(folder, name)))
        result = replay_rows(rows, settings, pool="gpu0")
        abort = result["abort_step"]
        time_at = {row.step: row.time_s for row in rows}
        if label["leak"]:
            leaks += 1
            oom = label["oom_step"]
            if abort is not None and abort < oom:
                lead_s_here = time_at[oom] - time_at[abort]
                ok = lead_s_here >= lead_s
                line = f"{'caught' if ok else 'LATE  '} {name} [{label['kind']}] abort={abort} oom={oom} " \
                       f"lead={oom - abort} steps {lead_s_here:.0f} s"
                if ok:
                    caught += 1
                    lead_steps.append(oom - abort)
                    lead_seconds.append(lead_s_here)
                else:
                    problems.append(line)
            else:
                line = f"MISSED {name} [{label['kind']}] abort={abort} oom={oom}"
                problems.append(line)
        else:
            healthy += 1
            if abort is not None:
                false_aborts += 1
                line = f"FALSE  {name} [{label['kind']}] abort={abort}: {result['reason']}"
                problems.append(line)
            else:
                line = f"ok     {name} [{label['kind']}]"
        if verbose:
            print(line, flush=True)
    summary = {
        "caught": caught, "leaks": leaks, "false_aborts": false_aborts, "healthy": healthy,
        "median_lead_steps": statistics.median(lead_steps) if lead_steps else None,
        "median_lead_s": round(statistics.median(lead_seconds), 1) if lead_seconds else None,
        "min_lead_s": round(min(lead_seconds), 1) if lead_seconds else None,
        "problems": problems,
    }
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Score the leak guard on traces with labels.json.")
    parser.add_argument("folder", nargs="?", help="folder with *.csv and labels.json")
    parser.add_argument("--lead", type=float, default=60.0, help="seconds an abort must leave before death (60)")
    parser.add_argument("--generate", type=int, metavar="N", help="generate N unseen traces and score them")
    parser.add_argument("--seed", type=int, default=0, help="seed for --generate (0)")
    parser.add_argument("--noise", type=float, default=1.0, help="with --generate: noise multiplier (1)")
    parser.add_argument("--keep", metavar="DIR", help="with --generate: write the traces here and keep them")
    parser.add_argument("--quiet", action="store_true", help="print only problems and the summary")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one guard setting (repeatable)")
    args = parser.parse_args(argv)
    if bool(args.folder) == bool(args.generate):
        parser.error("give either a folder or --generate N")
    try:
        settings = _settings_from(args.overrides)
    except ValueError as error:
        print(f"leak_benchmark: {error}", file=sys.stderr)
        return 2
    if args.generate:
        from tfodtrain.memory.tracegen import generate_set, write_set
        folder = args.keep or tempfile.mkdtemp(prefix="leak_traces_")
        write_set(folder, generate_set(args.generate, args.seed, noise_scale=args.noise))
        print(f"generated {args.generate} traces (seed {args.seed}, noise x{args.noise:g}) in {folder}")
    else:
        folder = args.folder
    summary = score_folder(folder, args.lead, settings, verbose=not args.quiet)
    if args.quiet:
        for line in summary["problems"]:
            print(line)
    if args.generate and not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    print(f"missed={summary['leaks'] - summary['caught']} min_lead_s={summary['min_lead_s']}")
    print(f"caught={summary['caught']}/{summary['leaks']} false_aborts={summary['false_aborts']}/{summary['healthy']} "
          f"median_lead_steps={summary['median_lead_steps']} median_lead_s={summary['median_lead_s']}")
    return 0 if summary["caught"] == summary["leaks"] and summary["false_aborts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
