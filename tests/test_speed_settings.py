"""impl.fast_dropout and impl.allocator: settings that change only speed, followed from the config to their effect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback
from transformers import AutoModelForMaskedLM, RobertaConfig, RobertaForMaskedLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness.config import load_config
from harness.models.dropout import (
    ATTENTION,
    FastDropout,
    dropout_mask,
    fast_dropout,
    sdpa_fast_dropout,
    use_fast_dropout,
)
from harness.runs import read_curves
from harness.train import EXPORT_DIR, pretrain

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "corpus.layout=jsonl", "corpus.path=corpora/reuters.jsonl", "corpus.max_documents=20",
    "corpus.validation_fraction=0.1", "tokenizer.vocab_size=600", "data.max_seq_length=64", "optim.batch_size=16",
    "optim.peak_lr=2e-3", "optim.warmup_fraction=0.1", "budget.val_every_steps=1000", "budget.val_max_examples=16",
    "impl.progress_bar=false", "logging.wandb=false", "logging.log_every_steps=1", "impl.threads=1",
]


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()  # impl.threads is process-wide
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_keeps_each_element_independently_with_probability_one_minus_p(dtype):
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size([1000, 1000]), 0.1, dtype)
    kept = mask != 0
    assert mask.dtype == dtype and mask[kept].unique().tolist() == [1.0]
    assert abs(kept.float().mean().item() - 0.9) < 0.0015  # 1M draws: standard deviation 0.0003
    # Rows of 1,000 independent draws spread like Binomial(1000, 0.9) / 1000, standard deviation 0.0095.
    assert 0.0085 < kept.float().mean(1).std().item() < 0.0105
    torch.manual_seed(1)
    first, second = dropout_mask(mask.shape, 0.1, dtype), dropout_mask(mask.shape, 0.1, dtype)
    torch.manual_seed(1)
    assert torch.equal(dropout_mask(mask.shape, 0.1, dtype), first)  # follows torch's seed
    assert not torch.equal(first, second)  # a fresh mask every call
    x = torch.randn(1000, 1000).to(dtype)
    out = fast_dropout(x, 0.1, training=True)
    survivors = out != 0
    # kept values are x / 0.9 rounded once, as torch's dropout rounds them (no bias from a rounded scale)
    assert torch.equal(out[survivors], (x * (1 / 0.9))[survivors])
    assert abs(survivors.float().mean().item() - 0.9) < 0.0015
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)


def test_attention_with_fast_dropout_is_sdpa_in_expectation():
    """Dropout on attention probabilities is unbiased: averaged over many draws the output is SDPA's without dropout,
    with the padding mask respected (a masked key never contributes)."""
    torch.manual_seed(0)
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))
    module = model.roberta.encoder.layer[0].attention.self
    query, key, value = (torch.randn(2, 2, 6, 16) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False  # the second sequence has two padding positions
    exact, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0)
    plain, _ = sdpa_fast_dropout(module, query, key, value, mask, dropout=0.0)
    assert torch.equal(plain, exact)
    draws = torch.stack([sdpa_fast_dropout(module, query, key, value, mask, dropout=0.1)[0] for _ in range(400)])
    one_draw_error = (draws[0] - exact).abs().mean()
    assert one_draw_error > 0.01  # dropout did something
    assert (draws.mean(0) - exact).abs().mean() < one_draw_error / 8  # 400 draws: the error shrinks ~20x


class _DropoutProbe(Callback):
    def on_train_start(self, trainer, module) -> None:
        self.fast_modules = sum(isinstance(m, FastDropout) for m in module.model.modules())
        self.attention = module.model.config._attn_implementation


@pytest.mark.parametrize("fast", [True, False])
def test_fast_dropout_setting_reaches_the_model_and_the_export_is_a_plain_model(shared_data, tmp_path, fast):
    probe = _DropoutProbe()
    metrics = pretrain(load_config(overrides=[*SMALL, "budget.max_steps=30", f"impl.fast_dropout={fast}"]),
                       shared_data, tmp_path, extra_callbacks=[probe])
    if fast:
        # every nn.Dropout: 3 per layer (attention probabilities, attention output, FFN output) + the embeddings'
        assert probe.fast_modules == 3 * 2 + 1 and probe.attention == ATTENTION
    else:
        assert probe.fast_modules == 0 and probe.attention == "sdpa"
    run = next(tmp_path.glob("*/runs/*"))
    loss = read_curves(run)["train/mlm_loss"].dropna().to_numpy()
    assert len(loss) == 30 and loss[-5:].mean() < loss[:5].mean() - 0.5  # it trains either way
    exported = AutoModelForMaskedLM.from_pretrained(run / EXPORT_DIR)
    assert exported.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, FastDropout) for m in exported.modules())
    assert ATTENTION not in json.dumps(json.loads((run / EXPORT_DIR / "config.json").read_text()))
    assert metrics["steps"] == 30


def test_fast_and_torch_dropout_train_alike(shared_data, tmp_path):
    """Only the random stream differs: over 30 updates the two curves stay within the noise of dropout."""
    curves = {}
    for fast in (True, False):
        pretrain(load_config(overrides=[*SMALL, "budget.max_steps=30", f"impl.fast_dropout={fast}"]),
                 shared_data, tmp_path / str(fast))
        curves[fast] = read_curves(next((tmp_path / str(fast)).glob("*/runs/*")))["train/mlm_loss"].dropna().to_numpy()
    assert len(curves[True]) == len(curves[False]) == 30
    assert abs(curves[True][-5:].mean() - curves[False][-5:].mean()) < 0.1


def test_use_fast_dropout_leaves_eval_outputs_unchanged():
    torch.manual_seed(0)
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64)).eval()
    ids = torch.randint(5, 50, (3, 10))
    ids[0, 7:] = 1
    attention_mask = (ids != 1).long()
    before = model(input_ids=ids, attention_mask=attention_mask).logits
    after = use_fast_dropout(model)(input_ids=ids, attention_mask=attention_mask).logits
    assert torch.equal(before, after)


FAULTS_AFTER_PRETRAIN = """
import resource, sys, torch
from harness.config import load_config
from harness.train import pretrain
pretrain(load_config(overrides=sys.argv[3:]), sys.argv[1], sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 << 20)  # 64 MiB, above glibc's largest dynamic mmap threshold (32 MiB)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow  # times the allocator on large tensors: about 20 s
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_allocator_reuse_spares_the_page_faults_of_every_fresh_tensor(shared_data, tmp_path):
    """mallopt is process-wide and cannot be undone, so each setting runs `pretrain` in a child process, which then
    counts the page faults of twenty 64 MiB tensors: glibc's default maps and faults in every one of them afresh."""
    faults = {}
    for mode in ("reuse", "system"):
        out = subprocess.run([sys.executable, "-c", FAULTS_AFTER_PRETRAIN, str(shared_data), str(tmp_path / mode),
                              *SMALL, "budget.max_steps=2", f"impl.allocator={mode}"],
                             capture_output=True, text=True, cwd=REPO, check=True)
        faults[mode] = int(out.stdout.strip().splitlines()[-1])
    assert faults["system"] > 20 * 16_000  # 16,384 pages of 4 KiB per tensor
    assert faults["reuse"] < 2 * 16_384  # at most the first tensor's pages


