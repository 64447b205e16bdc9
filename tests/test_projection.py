"""GPU-time projections of a study's pre-training runs (harness.study.projection, `harness sweep --dry-run --gpu` /
`--throughput`): FLOPs per token by hand, the shipped gpu scales sized to about one H100-day per run, one-line errors
for an unknown GPU and an unreadable measurement, and a measured throughput rescaled to another model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.study import load_grid
from harness.study.projection import (
    ASSUMED_MFU,
    datasheet_throughput,
    flops_per_token,
    hours,
    measured_throughput,
    non_embedding_params,
    projected_tokens_per_s,
    projection_lines,
)

REPO = Path(__file__).resolve().parents[1]
GPU_GRIDS = sorted(path for path in (REPO / "experiments").glob("*.yaml")
                   if "gpu" in (yaml.safe_load(path.read_text()).get("scales") or {}))
HOURS = re.compile(r"^    (pretrain/\S+): \S+ tokens x .* -> ([\d.]+) h$")  # a trained run (not the 0-update row)


def test_bert_base_flops_per_token_at_128_by_hand():
    # One BERT-base layer: Q, K, V, O 4 x 768^2 + 4 x 768 biases; feed-forward 2 x 768 x 3072 + 3072 + 768 biases;
    # two LayerNorms 4 x 768. Twelve of them agree with bert-base-uncased's published 109,482,240 parameters =
    # 85,054,464 (layers) + 23,837,184 (embeddings: 30522 x 768 words, 512 x 768 positions, 2 x 768 types, a
    # LayerNorm) + 590,592 (pooler).
    layer = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    assert layer == 7_087_872
    assert 12 * layer == 109_482_240 - 23_837_184 - 590_592
    head_transform = 768 * 768 + 768 + 2 * 768  # the MLM head's dense layer and its LayerNorm
    assert non_embedding_params("base") == 12 * layer + head_transform == 85_646_592
    # 6N, attention's score and value products at full length 12 x 12 x 768 x 128, the vocabulary projection
    # 6 x 768 x 30522 at the masked 15% only
    expected = 6 * 85_646_592 + 14_155_776 + 0.15 * 140_645_376
    assert flops_per_token("base", 128, 30_522) == pytest.approx(expected) == pytest.approx(549.132e6, rel=1e-6)
    # an H100 (989 TFLOP/s) at the assumed MFU: ~630K tokens/s, a day's 54B tokens
    rate = projected_tokens_per_s(expected, 989.0)
    assert rate == pytest.approx(ASSUMED_MFU * 989e12 / expected)
    assert hours(rate * 86_400, rate) == pytest.approx(24.0)


@pytest.mark.parametrize("path", GPU_GRIDS, ids=lambda p: p.name)
def test_each_gpu_scale_is_about_one_h100_day_per_run(path):
    """The shipped grids' sizing: every trained run of the gpu scale projects to 12-36 hours on one H100."""
    study = load_grid(path, "gpu", check_data=False)
    lines = projection_lines([(f"pretrain/{run.label}", run.config) for run in study.runs],
                             datasheet_throughput("h100"))
    per_run = {match[1]: float(match[2]) for line in lines if (match := HOURS.match(f"  {line}"))}
    assert per_run and all(12 <= hours_ <= 36 for hours_ in per_run.values()), lines
    assert all(run.config.model.size == "base" and run.config.data.max_seq_length == 128 for run in study.runs)


def test_dry_run_with_gpu_prints_hours_per_run_and_the_total(tmp_path, shared_data, capsys):
    grid = REPO / "experiments" / "table3_batch_size.yaml"
    common = ["sweep", str(grid), "--scale", "gpu", "--dry-run", "--results", str(tmp_path), "--data-dir",
              str(shared_data)]
    assert main([*common, "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "h100: 989 bf16 TFLOP/s dense peak (datasheet) x assumed MFU 0.35" in out
    per_run = {match[1]: float(match[2]) for line in out.splitlines() if (match := HOURS.match(line))}
    assert set(per_run) == {"pretrain/batch_size256-s0", "pretrain/batch_size2048-s0", "pretrain/batch_size8192-s0"}
    assert all(12 <= hours_ <= 36 for hours_ in per_run.values())
    total = re.search(r"projected total: ([\d.]+) GPU-hours \(([\d.]+) GPU-days\) for 3 pre-training runs", out)
    assert total and float(total[1]) == pytest.approx(sum(per_run.values()), abs=0.2)
    assert "0 updates (no pre-training) -> 0 h" in out
    assert main(common) == 0  # without --gpu / --throughput: the plan as before
    assert "projected" not in capsys.readouterr().out
    assert not (tmp_path / "table3_batch_size-gpu").exists()  # a dry run writes nothing


def test_unknown_gpu_is_one_line_naming_the_allowed(tmp_path, capsys):
    assert main(["sweep", str(REPO / "experiments" / "quickstart.yaml"), "--dry-run", "--gpu", "nosuch",
                 "--results", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "--gpu nosuch" in lines[0]
    assert all(name in lines[0] for name in ("h100", "a100", "h200", "l4", "a10g", "4090"))


def test_a_measured_throughput_of_the_same_model_is_used_as_is_and_rescaled_for_another(tmp_path):
    measured = tmp_path / "gpu_check.json"
    measured.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3",
                                    "config": {"size": "base", "seq_len": 128, "vocab_size": 30522},
                                    "result": {"steps": 30, "tokens_per_s": 500_000.0}}))
    rate = measured_throughput(measured)
    assert "measured 500,000 tokens/s (gpu_check.json: result.tokens_per_s on base, seq 128, vocab 30522" in rate.source
    assert rate.for_run(flops_per_token("base", 128, 30522)) == pytest.approx(500_000.0)
    # a model twice as costly per token runs half as fast
    assert rate.for_run(2 * flops_per_token("base", 128, 30522)) == pytest.approx(250_000.0)
    study = load_grid(REPO / "experiments" / "table1_masking.yaml", "gpu", check_data=False)
    lines = projection_lines([(run.label, run.config) for run in study.runs], rate)
    assert any(line.endswith(f"-> {1_152_000 * 256 * 128 / 500_000 / 3600:.1f} h") for line in lines), lines


def test_a_measurement_that_does_not_name_its_model_is_taken_as_each_runs_own(tmp_path):
    measured = tmp_path / "bare.json"
    measured.write_text(json.dumps({"tokens_per_s": 123_456}))
    rate = measured_throughput(measured)
    assert "model not stated" in rate.source and rate.for_run(1e9) == rate.for_run(1e6) == 123_456


@pytest.mark.parametrize("text", ["{not json", json.dumps({"tokens_per_s": "fast"}), json.dumps({"steps": 3})])
def test_an_unusable_throughput_file_is_one_line(tmp_path, capsys, text):
    measured = tmp_path / "gpu_check.json"
    measured.write_text(text)
    assert main(["sweep", str(REPO / "experiments" / "quickstart.yaml"), "--dry-run", "--throughput", str(measured),
                 "--results", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"--throughput {measured}" in lines[0] and "tokens_per_s" in lines[0]
