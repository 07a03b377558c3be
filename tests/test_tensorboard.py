"""TensorBoard review of a run: tags read back with TensorBoard's own readers and through a real server's HTTP API,
and the progress lines of training.

Everything here reads the shared `smoke_run` (a finished `+experiment=smoke` run) and the real leak_demo run of
tests/data/leak_demo_restarted (guard aborts); nothing trains.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata as custom_scalar_metadata
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from tensorboard_server import get_json
from tfodtrain.callbacks.review import FINAL_METRICS, run_hparams
from tfodtrain.memory.traces import read_trace

RESTARTED = Path(__file__).parent / "data" / "leak_demo_restarted"
MIB = float(1 << 20)


def load_events(run_dir: Path) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0},
                                                purge_orphaned_data=False)
    events.Reload()
    return events


def values(events, tag: str) -> list[tuple[int, object]]:
    """(step, value) of a TF2 summary (scalars and text are stored as tensors)."""
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in events.Tensors(tag)]


@pytest.fixture(scope="module")
def smoke_events(smoke_run):
    return load_events(smoke_run)


@pytest.mark.slow
def test_custom_scalars_layout_charts_used_against_limit_per_pool(smoke_run, smoke_events):
    content = smoke_events.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG)[-1]
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(content.tensor_proto).item())
    charts = {chart.title: chart.multiline.tag for category in layout.category for chart in category.chart}
    pools = sorted(p.stem[len("memory_trace_"):] for p in smoke_run.glob("memory_trace_*.csv"))
    assert pools and sorted(title.split(":")[0] for title in charts) == pools
    tags = smoke_events.Tags()["tensors"]
    for pool in pools:
        (pattern,) = charts[f"{pool}: used vs limit (MiB)"]
        matched = {tag for tag in tags if re.fullmatch(pattern, tag)}
        assert {f"memory/{pool}/used_mib", f"memory/{pool}/limit_mib"} <= matched, (pattern, matched)


@pytest.mark.slow
def test_resolved_config_is_a_text_summary(smoke_run, smoke_events):
    ((step, text),) = values(smoke_events, "config/resolved")
    text = text.decode()
    assert step == 0 and text.startswith("```yaml\n") and text.rstrip().endswith("```")
    saved = (smoke_run / "config.yaml").read_text()
    assert "experiment_name: smoke" in text and "steps: 6" in text
    assert text[len("```yaml\n"):].rstrip().removesuffix("```").strip() == saved.strip()


@pytest.mark.slow
def test_hparams_name_the_run_and_its_final_metrics(smoke_run, smoke_events):
    content = smoke_events.PluginTagToContent("hparams")
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    hparams = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
               for name, value in start.hparams.items()}
    assert hparams == {"experiment_name": "smoke"}  # the smoke run overrides nothing else
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert {info.name for info in experiment.hparam_infos} == set(hparams)
    metric_tags = [info.name.tag for info in experiment.metric_infos]
    assert metric_tags == [*FINAL_METRICS, "run/peak_used_mib/host"]
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    ((step, rate),) = values(smoke_events, "run/steps_per_second")
    assert step == metrics["steps"] and rate == pytest.approx(metrics["steps_per_second"], rel=1e-5)
    assert values(smoke_events, "eval/AP")[-1][1] == pytest.approx(metrics["AP"], abs=1e-6)
    peak = max(r.used_bytes for r in read_trace(smoke_run / "memory_trace_host.csv")) / MIB
    assert values(smoke_events, "run/peak_used_mib/host")[-1][1] == pytest.approx(peak, rel=1e-6)


def test_swept_values_become_hparams():
    config = {"experiment_name": "ssd", "seed": 1, "data": {"name": "tfrecord"},
              "trainer": {"learning_rate": 0.02, "steps": 600, "mixed_precision": None}}
    overrides = ["+experiment=ssd", "trainer.learning_rate=2e-2", "data=tfrecord", "hydra.run.dir=/x",
                 "~callbacks.progress", "trainer.mixed_precision=null"]
    hparams = run_hparams(config, overrides)
    # resolved values (2e-2 -> 0.02), a group choice by name, None as text; where the run goes is no hparam
    assert hparams == {"experiment_name": "ssd", "trainer.learning_rate": 0.02, "data": "tfrecord",
                       "trainer.mixed_precision": "null"}


def test_every_guard_abort_is_a_text_summary_of_its_report():
    events = load_events(RESTARTED)
    aborts = [json.loads(text.decode().strip().strip("`")) for _, text in values(events, "guard/abort")]
    latest = json.loads((RESTARTED / "abort_report.json").read_text())
    assert aborts and aborts[-1] == latest  # LeakGuard writes abort_report.json and the same JSON as text
    assert all(a["exit_code"] == 75 and a["reason"].startswith(a["pool"] + ": memory grows") for a in aborts)
    stopped = [text.decode() for _, text in values(events, "run/stopped")]
    assert [f"exit 75: {a['reason']}" for a in aborts] == stopped


@pytest.mark.slow
def test_progress_lines_report_rate_eta_loss_and_memory(smoke_run, smoke_events):
    """ProgressLogger's lines in the smoke run's log (Hydra's job log, beside the run's other files)."""
    log_text = "\n".join(p.read_text() for p in smoke_run.glob("*.log"))
    pattern = re.compile(r"step (\d+)/6 \| ([\d.]+) steps/s \| ETA (\d+m\d\ds) \| loss ([\d.]+) \|"
                         r".* host ([\d.]+)/([\d.]+) GiB")
    lines = pattern.findall(log_text)
    assert [int(step) for step, *_ in lines] == [2, 4, 6], log_text[-2000:]  # trainer.log_every=2
    limit = list(read_trace(smoke_run / "memory_trace_host.csv"))[-1].limit_bytes / (1 << 30)
    losses = dict(values(smoke_events, "train/loss"))
    for step, rate, eta, loss, used, shown_limit in lines:
        assert float(rate) > 0 and float(used) > 0.05 and float(shown_limit) == pytest.approx(limit, abs=0.05)
        assert float(loss) == pytest.approx(losses[int(step)], abs=1e-4)  # the same loss went to TensorBoard
    assert lines[-1][2] == "0m00s"  # nothing left at the last step


@pytest.mark.slow
def test_tensorboard_server_serves_the_memory_review(tensorboard_url, smoke_run):
    """A real `tensorboard --logdir SMOKE_RUN`: the memory tags, the custom-scalars chart, the config text, hparams."""
    runs = get_json(f"{tensorboard_url}/data/runs")
    assert runs == ["tensorboard"]
    scalar_tags = get_json(f"{tensorboard_url}/data/plugin/scalars/tags")["tensorboard"]
    assert {"memory/host/used_mib", "memory/host/limit_mib", "run/steps_per_second"} <= set(scalar_tags)

    layout = get_json(f"{tensorboard_url}/data/plugin/custom_scalars/layout")
    (chart,) = [c for category in layout["category"] for c in category["chart"] if c["title"].startswith("host:")]
    query = urllib.parse.urlencode({"run": "tensorboard", "tag": chart["multiline"]["tag"][0]})
    series = get_json(f"{tensorboard_url}/data/plugin/custom_scalars/scalars?{query}")
    assert series["regex_valid"] and set(series["tag_to_events"]) == {"memory/host/used_mib", "memory/host/limit_mib"}
    rows = list(read_trace(smoke_run / "memory_trace_host.csv"))
    served = [(step, value) for _, step, value in series["tag_to_events"]["memory/host/used_mib"]]
    # TensorBoard keeps one point per step: each step of the trace is served, in order, with its highest reading
    # (a slow step read by time holds several; CI on a busy machine had two at step 1). CI once served one
    # reading more than the trace held, before its first row (not reproduced here); anything served later than
    # the trace's first step must be a trace step's peak.
    peaks = {}
    for r in rows:
        peaks[r.step] = max(peaks.get(r.step, 0), r.used_bytes)
    pending = iter(served)
    missing = [(step, used) for step, used in peaks.items()
               if not any(s == step and value == pytest.approx(used / MIB, rel=1e-6) for s, value in pending)]
    assert not missing, (missing, served, rows)
    extra = [(step, value) for step, value in served
             if not (step in peaks and value == pytest.approx(peaks[step] / MIB, rel=1e-6))]
    assert all(step <= rows[0].step for step, _ in extra), (extra, rows)

    text_tags = get_json(f"{tensorboard_url}/data/plugin/text/tags")
    assert "config/resolved" in text_tags["tensorboard"]
    experiment = get_json(f"{tensorboard_url}/data/plugin/hparams/experiment", data={"experimentName": ""})
    assert [h["name"] for h in experiment["hparamInfos"]] == ["experiment_name"]
    assert "eval/AP" in {m["name"]["tag"] for m in experiment["metricInfos"]}
    # The HPARAMS table's row of this run: its values and final metrics, as metrics.json has them.
    groups = get_json(f"{tensorboard_url}/data/plugin/hparams/session_groups", data={
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "experiment_name"}, {"metric": {"tag": "eval/AP"}}]})
    (group,) = groups["sessionGroups"]
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    shown = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert group["hparams"] == {"experiment_name": "smoke"}
    assert shown["eval/AP"] == pytest.approx(metrics["AP"], abs=1e-6)
    assert shown["run/steps_per_second"] == pytest.approx(metrics["steps_per_second"], rel=1e-5)