# ---- impl.precision auto: which CPUs count as fast at bf16 -------------------------------------------------------
# cpu_has_fast_bf16 asks torch's two CPU probes (cpuinfo's CPUID reading); here each probe answers from a hand-made
# set of /proc/cpuinfo flag names. AMX counts by its tile flag (amx_tile): amx_bf16 alone does not decide.
FAST_BF16_FLAGS = [
    ({"avx2", "avx512f", "avx512_bf16"}, True),  # Zen 4, Cooper Lake
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),  # Sapphire Rapids reports both AMX flags
    ({"amx_bf16"}, False),  # the code probes the tile unit, not the bf16 flag
    ({"avx2", "fma", "f16c"}, False),  # bf16 would be emulated: slower than fp32
    ({"avx2", "avx512f", "avx512_vnni"}, False),
    (set(), False),
]


@pytest.mark.parametrize("flags, fast", FAST_BF16_FLAGS,
                         ids=[f"{'+'.join(sorted(flags)) or 'none'}-{fast}" for flags, fast in FAST_BF16_FLAGS])
def test_fast_bf16_is_detected_from_the_cpu_flags(monkeypatch, flags, fast):
    from harness.train import cpu_has_fast_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in flags, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_tile" in flags, raising=False)
    assert cpu_has_fast_bf16() is fast


def test_fast_bf16_is_false_where_torch_has_no_probes(monkeypatch):
    from harness.train import cpu_has_fast_bf16

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_fast_bf16() is False


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")
def test_fast_bf16_agrees_with_this_machines_cpu_flags():
    from harness.train import cpu_has_fast_bf16

    flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    assert cpu_has_fast_bf16() is bool(flags & {"avx512_bf16", "amx_tile"}), sorted(flags)
