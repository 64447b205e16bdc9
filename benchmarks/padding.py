"""Padding waste of the input formats at equal real tokens per update, through the real `pretrain()` path.

The paper keeps the tokens per update similar across formats (`optim.batch_tokens`); short inputs
(SENTENCE-PAIR, DOC-SENTENCES near a document's end) then come many to a batch, padded to the longest one.
Prints, per format: real and padded tokens per update, the share of computed positions that are real, real tokens
per second, and that rate relative to FULL-SENTENCES.

Usage: python benchmarks/padding.py [--preset tiny] [--steps 60] [--batch-tokens 4096] [--formats ...] [--repeats 1]
       [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from harness.config import load_config
from harness.runs import read_curves, run_dir
from harness.train import pretrain

FORMATS = {
    "full_sentences": [],
    "doc_sentences": ["data.packing=doc_sentences"],
    "segment_pair": ["data.packing=segment_pair", "data.nsp=true", "model.family=bert", "tokenizer.kind=wordpiece",
                     "data.segment_embeddings=true"],
    "sentence_pair": ["data.packing=sentence_pair", "data.nsp=true", "model.family=bert", "tokenizer.kind=wordpiece",
                      "data.segment_embeddings=true"],
}
BASE = ["corpus.layout=jsonl", "corpus.path=corpora/reuters.jsonl", "impl.num_proc=2", "logging.wandb=false",
        "impl.progress_bar=false", "logging.log_every_steps=1", "budget.val_max_examples=16",
        "budget.common_val_max_chars=2000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the median rate is reported")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    formats = ["full_sentences", *(name for name in args.formats if name != "full_sentences")]  # the reference
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in formats}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as results:  # a fresh folder: a finished run would not train again
            for name in formats:
                runs[name].append(measure(args, name, results))
    print(f"{args.preset}, {args.steps} updates of at most {args.batch_tokens} real tokens, median of "
          f"{args.repeats} interleaved repeat(s)")
    print(f"{'format':<16}{'real/update':>12}{'padded/update':>14}{'real share':>11}{'real tok/s':>11}{'vs FULL':>8}"
          "  vs FULL per repeat")
    reference = [rate for _, _, rate in runs["full_sentences"]]
    for name, figures in runs.items():
        real, padded, rate = (statistics.median(column) for column in zip(*figures, strict=True))
        per_repeat = " ".join(f"{r / ref:.0%}" for (_, _, r), ref in zip(figures, reference, strict=True))
        print(f"{name:<16}{real:>12.0f}{padded:>14.0f}{real / padded:>11.0%}{rate:>11.0f}"
              f"{rate / statistics.median(reference):>8.0%}  {per_repeat}")


def measure(args: argparse.Namespace, name: str, results: str) -> tuple[float, float, float]:
    """(real tokens per update, padded positions per update, real tokens/s) of one run of one format."""
    config = load_config(preset=args.preset, overrides=[
        *BASE, f"optim.batch_tokens={args.batch_tokens}", f"budget.max_steps={args.steps}",
        f"budget.val_every_steps={args.steps}", *FORMATS[name], *args.overrides])
    pretrain(config, results_root=results)
    curves = read_curves(run_dir(results, config))
    real, padded = (curves[f"train/{key}"].dropna().iloc[3:].mean()
                    for key in ("tokens_per_update", "padded_tokens_per_update"))
    # the run's own throughput figure (a moving window over training updates, validation excluded),
    # median over the second half, past start-up
    return real, padded, curves["train/tokens_per_s"].dropna().iloc[args.steps // 2:].median()


if __name__ == "__main__":
    main()
