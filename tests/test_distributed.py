"""Several devices and several workers (tfodtrain.distribute): all replicas stop together on one's abort.

No GPUs here: the mirrored run splits the CPU into 2 logical devices (TFODTRAIN_LOGICAL_CPUS=2); the
multi-worker run is 2 real worker processes on localhost joined by TF_CONFIG. The abort is the test
aid CrashAt (the leak guard's path: checkpoint, exit 75), on worker 1 only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.repo import REPO
from tfodtrain.checkpoint_files import latest_step
from tfodtrain.distribute import scratch_checkpoint_dir, worker_role, worker_run_dir
from tfodtrain.exit_codes import UserError

ABORT_ON_WORKER_1 = '+callbacks.crash={_target_:tfodtrain.testing.CrashAt,plan:"2:abort",worker:1}'


def tf_config(index: int, ports: list[int], kind: str = "worker", chief: bool = False) -> dict:
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    if chief:
        cluster = {"chief": cluster["worker"][:1], "worker": cluster["worker"][1:]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_worker_roles_from_tf_config(tmp_path):
    assert worker_role({}) == worker_role({"TF_CONFIG": ""}) and worker_role({}).is_chief
    w0, w1 = (worker_role(tf_config(i, [1, 2])) for i in (0, 1))
    assert (w0.index, w0.count, w0.is_chief) == (0, 2, True) and (w1.index, w1.is_chief) == (1, False)
    chief, worker0 = worker_role(tf_config(0, [1, 2], "chief", True)), worker_role(tf_config(0, [1, 2], "worker", True))
    assert chief.is_chief and (worker0.index, worker0.is_chief) == (1, False)
    assert worker_run_dir(tmp_path, w0) == tmp_path and scratch_checkpoint_dir(tmp_path, w0) is None
    assert worker_run_dir(tmp_path, w1) == tmp_path / "worker-1"
    assert scratch_checkpoint_dir(tmp_path, w1) == tmp_path / "worker-1" / "checkpoint-scratch"
    with pytest.raises(UserError, match="TF_CONFIG is not valid"):
        worker_role({"TF_CONFIG": "{"})
    with pytest.raises(UserError, match="'ps'"):
        worker_role({"TF_CONFIG": json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}})})


def test_the_slurm_launcher_config_composes_without_the_plugin():
    """Composition only: submitting needs hydra-submitit-launcher and a SLURM cluster."""
    from hydra import compose, initialize_config_dir

    from tfodtrain.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "+experiment=smoke", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.max_num_timeout == 3 and launcher.tasks_per_node == 1
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_worker(args: list[str], run_dir: Path, env: dict, log: Path) -> subprocess.Popen:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **env)
    return subprocess.Popen([sys.executable, "-m", "tfodtrain", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT)


SMOKE_SHORT = ["+experiment=smoke", "trainer.steps=4", "trainer.checkpoint_every=100", "trainer.log_every=1",
               "memory.watch_host=false"]


@pytest.mark.slow
def test_two_devices_stop_together_on_an_abort(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    log = tmp_path / "mirrored.log"
    proc = start_worker([*SMOKE_SHORT, "trainer.strategy=mirrored", ABORT_ON_WORKER_1.replace(",worker:1", "")],
                        run_dir, {"TFODTRAIN_LOGICAL_CPUS": "2"}, log)
    assert proc.wait(timeout=900) == 75, log.read_text()[-4000:]
    info = json.loads((run_dir / "run_info.json").read_text())["distribution"]
    assert info == {"strategy": "MirroredStrategy", "replicas": 2, "worker": 0, "workers": 1, "chief": True}
    assert latest_step(run_dir / "checkpoints") == 2  # both replicas' state, saved at the abort's step


@pytest.mark.slow
def test_two_workers_stop_together_when_one_aborts(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    ports = free_ports(2)
    args = [*SMOKE_SHORT, "trainer.strategy=multi_worker", ABORT_ON_WORKER_1]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [start_worker(args, run_dir, tf_config(i, ports), logs[i]) for i in range(2)]
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [75, 75], "\n=====\n".join(o[-3000:] for o in outputs)
    for output in outputs:
        assert "Workers agreed: stop at step 2 with exit 75 (worker 1 asked)" in output
    assert "CrashAt: abort at step 2" in outputs[1] and "CrashAt" not in outputs[0]
    assert "worker 1 stopped at step 2 (exit 75)" in outputs[0]  # the chief's reason names the worker
    assert latest_step(run_dir / "checkpoints") == 2  # the chief wrote the checkpoint of the agreed step
    assert not (run_dir / "worker-1" / "checkpoint-scratch").exists()  # worker 1's copy was thrown away
    for i in range(2):
        info = json.loads(((run_dir / "worker-1") if i else run_dir).joinpath("run_info.json").read_text())
        assert info["distribution"]["strategy"] == "MultiWorkerMirroredStrategy"
        assert info["distribution"]["replicas"] == 2 and info["distribution"]["worker"] == i
