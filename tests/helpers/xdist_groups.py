"""Which tests must share a pytest-xdist worker: those of a file with module fixtures (a Mask R-CNN run, watches
started side by side), so that each is built once. Every other test goes to whichever worker is free.

xdist's own `--dist loadgroup` renames each grouped test's `item._nodeid`, which pytest 9 no longer reads, so
its groups fall apart silently. Here each worker writes the groups to a file when it has collected
(`write_groups`), and the scheduler, in the main process, reads them when it splits the tests into units
(`GroupScheduling`, from the `pytest_xdist_make_scheduler` hook in conftest.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling


def module_group(item) -> str | None:
    """The item's file when one of its fixtures is module-scoped, else None (a unit of its own)."""
    info = getattr(item, "_fixtureinfo", None)
    if info and any(d.scope == "module" for chain in info.name2fixturedefs.values() for d in chain):
        return item.nodeid.split("::")[0]
    return None


def write_groups(items, path: Path) -> None:
    """{nodeid: group} of the grouped items, written whole (both workers write the same)."""
    groups = {item.nodeid: group for item in items if (group := module_group(item))}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(groups))
    os.replace(staging, path)


class GroupScheduling(LoadScopeScheduling):
    """Load balancing with one unit per group of `write_groups` and one per other test; the largest units first."""

    def __init__(self, config, log=None, groups_path: Path | None = None):
        super().__init__(config, log)
        self._groups_path = groups_path
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # the workers have collected by the time the units are made
            path = self._groups_path
            self._groups = json.loads(path.read_text()) if path and path.exists() else {}
        return self._groups.get(nodeid, nodeid)
