"""benchmarks/gpu_throughput.py without a GPU: one line naming the smoke mode, status 2, before any work.
(The benchmark itself is not a test; its figures are never asserted on.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


@pytest.fixture(scope="module")
def bench():
    saved_path = list(sys.path)  # the script puts benchmarks/ on sys.path to import pretrain_throughput
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path[:] = saved_path
    return module


def test_no_cuda_exits_2_with_one_line_before_any_work(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_work(*_, **__):
        raise AssertionError("work started without a CUDA device")

    monkeypatch.setattr(bench.pt, "wikitext_data", no_work)
    monkeypatch.setattr(bench.pt, "run_arms", no_work)
    with pytest.raises(SystemExit) as exit_info:
        bench.main([])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1
    assert "no CUDA device found" in lines[0] and "--device cpu" in lines[0]


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("NVIDIA A10G", 125.0),
    ("NVIDIA GeForce RTX 4090", 165.0), ("Tesla T4", None)])
def test_peak_table_matches_the_specific_name_first(bench, name, tflops):
    assert bench.peak_bf16_tflops(name) == tflops
