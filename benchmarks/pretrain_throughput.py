"""Pre-training throughput: the Hugging Face baseline against our PretrainModule, in one process, same data.

Arms (all on the same examples, masked by the same DataCollatorForLanguageModeling, same AdamW settings):
  hf-trainer    transformers Trainer + RobertaForMaskedLM (dense MLM head over every position)   <- baseline
  hf-loop       RobertaForMaskedLM(labels=...) in a plain loop: the dense model without the Trainer
                (the baseline when `accelerate`, which the Trainer needs, is not installed)
  ours-lightning  PretrainModule under a pl.Trainer (sparse head, the harness's training path)
  ours-loop     PretrainModule.training_step + AdamW + schedule in a plain loop: the pure step cost
  ours-pretrain harness.train.pretrain, the real command's path (its own data module, run directory, logging),
                at the default impl.precision auto (bf16 autocast on CPUs with AVX512-BF16/AMX)
  ours-pretrain-fp32, hf-trainer-bf16   the same two at the other precision, for equal-precision ratios

Each arm runs `--warmup` untimed updates, then `--steps` timed ones, in a fresh process of its own (what one arm sets
process-wide, e.g. impl.allocator, must not speed up the next); the figure is the median over `--repeats` repeats,
interleaved so that drift in machine speed hits every arm alike. `--ours-set KEY=VALUE ...` ablates the harness's
speed settings (e.g. impl.fast_dropout=false impl.allocator=system). Throughput counts non-padding tokens.

Model FLOPs per token (PaLM appendix B convention, training = 3 x forward):
    6 * N + 12 * layers * hidden * seq_len
with N the non-embedding parameters (transformer layers and the head's transform; the tied decoder and the
embedding tables excluded). The vocabulary projection is reported apart: 6 * hidden * vocab per predicted
position, i.e. per token for the dense head and per masked token (15%) for the sparse one.

On a machine shared with other jobs, read the tokens/CPU-s columns and use --threads 1: with more intra-op
threads than free cores, OpenMP threads spin at barriers waiting for preempted peers, and we saw a tiny model's
step go from 0.07 to 2.2 CPU-seconds at 2 threads under a load average of 6 on 2 cores.

Usage: python benchmarks/pretrain_throughput.py [--size mini] [--steps 20] [--threads 2]
The data source is a function (see DATA_SOURCES): swap in the real pipeline by adding one that returns
`BenchData` with its dataset and collate function.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from harness.config import ModelConfig, OptimConfig
from harness.models.pretrain import PretrainModule, build_pretraining_model

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


@dataclass
class BenchData:
    dataset: Sequence[dict[str, Any]]  # one example per item
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]  # pads and masks a list of examples
    vocab_size: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int


def word_level_tokenizer(vocab_size: int):
    """A fast tokenizer with RoBERTa's special tokens, only so the HF collator knows the mask and special ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                   bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   mask_token="<mask>")


def synthetic_data(num_examples: int, seq_len: int, vocab_size: int, seed: int) -> BenchData:
    """Full-length `<s> ... </s>` sequences of Zipf-distributed word ids (like natural text's frequencies)."""
    from transformers import DataCollatorForLanguageModeling

    tokenizer = word_level_tokenizer(vocab_size)
    rng = np.random.default_rng(seed)
    words = len(SPECIALS) + (rng.zipf(1.2, size=(num_examples, seq_len - 2)) - 1) % (vocab_size - len(SPECIALS))
    dataset = [{"input_ids": [0, *row.tolist(), 2], "attention_mask": [1] * seq_len} for row in words]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    return BenchData(dataset, collate, vocab_size, tokenizer.pad_token_id, 0, 2)


def wikitext_data(num_examples: int, seq_len: int, vocab_size: int, seed: int) -> BenchData:
    """Real inputs: WikiText-2 packed by the harness (full_sentences, byte-level BPE trained by the harness), fed to
    both arms through the Hugging Face collator so the arms differ only in the training step."""
    from transformers import DataCollatorForLanguageModeling

    from harness.config import load_config
    from harness.recipe import build_datamodule, resolve_recipe

    config = load_config(overrides=["corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "impl.num_proc=2",
                                    f"tokenizer.vocab_size={vocab_size}", f"data.max_seq_length={seq_len}",
                                    "data.packing=full_sentences"])
    data = build_datamodule(config, resolve_recipe(config))
    data.setup("fit")
    packed = data.train_examples.packed
    rows = [packed.row(r).tolist() for r in range(min(num_examples, len(packed)))]
    dataset = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in rows]
    tokenizer = data.tokenizer
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    return BenchData(dataset, collate, len(tokenizer), data.specials.pad_id, data.specials.cls_id,
                     data.specials.sep_id)


