"""Skip helpers that say why a test cannot run here.

Example:
    @needs_gpu
    def test_on_a_card(): ...
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def gpu_count() -> int:
    """NVIDIA GPUs that nvidia-smi lists (0 without the tool or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU: nvidia-smi lists none on this machine")
