"""benchmarks/gpu_check.py, the one command for a lent GPU, run as a user runs it: `--device cpu` takes every step
at the tiny size (the real `harness pretrain / finetune / evaluate` commands, a killed and relaunched run, the HF
Trainer arm) and the JSON must say each one worked; without CUDA and without `--device cpu` it stops in one line.
No figure is asserted beyond being measured and in range (a benchmark is not a test)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def script_env(tmp_path_factory, data: Path | None) -> dict[str, str]:
    # The module fixture runs before the per-test autouse fixture: give the child the session's caches ourselves.
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "harness-cache"),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    if data is not None:
        env["HARNESS_DATA_DIR"] = str(data)
    return env


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory, shared_data) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)], capture_output=True,
                          text=True, env=script_env(tmp_path_factory, shared_data), timeout=600, cwd=REPO)
    assert (out / "gpu_check.json").is_file(), done.stderr[-3000:]
    return done, json.loads((out / "gpu_check.json").read_text()), out


@pytest.mark.slow  # about 90 s of subprocesses: the CI's slow step
def test_every_step_is_ok_and_shows_its_command(cpu_check):
    done, record, _ = cpu_check
    steps = record["steps"]
    assert done.returncode == 0 and record["ok"], {name: step["error"] for name, step in steps.items()}
    assert list(steps) == ["matmul_ceiling", "pretrain", "hf_trainer", "ddp", "resume", "finetune", "blimp"]
    assert steps.pop("ddp")["status"] == "skipped"  # one device: nothing to spread over
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(steps, "ok")
    assert steps["pretrain"]["commands"][0].startswith("python -m harness pretrain --preset tiny ")
    assert steps["finetune"]["commands"][0].startswith("python -m harness finetune --checkpoint ")
    assert steps["blimp"]["commands"][0].startswith("python -m harness evaluate ")
    assert "--child hf-trainer-bf16" in steps["hf_trainer"]["commands"][0]
    assert all(step["seconds"] > 0 for step in steps.values())
    machine = record["machine"]
    assert machine["gpu_count"] == 0 and machine["torch"] == torch.__version__
    assert {"avx2", "avx512f", "avx512_bf16", "amx_tile"} <= set(machine["cpu_flags"])


@pytest.mark.slow  # about 90 s of subprocesses: the CI's slow step
def test_throughput_and_mfu_against_the_measured_ceiling_only(cpu_check):
    _, record, _ = cpu_check
    steps = record["steps"]
    assert steps["matmul_ceiling"]["figures"]["bf16_tflops"] > 0
    for name in ("pretrain", "hf_trainer"):
        figures = steps[name]["figures"]
        assert figures["tokens_per_s"] > 0 and figures["model_tflops"] > 0
        assert figures["mfu_vs_datasheet"] is None  # a CPU has no datasheet peak in the table
        assert 0 < figures["mfu_vs_measured_ceiling"]
    assert steps["pretrain"]["figures"]["steps"] == 8 and steps["hf_trainer"]["figures"]["ours_over_hf"] > 0


@pytest.mark.slow  # about 90 s of subprocesses: the CI's slow step
def test_the_killed_run_resumed_from_its_checkpoint_and_finished(cpu_check):
    _, record, _ = cpu_check
    resume = record["steps"]["resume"]
    figures = resume["figures"]
    assert len(resume["commands"]) == 2 and "killed" in resume["commands"][0]
    assert resume["commands"][0].split("   #")[0] == resume["commands"][1]  # the same command, launched again
    assert figures["killed_at_checkpoint_step"] > 0 and figures["steps"] == 24
    run = Path(figures["run_dir"])  # the run directory itself says so
    env = json.loads((run / "env.json").read_text())
    assert [entry["status"] for entry in env["resumes"]] == ["resumable"]
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["launch-0", "launch-1"]
    assert figures["resumed_first_logged_step"] >= figures["killed_at_checkpoint_step"]
    assert (run / "final_metrics.json").is_file()


@pytest.mark.slow  # about 90 s of subprocesses: the CI's slow step
def test_finetuning_score_and_blimp_accuracy_are_in_range(cpu_check):
    _, record, _ = cpu_check
    finetune, blimp = record["steps"]["finetune"]["figures"], record["steps"]["blimp"]["figures"]
    assert finetune["task"] == "rte" and 0 <= finetune["score"] <= 100
    assert blimp["pairs"] == 2 * 67 and blimp["paradigms"] == 67 and 0 <= blimp["accuracy"] <= 100


@pytest.mark.slow  # about 90 s of subprocesses: the CI's slow step
def test_the_markdown_summary_names_every_step_and_its_command(cpu_check):
    _, record, out = cpu_check
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# GPU check") and "every step ok" in text.splitlines()[0]
    for name, step in record["steps"].items():
        assert f"| {name} | {step['status']} |" in text
        assert all(command in text for command in step["commands"])
    assert "| harness pretrain, 1 device |" in text


def test_the_gpu_profile_passes_the_gpu_benchmarks_own_parser(monkeypatch):
    """The GPU profile's HF arm cannot run here; its arguments must at least parse in gpu_throughput.py."""
    saved_path, new_names = list(sys.path), {"blimp", "gpu_throughput"} - set(sys.modules)
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", check)  # dataclasses look their module up by name
    spec.loader.exec_module(check)
    check.import_benchmarks()
    sys.path[:] = saved_path
    for name in new_names:  # benchmarks/blimp.py must not stand in for another `blimp` later
        sys.modules.pop(name, None)
    argv = check.hf_argv(check.PROFILES["cuda"])
    assert argv[:2] == ["--device", "cuda"] and check.PROFILES["cuda"].hf_script == "gpu_throughput.py"
    args = check.gt.parse_args(["--device", "cpu", *argv[2:], "--child", check.gt.BASELINE])
    assert (args.size, args.seq_len, args.batch_size, args.vocab_size) == ("base", 128, 256, 50_265)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_in_one_line(tmp_path, tmp_path_factory):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, env=script_env(tmp_path_factory, None), timeout=120, cwd=REPO)
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--device cpu" in lines[0]
    assert not (tmp_path / "out").exists()  # before any work