DATA_SOURCES: dict[str, Callable[[int, int, int, int], BenchData]] = {"synthetic": synthetic_data,
                                                                      "wikitext": wikitext_data}


Rates = dict[str, float]  # arm -> tokens per second


# ---- the arms ---------------------------------------------------------------------------------------------------
class StepClock:
    """Wall-clock and process CPU time at the end of every update. On a shared machine the wall clock measures
    the neighbours too; CPU seconds (all threads) are a steadier, if rougher, second opinion. Token counts may be
    device tensors, read only in rates(): reading a GPU counter at every update would add a host sync."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[float | torch.Tensor] = []  # real tokens seen so far, for arms whose updates differ in size

    def tick(self, tokens_seen: float | torch.Tensor | None = None) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if tokens_seen is not None:
            self.tokens.append(tokens_seen)

    def rates(self, warmup: int, tokens_per_step: float) -> tuple[float, float]:
        """(tokens per wall second, tokens per CPU second) over the updates after `warmup`."""
        tokens = (len(self.wall) - warmup) * tokens_per_step
        if self.tokens:
            tokens = float(self.tokens[-1] - self.tokens[warmup - 1])
        return tokens / (self.wall[-1] - self.wall[warmup - 1]), tokens / (self.cpu[-1] - self.cpu[warmup - 1])


def build_model(args: argparse.Namespace, data: BenchData):
    torch.manual_seed(0)
    return build_pretraining_model(ModelConfig(family="roberta", size=args.size), vocab_size=data.vocab_size,
                                   pad_token_id=data.pad_token_id, bos_token_id=data.bos_token_id,
                                   eos_token_id=data.eos_token_id, max_seq_length=args.seq_len, nsp=False,
                                   segment_embeddings=False)


def optim_config(args: argparse.Namespace) -> OptimConfig:
    return OptimConfig(peak_lr=5e-4, warmup_fraction=0.06, batch_size=args.batch_size)


def run_hf_trainer(args: argparse.Namespace, data: BenchData, clock: StepClock, bf16: bool = False,
                   device: str = "cpu") -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Tick(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.tick()

    optim = optim_config(args)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
            learning_rate=optim.peak_lr, weight_decay=optim.weight_decay, adam_beta1=optim.betas[0],
            adam_beta2=optim.betas[1], adam_epsilon=optim.eps, warmup_steps=optim.warmup_fraction,
            lr_scheduler_type="linear", max_grad_norm=optim.clip_grad_norm, use_cpu=device == "cpu", report_to="none",
            save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
            bf16=bf16)
        Trainer(model=build_model(args, data), args=training_args, train_dataset=data.dataset,
                data_collator=data.collate, callbacks=[Tick()]).train()


def _loader(args: argparse.Namespace, data: BenchData) -> DataLoader:
    return DataLoader(data.dataset, batch_size=args.batch_size, shuffle=True, collate_fn=data.collate, drop_last=True)


def run_hf_loop(args: argparse.Namespace, data: BenchData, clock: StepClock) -> None:
    from harness.models.optim import build_lr_schedule, build_optimizer

    model, optim = build_model(args, data), optim_config(args)
    model.train()
    optimizer = build_optimizer(model, optim)
    schedule = build_lr_schedule(optimizer, optim, args.warmup + args.steps)
    for _, batch in zip(range(args.warmup + args.steps), _loader(args, data)):
        model(**batch).loss.backward()
        _update(model, optimizer, schedule, optim)
        clock.tick()


def run_ours_loop(args: argparse.Namespace, data: BenchData, clock: StepClock) -> None:
    module, optim = PretrainModule(build_model(args, data), optim=optim_config(args), total_steps=args.warmup
                                   + args.steps, nsp=False), optim_config(args)
    module.train()
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a Trainer warns and does nothing
        for index, batch in zip(range(args.warmup + args.steps), _loader(args, data)):
            module.training_step(batch, index).backward()
            _update(module, optimizer, schedule, optim)
            clock.tick()


def _update(model: torch.nn.Module, optimizer, schedule, optim: OptimConfig) -> None:
    if optim.clip_grad_norm:  # 0 = no clipping (RoBERTa), as the Trainer's gradient_clip_val
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def run_ours_lightning(args: argparse.Namespace, data: BenchData, clock: StepClock) -> None:
    class Tick(pl.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            clock.tick()

    steps = args.warmup + args.steps
    module = PretrainModule(build_model(args, data), optim=optim_config(args), total_steps=steps, nsp=False)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         gradient_clip_val=optim_config(args).clip_grad_norm, log_every_n_steps=10,
                         callbacks=[Tick()])
    trainer.fit(module, train_dataloaders=_loader(args, data))


def run_ours_pretrain(args: argparse.Namespace, data: BenchData, clock: StepClock, precision: str = "auto") -> None:
    """The real command's path: `harness.train.pretrain` with its data module (WikiText-2, full_sentences, dynamic
    masks), run directory, CSV logging and checkpoints, at the benchmark's shape; `auto` precision is the default."""
    from harness.config import load_config
    from harness.train import pretrain

    class Tick(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *_: Any) -> None:
            clock.tick(module.tokens_seen.clone())  # a device copy, read after the run: no sync per update

    steps = args.warmup + args.steps
    config = load_config(overrides=[
        "corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "impl.num_proc=2", f"model.size={args.size}",
        f"tokenizer.vocab_size={args.vocab_size}", f"data.max_seq_length={args.seq_len}",
        f"optim.batch_size={args.batch_size}", "optim.peak_lr=5e-4", f"budget.max_steps={steps}",
        f"budget.val_every_steps={steps}", "budget.val_max_examples=32", "budget.common_val_max_chars=1000",
        f"impl.precision={precision}", "impl.progress_bar=false", "logging.wandb=false",
        *([f"impl.threads={args.threads}"] if args.threads else []), *args.ours_set])
    with tempfile.TemporaryDirectory() as results:
        pretrain(config, results_root=results, extra_callbacks=[Tick()])


