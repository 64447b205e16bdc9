"""Data pipeline throughput: packing, iterating, and the collate + mask cost of one batch against a training step.

For each input format of the paper (and static / dynamic masking, which changes what is packed for the pair
formats: static re-draws the pairs for each of dupe_factor copies), on the real corpus of the `mini` preset
(WikiText-2 valid, 8K vocabulary, 32 x 128):

  build      stored rows per second of packing, from the tokenized corpus to the examples folder on disk
             (iter_copies + columnar arrays + save), fresh folder each repeat
  iterate    training examples per second through the real train DataLoader (0 workers): sampler, collate, mask
  collate    milliseconds per 32-example batch of the collator alone (pad + mask + tensors)
  step       milliseconds of one forward + backward + AdamW update of the `mini` model built by
             harness.recipe.build_module for that recipe, on one of those batches
  fraction   collate / step: the share of a training step that the data pipeline adds when it runs in the
             training process (num_workers=0); the target is < 5%

Figures are medians over `--repeats` (noisy on a shared machine). The step is timed at each `--threads` value and
the fastest median is used, so the fraction is the conservative (largest) one. The caches go to a fresh temporary
folder unless --cache-dir is given (a shared cache may hold examples packed by other runs; segmenting WikiText-2 valid
takes ~20 s). Formats with NSP use BERT (WordPiece, [CLS]/[SEP], NSP head); the others RoBERTa (byte-level BPE, MLM
only), as in the paper's Table 2.

Usage: python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--repeats 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.config import RunConfig, load_config
from harness.data.corpus import build_corpus
from harness.data.examples import build_packed
from harness.data.module import PretrainDataModule
from harness.recipe import build_datamodule, build_module, resolve_recipe

REPO = Path(__file__).resolve().parents[1]
ARMS = [  # (packing, masking)
    ("full_sentences", "dynamic"), ("full_sentences", "static"),
    ("doc_sentences", "dynamic"), ("doc_sentences", "static"),
    ("segment_pair", "dynamic"), ("segment_pair", "static"),
    ("sentence_pair", "dynamic"), ("sentence_pair", "static"),
]
PAIRS = ("segment_pair", "sentence_pair")


@dataclass
class Row:
    packing: str
    masking: str
    stored: int
    examples: int
    build: float  # stored rows / s
    iterate: float  # training examples / s
    collate_ms: float
    step_ms: dict[int, float]

    @property
    def fraction(self) -> float:
        return self.collate_ms / min(self.step_ms.values())


def arm_config(args: argparse.Namespace, packing: str, masking: str) -> RunConfig:
    family = ["model.family=bert", "tokenizer.kind=wordpiece", "data.nsp=true"] if packing in PAIRS else []
    return load_config(preset="mini", overrides=[
        f"data.packing={packing}", f"data.masking={masking}", f"data.dupe_factor={args.dupe_factor}",
        f"data.max_seq_length={args.seq_len}", f"optim.batch_size={args.batch_size}",
        f"impl.cache_dir={args.cache_dir}", *family, *args.set])


def set_up(config: RunConfig, data_dir: Path) -> PretrainDataModule:
    data = build_datamodule(config, resolve_recipe(config), data_dir)
    data.prepare_data()
    data.setup("fit")
    return data


def time_build(config: RunConfig, data: PretrainDataModule, data_dir: Path, repeats: int) -> tuple[float, int]:
    """Rows per second of packing the training split into a fresh folder (what a new data setting costs)."""
    corpus = build_corpus(config, data_dir)
    plan, _ = data._plans()
    documents = corpus.train["sentences"]
    seconds, rows = [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            packed = build_packed(documents, plan, data.specials, Path(tmp) / "examples", corpus.cache_dir.name)
            seconds.append(time.perf_counter() - start)
            rows = len(packed)
    return rows / statistics.median(seconds), rows


def time_iterate(data: PretrainDataModule, batches: int, repeats: int) -> float:
    """Training examples per second through the train DataLoader, epoch 0 then 1 (fresh masks for dynamic)."""
    loader = data.train_dataloader()
    sampler = loader.batch_sampler
    rates = []
    for repeat in range(repeats):
        sampler.start = sampler.first_batch_of_epoch(repeat)
        sampler.num_batches = max(sampler.num_batches, sampler.start + batches)
        start, seen = time.perf_counter(), 0
        for number, batch in enumerate(loader):
            seen += len(batch["input_ids"])
            if number + 1 >= batches:
                break
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def sample_batches(data: PretrainDataModule, count: int) -> list[list[tuple[int, int, int]]]:
    """`count` batches of dataset items (mask epoch, index, row) in the order training draws them."""
    sampler = data.train_dataloader().batch_sampler
    items = []
    for keys in sampler:
        items.append([data.train_examples[key] for key in keys])
        if len(items) == count:
            break
    return items


def time_collate(data: PretrainDataModule, items: list[list[tuple[int, int, int]]], repeats: int) -> float:
    collate = data.train_dataloader().collate_fn
    for batch_items in items[:5]:  # warm-up: lookup tables, first-touch of the memory-mapped rows
        collate(batch_items)
    per_batch = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch_items in items:
            collate(batch_items)
        per_batch.append((time.perf_counter() - start) / len(items))
    return 1000 * statistics.median(per_batch)


def time_step(config: RunConfig, data: PretrainDataModule, batch: dict[str, torch.Tensor], steps: int,
              threads: int) -> float:
    """Median ms of forward + backward + clip + AdamW step + schedule of the recipe's model on one batch."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        module = build_module(config, resolve_recipe(config), data)
        module.train()
        optim = module.configure_optimizers()
        optimizer, schedule = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
        times = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log() without a Trainer warns and does nothing
            for index in range(steps + 2):  # two untimed warm-up steps
                start = time.perf_counter()
                module.training_step(batch, index).backward()
                if config.optim.clip_grad_norm:  # 0 = no clipping, as the Trainer's gradient_clip_val
                    torch.nn.utils.clip_grad_norm_(module.parameters(), config.optim.clip_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times[2:])
    finally:
        torch.set_num_threads(previous)


