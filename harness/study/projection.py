"""Projected GPU time of a study's pre-training runs, before any of them runs (`harness sweep --dry-run --gpu NAME`
or `--throughput gpu_check.json`).

A run's tokens come from its resolved config (budget.max_tokens, or updates x nominal tokens per update); its
tokens/s from either
- a GPU's datasheet: ASSUMED_MFU x peak dense bf16 FLOP/s / model FLOPs per token, or
- a measured throughput (benchmarks/gpu_check.py's JSON), scaled by FLOPs per token where the run's model is not the
  measured one (a smaller model runs proportionally faster: the same MFU is assumed for both).
Model FLOPs per token are those the benchmarks' MFU is defined with (benchmarks/gpu_throughput.py):
6N + 12 x layers x hidden x seq (Kaplan et al.'s 6N, plus attention's score and value products at full length),
plus the vocabulary projection 6 x hidden x vocab at the masked positions only (the sparse MLM head).
N is the non-embedding parameters computed from the shape in harness.config.MODEL_SIZES.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import MODEL_SIZES, RunConfig
from harness.study.plans import GridError

# Model FLOPs utilisation assumed for a datasheet projection: a tuned BERT-base step in bf16 reaches 0.3-0.5 of the
# dense peak on A100/H100-class GPUs (MosaicBERT, Cramming); 0.35 stays on the cautious side until a GPU is measured.
ASSUMED_MFU = 0.35
# Dense bf16 tensor-core TFLOP/s with FP32 accumulation, no 2:4 sparsity, from NVIDIA's datasheets (the SXM parts
# for H100/H200/A100; the same figures as benchmarks/gpu_throughput.py's PEAK_BF16_TFLOPS).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "h200": 989.0,  # the H100's compute with more memory bandwidth
    "h100": 989.0,
    "a100": 312.0,
    "l40s": 362.0,
    "a10g": 125.0,  # NVIDIA publishes no A10G datasheet: the A10's figure
    "l4": 121.0,
    "4090": 165.0,  # GeForce: bf16 with FP32 accumulation at half the FP16-accumulate rate
}


def non_embedding_params(size: str) -> int:
    """Weights a token's forward pass multiplies through, embeddings and the tied decoder excluded: each layer's
    Q, K, V, output and two feed-forward matrices with their biases and two LayerNorms, and the MLM head's transform."""
    layers, hidden, _, intermediate = MODEL_SIZES[size]
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate
    head_transform = hidden * hidden + 3 * hidden  # dense + bias + LayerNorm
    return layers * per_layer + head_transform


def flops_per_token(size: str, seq_len: int, vocab_size: int, mask_prob: float = 0.15) -> float:
    """Training FLOPs (forward + backward) per input token: 6N + 12 L d seq + 6 d V x mask_prob."""
    layers, hidden = MODEL_SIZES[size][:2]
    return 6 * non_embedding_params(size) + 12 * layers * hidden * seq_len + 6 * hidden * vocab_size * mask_prob


def config_flops_per_token(config: RunConfig) -> float:
    return flops_per_token(config.model.size, config.data.max_seq_length, config.tokenizer.vocab_size,
                           config.data.mask_prob)


def projected_tokens_per_s(flops: float, peak_tflops: float, mfu: float = ASSUMED_MFU) -> float:
    return mfu * peak_tflops * 1e12 / flops


def hours(tokens: float, tokens_per_s: float) -> float:
    return tokens / tokens_per_s / 3600


def run_tokens(config: RunConfig) -> int:
    """Input tokens a pre-training run will consume: its token budget, or updates x nominal tokens per update."""
    from harness.recipe import nominal_tokens_per_update

    budget = config.budget
    return budget.max_tokens or (budget.max_steps or 0) * nominal_tokens_per_update(config)


@dataclass(frozen=True)
class Throughput:
    """Where a run's tokens/s come from: useful model FLOP/s (a run's tokens/s = this / its FLOPs per token), or a
    fixed tokens/s (a measurement that does not say which model it measured: taken as every run's own)."""

    source: str
    model_flops_per_s: float | None = None
    tokens_per_s: float | None = None

    def for_run(self, flops: float) -> float:
        return self.model_flops_per_s / flops if self.model_flops_per_s is not None else float(self.tokens_per_s or 0)