def run_hf_trainer_bf16(args: argparse.Namespace, data: BenchData, clock: StepClock) -> None:
    run_hf_trainer(args, data, clock, bf16=True)


ARMS: dict[str, Callable[[argparse.Namespace, BenchData, StepClock], None]] = {
    "hf-trainer": run_hf_trainer, "hf-trainer-bf16": run_hf_trainer_bf16, "hf-loop": run_hf_loop,
    "ours-lightning": run_ours_lightning, "ours-loop": run_ours_loop, "ours-pretrain": run_ours_pretrain,
    "ours-pretrain-fp32": lambda args, data, clock: run_ours_pretrain(args, data, clock, precision="32-true"),
}


def trainer_available() -> bool:
    """The HF Trainer needs `accelerate`, which is not a harness dependency."""
    return importlib.util.find_spec("accelerate") is not None


# ---- FLOPs ----------------------------------------------------------------------------------------------------
def flops_per_token(args: argparse.Namespace, data: BenchData) -> tuple[float, float]:
    """(model FLOPs per token without the vocabulary projection, vocabulary projection per predicted position)."""
    model = build_model(args, data)
    embeddings = {id(p) for p in model.roberta.embeddings.parameters()} | {id(model.lm_head.decoder.weight)}
    non_embedding = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in embeddings)
    size = ModelConfig(size=args.size)
    attention = 12 * size.layers * size.hidden * args.seq_len
    return 6 * non_embedding + attention, 6 * size.hidden * data.vocab_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini", help="model size preset (harness.config.MODEL_SIZES)")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per arm and repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates before the clock starts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--data", choices=list(DATA_SOURCES), default="synthetic")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--ours-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the ours-pretrain arms, e.g. impl.fast_dropout=false")
    parser.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)  # one arm, one repeat, JSON out
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    num_examples = args.batch_size * (args.warmup + args.steps + 1)
    data = DATA_SOURCES[args.data](num_examples, args.seq_len, args.vocab_size, 0)
    tokens_per_step = float(sum(sum(ex["attention_mask"]) for ex in data.dataset[: args.batch_size]))
    if args.child:
        clock = StepClock()
        ARMS[args.child](args, data, clock)
        print(json.dumps(dict(zip(("wall", "cpu"), clock.rates(args.warmup, tokens_per_step), strict=True))))
        return
    if "hf-trainer" in args.arms and not trainer_available():
        print("accelerate is not installed: skipping the hf-trainer arm; the baseline is hf-loop (the same dense "
              "model and optimiser without the Trainer's overhead, so the ratios are conservative)")
        args.arms.remove("hf-trainer")
    wall, cpu = run_arms(argv if argv is not None else sys.argv[1:], args.arms, args.repeats)
    report(args, data, wall, cpu)


