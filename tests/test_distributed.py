"""Data-parallel runs on CPU (gloo), through torchrun and through `harness pretrain` (Lightning's launcher).

One 2-process run must be the 1-process run of the same global batch: the same examples in every update, split
between the ranks without overlap, the same loss curve up to float noise, one run directory with one relaunch
record. A run on 2 nodes (two torchrun agents on this machine) killed between checkpoints resumes on 1 node of 2
processes and finishes the same curve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.config import load_config
from harness.runs import read_curves, run_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "distributed_run.py"
STEPS = 8
# SEGMENT-PAIR + NSP (the paper's BERT re-implementation): both losses are normalised over the whole update.
# fp32 and no dropout: the two runs differ only by the order of floating-point sums.
SETTINGS = ["recipe=bert-reimpl", "data.masking=dynamic", "corpus.layout=wikitext",
            "corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "corpus.max_documents=24",
            "corpus.validation_fraction=0.15", f"budget.max_steps={STEPS}",
            "budget.val_every_steps=4", "impl.checkpoint_every_steps=4", "optim.batch_size=16", "model.dropout=0.0",
            "impl.precision=32-true", "impl.fast_dropout=false", "impl.progress_bar=false", "logging.wandb=false",
            "logging.log_every_steps=1", "impl.threads=1"]
DDP = ["impl.strategy=ddp", "impl.devices=2"]
TWO_NODES = ["impl.strategy=ddp", "impl.devices=1", "impl.num_nodes=2"]


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def _env(shared_data: Path, cache: Path) -> dict[str, str]:
    # the module fixture runs before the autouse one that isolates caches: name the test session's cache here
    return {**os.environ, "HARNESS_DATA_DIR": str(shared_data), "HARNESS_CACHE_DIR": str(cache),
            "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _torchrun(env: dict[str, str], results: Path, record: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(SCRIPT), str(results), str(record), *extra, *_sets(SETTINGS + DDP)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _two_nodes(env: dict[str, str], results: Path, record: Path, extra: list[str]) -> list[subprocess.Popen]:
    """Two torchrun agents, node ranks 0 and 1 with one process each (what two machines would run), here on one
    machine: the config says impl.devices=1, impl.num_nodes=2."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(SCRIPT), str(results), str(record), *extra, *_sets(SETTINGS + TWO_NODES)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    for node in nodes:
        node.communicate(timeout=600)
    return nodes


def _run_path(results: Path, overrides: list[str]) -> Path:
    return run_dir(results, load_config(None, overrides, preset="tiny"))


