"""Run one session run of helpers/session_runs.py to files: `python run_to_files.py HOME`.

Reads HOME/spec.json; with `after`, waits for that run's result.json and makes the arguments from its run dir
(helpers.shared_runs.RESUMES). Runs `python -m tfodtrain ARGS hydra.run.dir=RUN_DIR`, its output to
HOME/stdout.txt and HOME/stderr.txt, kills it past `timeout` seconds, and writes HOME/result.json last
(returncode null: timed out; error: the arguments could not be made).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: `helpers` as the tests import it

from helpers.repo import REPO  # noqa: E402


def _write_result(home: Path, **fields) -> None:
    staging = home / "result.json.tmp"
    staging.write_text(json.dumps(fields))
    os.replace(staging, home / "result.json")  # readers see the whole result or none


def main(home: Path) -> int:
    spec = json.loads((home / "spec.json").read_text())
    run_dir = Path(spec["run_dir"])
    args = spec["args"]
    if spec["after"]:
        first = Path(spec["after"])
        while not (first / "result.json").exists():
            time.sleep(0.5)
        from helpers.shared_runs import RESUMES

        try:
            args = RESUMES[spec["name"]][1](first / "run", run_dir)
        except Exception as error:  # noqa: BLE001 - raised again by SessionRuns.result, in the test that asks
            _write_result(home, args=None, returncode=None, timeout=spec["timeout"], error=repr(error))
            return 1
    command = [sys.executable, "-m", "tfodtrain", *args, f"hydra.run.dir={run_dir}"]
    with open(home / "stdout.txt", "w") as out, open(home / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO, stdin=subprocess.DEVNULL)
        try:
            returncode = proc.wait(timeout=spec["timeout"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
    _write_result(home, args=command, returncode=returncode, timeout=spec["timeout"])
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
