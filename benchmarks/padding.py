"""Padding waste of the input formats at equal real tokens per update, through the real `pretrain()` path.

The paper keeps the tokens per update similar across formats (`optim.batch_tokens`); short inputs
(SENTENCE-PAIR, DOC-SENTENCES near a document's end) then come many to a batch, padded to the longest one.
Prints, per format: real and padded tokens per update, the share of computed positions that are real, real tokens
per second, and that rate relative to FULL-SENTENCES.

Usage: python benchmarks/padding.py [--preset tiny] [--steps 60] [--batch-tokens 4096] [--set key=value ...]
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as results:
        for name, extra in FORMATS.items():
            config = load_config(preset=args.preset, overrides=[
                *BASE, f"optim.batch_tokens={args.batch_tokens}", f"budget.max_steps={args.steps}",
                f"budget.val_every_steps={args.steps}", *extra, *args.overrides])
            metrics = pretrain(config, results_root=results)
            curves = read_curves(run_dir(results, config))
            real, padded = (curves[f"train/{key}"].dropna().iloc[3:].mean()
                            for key in ("tokens_per_update", "padded_tokens_per_update"))
            # the run's own throughput figure (a moving window over training updates, validation excluded),
            # median over the second half, past start-up
            rate = curves["train/tokens_per_s"].dropna().iloc[args.steps // 2:].median()
            rows[name] = (real, padded, rate)
    print(f"{args.preset}, {args.steps} updates of at most {args.batch_tokens} real tokens, precision "
          f"{metrics['precision']}")
    print(f"{'format':<16}{'real/update':>12}{'padded/update':>14}{'real share':>11}{'real tok/s':>11}{'vs FULL':>8}")
    reference = rows["full_sentences"][2]
    for name, (real, padded, rate) in rows.items():
        print(f"{name:<16}{real:>12.0f}{padded:>14.0f}{real / padded:>11.0%}{rate:>11.0f}{rate / reference:>8.0%}")


if __name__ == "__main__":
    main()
