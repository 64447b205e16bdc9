"""BLiMP scoring throughput: our batched PLL scorer against the straightforward Hugging Face way, same process.

Both arms score the same minimal pairs with the same checkpoint, the same distinct-sentence grouping and the same
batches of masked copies (sentences of one length per batch, so no padding). They differ only in the step:
- ours (harness.downstream.pll, path `last_layer`): the lower layers on every position, the last layer's query,
  feed-forward and the MLM head only at each copy's masked position;
- hf-full-forward (path `full`): `AutoModelForMaskedLM(input_ids).logits`, every layer and the vocabulary projection
  at every position, then the masked position's row (what a plain PLL implementation computes).

    python benchmarks/blimp.py --data-dir ../shared/data [--pairs-per-paradigm 1000] [--baseline-pairs-per-paradigm 20]
        [--threads 2] [--batch-size 512] [--scoring pll]

The checkpoint is the harness's `tiny` size (2 layers, hidden 128, here 4 heads, intermediate 512) with random
weights (speed does not depend on them) and an 8K WordPiece vocabulary trained on the Reuters corpus. With
--pairs-per-paradigm below 1000 the time for all 67,000 pairs is extrapolated (and the output says so). Rates are
given per wall-clock second and per CPU-second of this process: on a machine shared with other jobs the second is
the steadier one (2 x pairs/CPU-s is what 2 free cores would give with perfect scaling).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# Before torch loads (as in tests/conftest.py): spinning OpenMP threads crawl on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.downstream.blimp import PARADIGMS, load_pairs  # noqa: E402
from harness.downstream.encode import open_checkpoint  # noqa: E402
from harness.downstream.pll import MaskedLM, load_masked_lm, score_sentences  # noqa: E402
from harness.runs import hardware  # noqa: E402

FULL_PAIRS = 67_000
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def build_checkpoint(root: Path, data_dir: Path, vocab_size: int = 8192) -> Path:
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    with (data_dir / "corpora" / "reuters.jsonl").open(encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wordpiece.save_model(str(root), "wp")
    tokenizer = BertTokenizer(vocab=str(root / "wp-vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=128)
    torch.manual_seed(0)
    path = root / "tiny-bert"
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def timed_scores(lm: MaskedLM, sentences: list[str], scoring: str, batch_size: int) -> tuple[np.ndarray, float, float]:
    """Scores, wall-clock seconds and CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    scores = score_sentences(lm, sentences, scoring, batch_size)
    return scores, time.perf_counter() - wall, time.process_time() - cpu


def machine_line() -> str:
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    present = [flag for flag in CPU_FLAGS if flag in flags] or ["none of " + ", ".join(CPU_FLAGS)]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{hardware()['cpu']} ({os.cpu_count()} cores; flags {' '.join(present)}; torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, load average {load}, {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HARNESS_DATA_DIR", "../shared/data")))
    parser.add_argument("--pairs-per-paradigm", type=int, default=1000, help="ours: pairs per paradigm (1000 = all)")
    parser.add_argument("--baseline-pairs-per-paradigm", type=int, default=20,
                        help="both arms on this subset (the baseline is slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512, help="masked copies per forward pass")
    parser.add_argument("--scoring", choices=("pll", "pll_word_l2r"), default="pll")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ckpt = open_checkpoint(build_checkpoint(Path(tmp), args.data_dir))
        print(f"checkpoint: tiny BERT (2 x 128, 4 heads, vocab {len(ckpt.tokenizer)}) built in "
              f"{time.perf_counter() - started:.0f} s")
        lm = load_masked_lm(ckpt)
        baseline = dataclasses.replace(lm, path="full")  # the model's own forward: logits at every position
        print(machine_line())

        subset, _ = load_pairs(PARADIGMS, args.baseline_pairs_per_paradigm, args.data_dir)
        sentences = [s for pair in subset for s in (pair.good, pair.bad)]
        tokens = sum(len(ids) for ids in ckpt.tokenizer(sentences)["input_ids"])
        print(f"\nsubset: {len(subset)} pairs, {len(sentences)} sentences, {tokens / len(sentences):.1f} tokens per "
              f"sentence with [CLS]/[SEP], scoring {args.scoring}, batch {args.batch_size} masked copies")
        score_sentences(lm, sentences[:200], args.scoring, args.batch_size)  # warm-up (allocator, kernels)
        ours, ours_s, ours_cpu = timed_scores(lm, sentences, args.scoring, args.batch_size)
        hf, hf_s, hf_cpu = timed_scores(baseline, sentences, args.scoring, args.batch_size)
        for name, wall, cpu in ((f"ours ({lm.path})", ours_s, ours_cpu), ("hf-full-forward", hf_s, hf_cpu)):
            print(f"  {name:22s} {len(subset) / wall:8.1f} pairs/s {len(subset) / cpu:8.1f} pairs/CPU-s  "
                  f"({wall:.1f} s, {cpu:.1f} CPU-s)")
        print(f"  ratio ours / hf-full-forward: {hf_s / ours_s:.2f}x wall, {hf_cpu / ours_cpu:.2f}x CPU; largest "
              f"score difference {np.abs(ours - hf).max():.1e}")

        pairs, _ = load_pairs(PARADIGMS, args.pairs_per_paradigm, args.data_dir)
        sentences = [s for pair in pairs for s in (pair.good, pair.bad)]
        _, seconds, cpu = timed_scores(lm, sentences, args.scoring, args.batch_size)
        label = "measured" if len(pairs) == FULL_PAIRS else f"extrapolated from {len(pairs)} pairs"
        print(f"\nours on {len(pairs)} pairs: {seconds:.1f} s ({cpu:.1f} CPU-s), {len(pairs) / seconds:.1f} pairs/s, "
              f"{len(pairs) / cpu:.1f} pairs/CPU-s")
        print(f"all {FULL_PAIRS:,} pairs ({label}): ours {FULL_PAIRS * seconds / len(pairs) / 60:.1f} min wall, "
              f"{FULL_PAIRS * cpu / len(pairs) / 60:.1f} CPU-min; hf-full-forward at its subset rate "
              f"{FULL_PAIRS * hf_s / len(subset) / 60:.1f} min wall, "
              f"{FULL_PAIRS * hf_cpu / len(subset) / 60:.1f} CPU-min")
        print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
