"""A real `tensorboard --logdir DIR` on a free localhost port, for the HTTP and browser tests.

Example:
    with serve(run_dir) as url:
        tags = get_json(f"{url}/data/plugin/scalars/tags")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, data: dict | None = None, timeout: float = 30):
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def tensorboard_command() -> list[str]:
    """The `tensorboard` console script of this environment, as a user would type it."""
    script = Path(sys.executable).with_name("tensorboard")
    if script.exists():
        return [str(script)]
    found = shutil.which("tensorboard")
    return [found] if found else [sys.executable, "-m", "tensorboard.main"]


@contextlib.contextmanager
def serve(logdir: Path, ready_tag: str = "memory/host/used_mib", timeout: float = 240):
    """Start TensorBoard on `logdir`, wait until its scalars API lists `ready_tag`, yield its URL."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix=f"tensorboard-{port}-", suffix=".log", delete=False)
    log_path = Path(log.name)  # its tail goes into the error if the server does not come up
    process = subprocess.Popen(
        [*tensorboard_command(), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tensorboard exited {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                tags = get_json(f"{url}/data/plugin/scalars/tags", timeout=5)
                if any(ready_tag in run_tags for run_tags in tags.values()):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not serve {ready_tag} within {timeout:.0f} s: "
                                   f"{log_path.read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and its data server
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:  # a test server: no need to wait for a graceful exit
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        log_path.unlink(missing_ok=True)
