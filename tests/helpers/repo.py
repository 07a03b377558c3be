"""Where things are."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# Leak traces shared by the project's sessions outside the repository; tests that use them skip without them.
SHARED_TRACES = REPO.parent / "shared" / "leak_traces"