def datasheet_throughput(gpu: str) -> Throughput:
    """ASSUMED_MFU of the GPU's datasheet peak; an unknown name is one line naming the allowed ones."""
    name = gpu.lower().removeprefix("rtx").strip()
    if name not in PEAK_BF16_TFLOPS:
        raise GridError(f"--gpu {gpu}: not in the datasheet table; allowed: {', '.join(sorted(PEAK_BF16_TFLOPS))} "
                        "(or --throughput gpu_check.json, a measured figure)")
    peak = PEAK_BF16_TFLOPS[name]
    return Throughput(f"{name}: {peak:g} bf16 TFLOP/s dense peak (datasheet) x assumed MFU {ASSUMED_MFU}",
                      model_flops_per_s=ASSUMED_MFU * peak * 1e12)


# ---- a measured throughput ------------------------------------------------------------------------------------
_SIZE_KEYS = ("model_size", "size", "preset")
_SEQ_KEYS = ("seq_len", "seq_length", "max_seq_length", "sequence_length")
_VOCAB_KEYS = ("vocab_size",)
BERT_VOCAB = 30_522  # a measurement that states its model but not its vocabulary: BERT's WordPiece


def measured_throughput(path: str | Path) -> Throughput:
    """The first `tokens_per_s` number in a JSON file (top level first, then nested objects, breadth first). Where
    the file also states the model (size, sequence length, vocabulary), runs of another shape are rescaled by FLOPs
    per token; where it does not, the figure is taken as every run's own, and the source says so."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GridError(f"--throughput {path}: not a readable JSON file ({err}); allowed: a JSON file with a "
                        "tokens_per_s number (benchmarks/gpu_check.py writes gpu_check.json)") from None
    found = _first(record, ("tokens_per_s",), _is_number)
    if found is None or found[1] <= 0:
        raise GridError(f"--throughput {path}: no positive tokens_per_s number in it; allowed: a JSON file with a "
                        "top-level or nested tokens_per_s (benchmarks/gpu_check.py writes gpu_check.json)")
    where, tokens_per_s = found
    size = _first(record, _SIZE_KEYS, lambda value: isinstance(value, str) and value in MODEL_SIZES)
    seq, vocab = _first(record, _SEQ_KEYS, _is_count), _first(record, _VOCAB_KEYS, _is_count)
    source = f"measured {tokens_per_s:,.0f} tokens/s ({path.name}: {where}"
    if size is None or seq is None:
        return Throughput(source + "; model not stated: taken as each run's own)", tokens_per_s=tokens_per_s)
    vocab_size = vocab[1] if vocab is not None else BERT_VOCAB
    vocab_note = "" if vocab is not None else " (assumed)"
    flops = flops_per_token(size[1], seq[1], vocab_size)
    return Throughput(source + f" on {size[1]}, seq {seq[1]}, vocab {vocab_size}{vocab_note}; other shapes scaled "
                      "by FLOPs per token)", model_flops_per_s=tokens_per_s * flops)


def _first(record: Any, keys: tuple[str, ...], accept: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """(dotted path, value) of the shallowest key in `keys` whose value `accept`s, breadth first."""
    return next(((where, value) for where, key, value in _breadth_first(record) if key in keys and accept(value)), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _breadth_first(record: Any) -> Iterator[tuple[str, str, Any]]:
    level: list[tuple[str, Any]] = [("", record)]
    while level:
        deeper = []
        for prefix, node in level:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, value in items:
                where = f"{prefix}.{key}" if prefix else str(key)
                yield where, str(key), value
                deeper.append((where, value))
        level = deeper


# ---- the plan's lines -------------------------------------------------------------------------------------------
def projection_lines(runs: list[tuple[str, RunConfig]], throughput: Throughput) -> list[str]:
    """One line per pre-training run (tokens, FLOPs per token, tokens/s, hours) and the total in GPU-hours."""
    lines = [f"projected pre-training time, one GPU per run: {throughput.source}"]
    total, trained = 0.0, 0
    for name, config in runs:
        tokens, flops = run_tokens(config), config_flops_per_token(config)
        if not tokens:
            lines.append(f"  {name}: 0 updates (no pre-training) -> 0 h")
            continue
        rate = throughput.for_run(flops)
        total, trained = total + (run_hours := hours(tokens, rate)), trained + 1
        lines.append(f"  {name}: {_count(tokens)} tokens x {flops / 1e6:.0f} MFLOP/token at {_count(rate)} tokens/s "
                     f"-> {run_hours:.1f} h")
    lines.append(f"projected total: {total:.1f} GPU-hours ({total / 24:.1f} GPU-days) for {trained} pre-training "
                 "runs (fine-tuning and evaluation not projected)")
    return lines


def _count(count: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"
