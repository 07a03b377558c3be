"""Leak clues: abort_report.json's `leak_clues`, rendered by tfodtrain.memory.census for the picture and the page."""

from __future__ import annotations

from tfodtrain.report.record import RunRecord


def _leak_clues(record: RunRecord) -> dict | None:
    clues = (record.abort_report or {}).get("leak_clues")
    return clues if isinstance(clues, dict) and "holders" in clues else None  # older reports: no holders


def leak_clue_caption(record: RunRecord) -> str | None:
    """The PNG's line: what holds the leak and the line that adds to it (None without an abort's clues)."""
    from tfodtrain.memory.census import clues_caption

    return clues_caption(_leak_clues(record))


def leak_clue_lines(record: RunRecord) -> list[str]:
    """report.md's `## Leak clues` section: the abort's holders, retracing, tensors and the census's cost."""
    clues = _leak_clues(record)
    if clues is None:
        return []
    from tfodtrain.memory.census import clues_markdown

    step = (clues.get("census") or {}).get("step", (record.abort_report or {}).get("step", "?"))
    return ["", "## Leak clues", "", f"At the abort (census at step {step}):", "", clues_markdown(clues)]