def measure(args: argparse.Namespace, packing: str, masking: str, step_cache: dict) -> Row:
    config = arm_config(args, packing, masking)
    data = set_up(config, args.data_dir)
    build, stored = time_build(config, data, args.data_dir, args.build_repeats)
    iterate = time_iterate(data, args.iterate_batches, args.repeats)
    items = sample_batches(data, args.collate_batches)
    collate_ms = time_collate(data, items, args.repeats)
    family = config.model.family
    if family not in step_cache:  # the model and the batch shape do not depend on the masking
        full = [b for b in items if b and len(b) == args.batch_size]
        batch = data.train_dataloader().collate_fn(full[0])
        step_cache[family] = {t: time_step(config, data, batch, args.steps, t) for t in args.threads}
    return Row(packing, masking, stored, len(data.train_examples), build, iterate, collate_ms, step_cache[family])


def print_table(args: argparse.Namespace, rows: list[Row]) -> None:
    threads = "/".join(f"{t}t" for t in args.threads)
    print(f"\nmini preset: {args.batch_size} x {args.seq_len}, vocab 8192, dupe_factor {args.dupe_factor}; "
          f"medians of {args.repeats} repeats; step at {threads} torch threads (fraction uses the fastest)")
    header = (f"{'packing':15s} {'masking':8s} {'stored':>7s} {'train ex':>8s} {'build rows/s':>12s} "
              f"{'iterate ex/s':>12s} {'collate ms':>10s} " + " ".join(f"{'step ms ' + str(t) + 't':>11s}"
                                                                     for t in args.threads) + f" {'fraction':>8s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        steps = " ".join(f"{r.step_ms[t]:11.1f}" for t in args.threads)
        flag = "" if r.fraction < 0.05 else "  > 5%"
        print(f"{r.packing:15s} {r.masking:8s} {r.stored:7d} {r.examples:8d} {r.build:12.0f} {r.iterate:12.0f} "
              f"{r.collate_ms:10.2f} {steps} {100 * r.fraction:7.2f}%{flag}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HARNESS_DATA_DIR") or
                                                               REPO.parent / "shared" / "data"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dupe-factor", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument("--iterate-batches", type=int, default=100, help="batches per iterate repeat")
    parser.add_argument("--collate-batches", type=int, default=50, help="batches per collate repeat")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per thread setting")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, torch.get_num_threads()}))
    parser.add_argument("--arms", nargs="+", default=[f"{p}/{m}" for p, m in ARMS], help="packing/masking pairs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    parser.add_argument("--cache-dir", type=Path, default=None, help="harness cache (default: a fresh temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as fresh:
        args.cache_dir = args.cache_dir or Path(fresh)
        run(args)


def run(args: argparse.Namespace) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}, "
          f"numpy {np.__version__}", flush=True)
    rows, step_cache = [], {}
    for arm in args.arms:
        packing, masking = arm.split("/")
        rows.append(measure(args, packing, masking, step_cache))
        r = rows[-1]
        print(f"{arm:25s} build {r.build:8.0f} rows/s  iterate {r.iterate:7.0f} ex/s  collate {r.collate_ms:6.2f} ms"
              f"  load {os.getloadavg()[0]:.1f}", flush=True)
    print_table(args, rows)


if __name__ == "__main__":
    main()