def run_arms(argv: list[str], arms: list[str], repeats: int, script: str = __file__) -> tuple[Rates, Rates]:
    """(median tokens/s, median tokens/CPU-s) per arm: every arm once per repeat, interleaved, each in a fresh
    `script --child ARM` process."""
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    for repeat in range(repeats):
        for arm in arms:
            wall_rate, cpu_rate = run_child(argv, arm, script)
            wall[arm].append(wall_rate)
            cpu[arm].append(cpu_rate)
            print(f"repeat {repeat + 1}/{repeats} {arm:18s} {wall_rate:9.0f} tokens/s "
                  f"{cpu_rate:9.0f} tokens/CPU-s  load {os.getloadavg()[0]:.1f}", flush=True)
    return {arm: statistics.median(v) for arm, v in wall.items()}, {arm: statistics.median(v) for arm, v in cpu.items()}


def run_child(argv: list[str], arm: str, script: str = __file__) -> tuple[float, float]:
    """One arm, one repeat, in a fresh interpreter: process-wide settings an arm makes (impl.allocator's mallopt,
    thread pools, autocast caches, a CUDA context) never leak into the next arm, so the Hugging Face arms run at
    glibc's and torch's defaults whatever ran before them."""
    command = [sys.executable, script, *argv, "--child", arm]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["wall"], figures["cpu"]


def report(args: argparse.Namespace, data: BenchData, wall: dict[str, float], cpu: dict[str, float]) -> None:
    baseline = next((arm for arm in ("hf-trainer", "hf-loop") if arm in wall), None)
    model_flops, vocab_flops = flops_per_token(args, data)
    mask_rate = 0.15
    print(f"\n{args.size}, vocab {args.vocab_size}, seq {args.seq_len}, batch {args.batch_size}, fp32 unless named, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} x {args.steps} updates")
    print(f"model FLOPs/token = 6N + 12*layers*hidden*seq = {model_flops / 1e6:.1f} MFLOP "
          f"(+ vocab projection 6*hidden*vocab = {vocab_flops / 1e6:.1f} MFLOP per predicted position)")
    ceilings = {dtype: matmul_ceiling(dtype) for dtype in (torch.float32, torch.bfloat16)}
    print(f"matmul ceiling on this machine ({torch.get_num_threads()} threads, 1024^3 matmuls): "
          f"fp32 {ceilings[torch.float32]:.0f} GFLOP/s, bf16 {ceilings[torch.bfloat16]:.0f} GFLOP/s")
    print(f"{'arm':18s} {'tokens/s':>9s} {'ratio':>6s} {'tokens/CPU-s':>12s} {'ratio':>6s} {'GFLOP/s':>8s} "
          f"{'GFLOP/CPU-s':>11s} {'incl. vocab':>11s} {'of ceiling':>10s}   (ratios vs {baseline})")
    for arm, rate in wall.items():
        predicted = 1.0 if arm.startswith("hf") else mask_rate  # dense head: every position; sparse: masked ones
        wall_ratio = f"{rate / wall[baseline]:.2f}x" if baseline else "-"
        cpu_ratio = f"{cpu[arm] / cpu[baseline]:.2f}x" if baseline else "-"
        hardware_flops = model_flops + predicted * vocab_flops
        ceiling = ceilings[torch.bfloat16 if arm_uses_bf16(arm) else torch.float32]
        print(f"{arm:18s} {rate:9.0f} {wall_ratio:>6s} {cpu[arm]:12.0f} {cpu_ratio:>6s} "
              f"{rate * model_flops / 1e9:8.2f} {cpu[arm] * model_flops / 1e9:11.2f} "
              f"{cpu[arm] * hardware_flops / 1e9:11.2f} {rate * hardware_flops / 1e9 / ceiling:>10.0%}")
    print("GFLOP = model FLOPs; incl. vocab = per CPU-second, counting the vocabulary projection each arm computes; "
          "of ceiling = wall-clock FLOPs actually computed / the matmul ceiling at the arm's precision")


def arm_uses_bf16(arm: str) -> bool:
    if arm == "ours-pretrain":  # impl.precision auto
        from harness.train import cpu_has_fast_bf16

        return cpu_has_fast_bf16()
    return arm.endswith("-bf16")


def matmul_ceiling(dtype: torch.dtype, size: int = 1024, seconds: float = 1.0, device: str = "cpu") -> float:
    """GFLOP/s of square matmuls at `dtype`: what the model's math could reach on this device at best."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    # CUDA launches return at once: wait for the device before starting and before stopping the clock.
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    synchronize()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


if __name__ == "__main__":
    main()
