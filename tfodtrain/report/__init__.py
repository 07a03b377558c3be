"""`python -m tfodtrain.report RUN_DIR`: what memory did in a run, in one picture and one page.

Writes into RUN_DIR (or `--out DIR`):

* `memory_report.png`: for every memory pool (`gpu0`, ..., `host`), used memory, its peak and its limit
  over steps (left) and over time (right); the leak guard's trend line and projected exhaustion;
  guard aborts, restarts/resumes, guard warnings and evaluation points as markers.
* `report.md`: the run's numbers: outcome, AP/AP50, steps/s, peak memory per pool, the guard's last
  assessment, aborts and their reasons, restarts, evaluations.

It reads only files: the traces (`memory_trace_<pool>.csv`), `memory_readings.jsonl`, `config.yaml`,
`metrics.json`, `abort_report.json`, the supervisor's `restarts.jsonl` (tfodtrain.supervise) and the
TensorBoard event files (guard texts, evaluations). No TensorFlow import: it works on a copied run dir anywhere.

The trends are the guard's, not fitted here: at each abort, the assessment the guard wrote into its report;
at the end of the run, the one `tfodtrain.memory.guard.MemoryGuard` gives when each pool's trace is replayed
with the run's guard settings (config.yaml), a fresh guard per training process as in training. Where that
replay aborts is listed too: with the detector version that recorded the run, it is where the run aborted.

Example:
    python -m tfodtrain.report outputs/leak_demo/2026-11-25_12-00-00
    python -m tfodtrain.report RUN_DIR --out /tmp/review     # RUN_DIR stays untouched

Bad input (no such directory, a directory without a run, a damaged file) prints one line and exits 2.

The package, by job: `record` (what is known of a run), `load` (reading the run dir), `replay` (the guard's
view), `outcome` (outcome and numbers), `plots` (the picture), `clues` (leak clues), `markdown` (the page),
`cli` (the command).
"""

from tfodtrain.report.cli import main, make_report
from tfodtrain.report.clues import leak_clue_caption, leak_clue_lines
from tfodtrain.report.load import EVENT_TAGS, guard_settings_of, load_run, read_events
from tfodtrain.report.markdown import write_markdown
from tfodtrain.report.outcome import last_step, outcome, steps_per_second, total_steps
from tfodtrain.report.plots import plot_report
from tfodtrain.report.record import Marker, PoolView, RunRecord
from tfodtrain.report.replay import assessment_text, replay

__all__ = ["EVENT_TAGS", "Marker", "PoolView", "RunRecord", "assessment_text", "guard_settings_of", "last_step",
           "leak_clue_caption", "leak_clue_lines", "load_run", "main", "make_report", "outcome", "plot_report",
           "read_events", "replay", "steps_per_second", "total_steps", "write_markdown"]