@pytest.mark.slow  # a tiny pre-training run through the check's subprocesses: about 20 s
def test_only_some_steps_with_settings_for_the_pretraining_runs(tmp_path, tmp_path_factory, shared_data):
    """`--only pretrain --set KEY=VALUE`: a speed setting tried on the lent GPU without the other steps; the run
    carries the setting, the summary lists it, and every step not asked for says so."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--only", "pretrain",
                           "--set", "optim.peak_lr=0.0025"], capture_output=True, text=True,
                          env=script_env(tmp_path_factory, shared_data), timeout=600, cwd=REPO)
    record = json.loads((out / "gpu_check.json").read_text())
    assert done.returncode == 0 and record["ok"], done.stderr[-2000:]
    assert record["steps"]["pretrain"]["status"] == "ok"
    assert record["profile"]["pretrain_settings"] == ["optim.peak_lr=0.0025"]
    others = {name: step for name, step in record["steps"].items() if name != "pretrain"}
    assert {(s["status"], s["error"]) for s in others.values()} == {("skipped", "not asked for (--only)")}
    config = (Path(record["steps"]["pretrain"]["figures"]["run_dir"]) / "config.yaml").read_text()
    assert "peak_lr: 0.0025" in config
    assert "--set optim.peak_lr=0.0025" in record["steps"]["pretrain"]["commands"][0]


def test_only_an_unknown_step_stops_in_one_line(tmp_path, tmp_path_factory):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path / "out"), "--only",
                           "pretrain,finetuning"], capture_output=True, text=True,
                          env=script_env(tmp_path_factory, None), timeout=120, cwd=REPO)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--only finetuning is not a step; allowed:" in lines[0]
    assert not (tmp_path / "out").exists()
