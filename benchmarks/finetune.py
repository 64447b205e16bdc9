"""Fine-tuning throughput: our LightningModule under a pl.Trainer vs the Hugging Face Trainer.

Same process, same checkpoint, same encoded SST-2 subset, same padding collator, batch size, optimiser
settings and number of updates; validation and checkpointing are off on both sides so only the training
loop is timed. Rounds alternate the loops so drift in machine load hits all of them. Prints examples/s for
each (fastest round and median) and the ratios.

    python benchmarks/finetune.py --data-dir ../shared/data [--size tiny|mini] [--examples 2048] [--rounds 3]

A plain PyTorch loop (forward, backward, clip, AdamW, schedule: the Trainer's inner loop) runs too, as the
floor both frameworks add overhead to. The Hugging Face Trainer needs the `accelerate` package; where it is
missing only the plain loop is compared, and the output says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# Before torch loads (as in tests/conftest.py): spinning OpenMP threads crawl on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import MODEL_SIZES  # noqa: E402
from harness.downstream.encode import encode_texts, open_checkpoint, pad_batch  # noqa: E402
from harness.downstream.prepare import subsample  # noqa: E402
from harness.downstream.sources import load_examples  # noqa: E402
from harness.models.finetune import FinetuneModule, load_finetune_model  # noqa: E402
from harness.tasks import get_task  # noqa: E402

LR, BATCH, WARMUP, DECAY = 1e-4, 32, 0.06, 0.01


def build_checkpoint(root: Path, size: str, sentences: list[str]) -> Path:
    """A randomly initialised RoBERTa of a harness size preset with a BPE tokenizer trained on `sentences`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=8192, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(root), "bpe")
    tokenizer = RobertaTokenizer(vocab=str(root / "bpe-vocab.json"), merges=str(root / "bpe-merges.txt"))
    layers, hidden, heads, intermediate = MODEL_SIZES[size]
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=130,
                           type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    path = root / f"{size}-roberta"
    RobertaForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def time_lightning(checkpoint: Path, features: list[dict[str, Any]], pad_id: int) -> float:
    import pytorch_lightning as pl

    from harness.downstream.evaluators import ClassificationEvaluator

    torch.manual_seed(0)
    module = FinetuneModule(load_finetune_model(checkpoint, get_task("sst2")),
                            ClassificationEvaluator(get_task("sst2")), learning_rate=LR, weight_decay=DECAY,
                            warmup_fraction=WARMUP)
    loader = torch.utils.data.DataLoader(features, batch_size=BATCH, shuffle=True,
                                         collate_fn=lambda rows: pad_batch(rows, pad_id))
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(default_root_dir=root, max_epochs=1, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0)
        started = time.perf_counter()
        trainer.fit(module, loader)
        return time.perf_counter() - started


def time_hf_trainer(checkpoint: Path, features: list[dict[str, Any]], pad_id: int) -> float:
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = load_finetune_model(checkpoint, get_task("sst2"))
    with tempfile.TemporaryDirectory() as root:
        args = TrainingArguments(output_dir=root, per_device_train_batch_size=BATCH, num_train_epochs=1,
                                 learning_rate=LR, warmup_steps=WARMUP, weight_decay=DECAY, max_grad_norm=1.0,
                                 adam_epsilon=1e-6,
                                 report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
                                 use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=features,
                          data_collator=lambda rows: pad_batch(rows, pad_id))
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def time_torch_loop(checkpoint: Path, features: list[dict[str, Any]], pad_id: int) -> float:
    """What the HF Trainer's inner loop does, without the Trainer."""
    from transformers import get_linear_schedule_with_warmup

    from harness.models.optim import parameter_groups

    torch.manual_seed(0)
    model = load_finetune_model(checkpoint, get_task("sst2")).train()
    loader = torch.utils.data.DataLoader(features, batch_size=BATCH, shuffle=True,
                                         collate_fn=lambda rows: pad_batch(rows, pad_id))
    optimizer = torch.optim.AdamW(parameter_groups(model, DECAY), lr=LR, eps=1e-6)
    schedule = get_linear_schedule_with_warmup(optimizer, round(WARMUP * len(loader)), len(loader))
    started = time.perf_counter()
    for batch in loader:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def reference_loops() -> list[tuple[str, Any]]:
    """The HF Trainer (when it can run) and, always, the bare loop, which shows the model's own cost."""
    loops: list[tuple[str, Any]] = []
    try:
        import accelerate  # noqa: F401 - the HF Trainer cannot run without it
        loops.append(("Hugging Face Trainer", time_hf_trainer))
    except ImportError:
        print("Hugging Face Trainer unavailable: the `accelerate` package is not installed")
    loops.append(("plain PyTorch loop", time_torch_loop))
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR")
                        or str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--size", default="tiny", choices=["tiny", "mini"])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    spec = get_task("sst2")
    train = subsample(load_examples(spec, "train", args.data_dir), args.examples, seed=0)
    with tempfile.TemporaryDirectory() as root:
        checkpoint = build_checkpoint(Path(root), args.size, [ex.text_a for ex in train])
        ckpt = open_checkpoint(checkpoint)
        features = encode_texts(ckpt.tokenizer, train, args.max_seq_length, ckpt.token_types)
        loops = [("harness FinetuneModule + pl.Trainer", time_lightning), *reference_loops()]
        seconds: dict[str, list[float]] = {name: [] for name, _ in loops}
        for _ in range(args.rounds):
            for name, loop in loops:
                seconds[name].append(loop(checkpoint, features, ckpt.tokenizer.pad_token_id))
    print(f"task sst2, {len(features)} examples, model {args.size} (RoBERTa {MODEL_SIZES[args.size]}), batch {BATCH}, "
          f"max_seq_length {args.max_seq_length}, torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    # On a shared machine other processes only ever slow a round down: the fastest round is the cleanest
    # estimate of a loop's own cost; the median is printed beside it.
    best = {name: len(features) / min(times) for name, times in seconds.items()}
    for name, times in seconds.items():
        print(f"  {name:36s}: {best[name]:7.1f} examples/s best, {len(features) / statistics.median(times):7.1f} "
              f"median  (rounds: {', '.join(f'{s:.1f}s' for s in times)})")
    ours = loops[0][0]
    for name, _ in loops[1:]:
        print(f"  ratio ours / {name} (best rounds): {best[ours] / best[name]:.3f}")


if __name__ == "__main__":
    main()