def _examples(record: Path, rank: int) -> dict[int, list[int]]:
    by_step: dict[int, list[int]] = {}
    for line in (record / f"rank{rank}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        by_step.setdefault(entry["step"], []).extend(entry["examples"])
    return by_step


@pytest.fixture(scope="module")
def env(shared_data, tmp_path_factory) -> dict[str, str]:
    return _env(shared_data, tmp_path_factory.getbasetemp() / "harness-cache")


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """The same config on 1 process and on 2 (torchrun), each recording the examples of every update."""
    root = tmp_path_factory.mktemp("ddp")
    one = subprocess.run([sys.executable, str(SCRIPT), str(root / "one"), str(root / "one-record"),
                          *_sets(SETTINGS)], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(env, root / "two", root / "two-record")
    assert two.returncode == 0, two.stderr[-3000:]
    return root


@pytest.mark.slow  # two processes under DDP, three runs: about a minute on 2 cores
def test_two_processes_train_the_one_process_run(runs):
    one, two = _run_path(runs / "one", SETTINGS), _run_path(runs / "two", SETTINGS + DDP)
    assert one.name == two.name  # impl is not part of the run's identity
    curves = {name: read_curves(path) for name, path in (("one", one), ("two", two))}
    for column in ("train/mlm_loss", "train/nsp_loss", "val/mlm_loss", "common_val/bpc"):
        a, b = (curves[name][column].dropna().to_numpy() for name in ("one", "two"))
        assert len(a) == len(b) > 0, column
        np.testing.assert_allclose(b, a, rtol=2e-5, err_msg=column)
    for column in ("train/tokens_seen", "train/masked_per_update", "train/sequences_per_update"):
        assert curves["one"][column].dropna().tolist() == curves["two"][column].dropna().tolist(), column
    finals = [json.loads((path / "final_metrics.json").read_text()) for path in (one, two)]
    assert finals[0]["tokens_seen"] == finals[1]["tokens_seen"] and finals[1]["steps"] == STEPS
    # one run directory, written once: no second rank's relaunch record, one set of logs
    assert json.loads((two / "env.json").read_text())["resumes"] == []
    assert [p.name for p in (two / "logs").iterdir()] == ["launch-0"]


@pytest.mark.slow  # two processes under DDP, three runs: about a minute on 2 cores
def test_ranks_split_every_update_without_overlap(runs):
    single = _examples(runs / "one-record", 0)
    ranks = [_examples(runs / "two-record", r) for r in (0, 1)]
    assert sorted(single) == sorted(ranks[0]) == sorted(ranks[1]) == list(range(STEPS))
    for step, examples in single.items():
        share0, share1 = ranks[0][step], ranks[1][step]
        assert share0 and share1 and not set(share0) & set(share1), f"update {step}: the ranks overlap"
        assert sorted(share0 + share1) == sorted(examples), f"update {step}: not the 1-process update's examples"


@pytest.mark.slow  # two processes under DDP, three runs: about a minute on 2 cores
def test_a_killed_two_node_run_resumes_on_one_node_under_ddp(runs, env, tmp_path):
    """Started on 2 nodes of 1 process (impl.num_nodes=2, two torchrun agents) and killed at update 6 (checkpoint
    at 4), relaunched with `harness pretrain` on 1 node of 2 processes (Lightning's launcher): it resumes the same
    run directory (the process layout is not part of the run), records one relaunch, and ends on the
    uninterrupted run's curve."""
    results = tmp_path / "results"
    crashed = _two_nodes(env, results, tmp_path / "record", ["--exit-at-step", "6"])
    assert all(node.returncode != 0 for node in crashed)
    nodes, single = [_examples(tmp_path / "record", rank) for rank in (0, 1)], _examples(runs / "one-record", 0)
    for step in range(6):  # before the kill, the two nodes split each update of the 1-process run between them
        assert sorted(nodes[0][step] + nodes[1][step]) == sorted(single[step]) and nodes[0][step], f"update {step}"
    path = _run_path(results, SETTINGS + TWO_NODES)
    assert path == _run_path(results, SETTINGS + DDP)
    assert (path / "checkpoints" / "last.ckpt").is_file() and not (path / "final_metrics.json").exists()
    cli = [sys.executable, "-m", "harness", "pretrain", "--preset", "tiny", *_sets(SETTINGS + DDP),
           "--results", str(results)]
    resumed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["status"] for r in json.loads((path / "env.json").read_text())["resumes"]] == ["resumable"]
    whole = read_curves(_run_path(runs / "two", SETTINGS + DDP))
    stitched = read_curves(path)
    for column in ("train/mlm_loss", "common_val/bpc"):
        np.testing.assert_allclose(stitched[column].dropna().to_numpy(), whole[column].dropna().to_numpy(),
                                   rtol=2e-5, err_msg=column)
    assert json.loads((path / "final_metrics.json").read_text())["steps"] == STEPS


def test_a_launch_that_does_not_match_the_config_stops_before_any_work(tmp_path, monkeypatch, capsys):
    """A torchrun rank (its environment: 2 processes) whose config asks for impl.devices x impl.num_nodes = 1:
    one line, before any process group, data or directory."""
    from harness.cli import main

    torchrun = {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for key, value in torchrun.items():
        monkeypatch.setenv(key, value)
    assert main(["pretrain", "--preset", "tiny", "--results", str(tmp_path / "r")]) != 0
    error = capsys.readouterr().err
    assert "the launcher started 2 processes but impl.devices x impl.num_nodes = 1" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["impl.devices=2", "impl.num_nodes=2", "optim.batch_size=6"],
     "impl.devices = 2 x impl.num_nodes = 2 does not divide optim.batch_size = 6"),
    (["impl.strategy=fsdp", "impl.accelerator=cpu"], "impl.strategy = 'fsdp' with impl.accelerator = 'cpu'"),
])
def test_a_process_layout_that_cannot_keep_the_update_is_refused(overrides, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "harness", "pretrain", "--preset", "tiny", *_sets(overrides),
                             "--results", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_num_nodes_splits_the_global_batch_like_devices():
    """The per-process micro-batch is derived from devices x num_nodes: the update stays optim.batch_size."""
    from harness.recipe import resolve_recipe

    four = resolve_recipe(load_config(None, ["impl.devices=2", "impl.num_nodes=2", "optim.batch_size=32"], "tiny"))
    one = resolve_recipe(load_config(None, ["optim.batch_size=32"], "tiny"))
    assert (four.micro_batch_size, four.budget.devices, four.accumulate) == (8, 4, 1)
    assert (one.micro_batch_size, one.budget.devices) == (32, 1)
