"""scripts/guard_families.py: scoring the guard family by family, and --until (the first seconds of each trace)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "guard_families.py"


def run_families(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_until_replays_the_first_seconds_and_leaves_out_the_leaks_that_die_later(tmp_path):
    out = tmp_path / "until.json"
    done = run_families("--seed", "37575", "--families", "leak_3min,high_plateau", "--until", "400", "--json", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12
    early = [r for r in lines if r["leak"] and r["death_s"] <= 400]
    late = [r for r in lines if r["leak"] and r["death_s"] > 400]
    assert early and late  # 3-minute leaks from 2 minutes in, and from 30 minutes or hours in
    assert all(r["abort_time_s"] is None for r in late)  # their readings after 400 s were never replayed
    assert all(r["abort_time_s"] is None or r["abort_time_s"] <= 400 for r in lines)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| leak_3min |"))
    assert row.split("|")[2].strip() == f"{sum(1 for r in early if r['death_s'] - r['abort_time_s'] >= 60)}/{len(early)}"
    assert "the first 400 s of each" in done.stdout
    assert done.returncode == (0 if "MISSED" not in done.stdout and "FALSE" not in done.stdout else 1)


def test_a_bad_until_is_one_line_and_exit_2():
    done = run_families("--until", "0")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "guard_families: --until takes a number of seconds above 0, not 0"


def test_a_leak_aborted_before_it_began_is_a_false_abort_not_a_catch(tmp_path):
    """A guard that aborts on any growth (a horizon of months) stops a run whose leak begins hours later: the run
    was healthy when it stopped, a false abort, never a catch."""
    out = tmp_path / "early.json"
    done = run_families("--seed", "37575", "--families", "leak_3min", "--until", "1500", "--set", "horizon_s=1e7",
                        "--set", "warn_horizon_s=1e7", "--json", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    early = [r for r in lines if r["abort_time_s"] is not None and r["abort_time_s"] < r["leak_start_s"]]
    scored = [r for r in lines if r["death_s"] <= 1500 or r in early]
    caught = [r for r in scored if r not in early and r["abort_time_s"] is not None
              and r["death_s"] - r["abort_time_s"] >= 60]
    assert early and all(r["death_s"] > 1500 for r in early)  # left out of the table but for that abort
    row = next(line for line in done.stdout.splitlines() if line.startswith("| leak_3min |")).split("|")
    assert row[2].strip() == f"{len(caught)}/{len(scored)}" and row[3].strip() == f"{len(early)}/{len(scored)}"
    assert f"FALSE  {early[0]['name']} " in done.stdout and "before its leak began" in done.stdout
    assert done.returncode == 1


def test_families_drawn_otherwise_are_named_in_the_header(tmp_path):
    out = tmp_path / "sparse.json"
    done = run_families("--seed", "37575", "--families", "high_plateau", "--per-family", "2", "--until", "600",
                        "--range", "reading_s=30,30", "--json", str(out))
    assert "reading_s 30-30" in done.stdout.splitlines()[0]
    assert done.returncode in (0, 1) and len(out.read_text().splitlines()) == 2


def test_a_bad_range_is_one_line_and_exit_2():
    done = run_families("--range", "reading_s=5")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "guard_families: --range takes NAME=LOW,HIGH, not 'reading_s=5'"
