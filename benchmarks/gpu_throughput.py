"""GPU pre-training throughput and model FLOPs utilisation (MFU): harness.train.pretrain against the HF Trainer.

Arms (each in a fresh process, interleaved over --repeats, with pretrain_throughput.py's machinery):
  hf-trainer-bf16  transformers Trainer(bf16=True) + RobertaForMaskedLM, SDPA attention, dense MLM head  <- baseline
  ours-pretrain    harness.train.pretrain, the real command's path, at its defaults on impl.accelerator=gpu:
                   impl.precision auto (bf16-mixed on GPUs with bf16), SDPA attention, sparse MLM head
Both train on the same inputs: WikiText-2 packed by the harness (full_sentences, the harness's BPE vocabulary);
the HF arm gets them through DataCollatorForLanguageModeling, ours through its own data module.

MFU = model FLOPs/s / the device's peak dense bf16 FLOPs. Model FLOPs per token are pretrain_throughput's
(6N + 12 * layers * hidden * seq) plus the vocabulary projection 6 * hidden * vocab at the 15% masked positions,
for both arms: the same useful work is credited whatever each head computes (the dense HF head projects every
position; that extra work is not counted as useful).

Peak: NVIDIA's datasheet figure for dense bf16 tensor-core math with FP32 accumulation, without 2:4 sparsity,
looked up by torch.cuda.get_device_name() (PEAK_BF16_TFLOPS); --peak-tflops overrides it. Lightning's own table
(lightning_fabric.utilities.throughput) is not used: it mixes sparse figures (H200 2.0e15, H100 NVL 1,979e12)
with non-tensor ones (RTX 4090 82.6e12). Beside it, the bf16 matmul ceiling measured on the device (8192^3
matmuls) and the MFU against that: what this device and torch reach on the best-case operation.

Timing on a GPU: a CUDA event recorded at the end of every update, read after the run. A host synchronisation per
update would stall the host's run-ahead and change what is measured; events time the device's own timeline,
idle gaps included. The timed updates come after --warmup untimed ones (kernel selection, the caching allocator)
and stay under the harness's first checkpoint (impl.checkpoint_every_steps, 50 updates).

--device cpu is a smoke run of the same code on a machine without a GPU: MFU is then against the CPU's measured
matmul ceiling at each arm's precision, and the output says it is a smoke run.

Usage: python benchmarks/gpu_throughput.py [--size base] [--seq-len 512] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_throughput as pt  # noqa: E402

MASK_RATE = 0.15
BASELINE = "hf-trainer-bf16"
# Dense bf16 tensor-core TFLOP/s (FP32 accumulate, no sparsity) from NVIDIA's datasheets; first match wins, so the
# more specific names come first ("L4" must not match "L40S", nor "A10" "A100").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H[12]00 NVL", 835.0),
    (r"GH200|H200|H100", 989.0),  # H100 SXM5, H200 SXM and GH200: the same 989.4
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"L4\b", 121.0),
    (r"A10G", 125.0),  # NVIDIA publishes no A10G datasheet: this is the A10's figure; pass --peak-tflops if known
    (r"A10\b", 125.0),
    (r"A40\b", 150.0),
    (r"RTX 4090", 165.0),  # GeForce: bf16 with FP32 accumulate runs at half the FP16-accumulate rate
)
GPU_CEILING_SIZE = 8192


def peak_bf16_tflops(device_name: str) -> float | None:
    return next((tflops for pattern, tflops in PEAK_BF16_TFLOPS if re.search(pattern, device_name, re.I)), None)


class CudaStepClock(pt.StepClock):
    """pt.StepClock whose wall clock is the GPU's: each update end is a CUDA event, turned into seconds only in
    rates(), after one synchronisation at the end of the run."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[torch.cuda.Event] = []

    def tick(self, tokens_seen: float | torch.Tensor | None = None) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events.append(event)
        super().tick(tokens_seen)

    def rates(self, warmup: int, tokens_per_step: float) -> tuple[float, float]:
        torch.cuda.synchronize()
        start = self.wall[0]
        self.wall = [start + self.events[0].elapsed_time(event) / 1e3 for event in self.events]
        return super().rates(warmup, tokens_per_step)


def run_hf_trainer_bf16(args: argparse.Namespace, data: pt.BenchData, clock: pt.StepClock) -> None:
    pt.run_hf_trainer(args, data, clock, bf16=True, device=args.device)


ARMS: dict[str, Callable[[argparse.Namespace, pt.BenchData, pt.StepClock], None]] = {
    BASELINE: run_hf_trainer_bf16, "ours-pretrain": pt.run_ours_pretrain}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (the benchmark); cpu = a smoke run of the same code path, no GPU figures")
    parser.add_argument("--size", default="base", help="model size preset (harness.config.MODEL_SIZES)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per update on the one device")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (the harness's default)")
    parser.add_argument("--steps", type=int, default=30, help="timed updates per arm and repeat")
    parser.add_argument("--warmup", type=int, default=10, help="untimed updates before the clock starts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense bf16 TFLOP/s, overriding the table (PEAK_BF16_TFLOPS)")
    parser.add_argument("--ours-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for ours-pretrain, e.g. impl.compile=true")
    parser.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)  # one arm, one repeat, JSON out
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device found: this benchmark measures GPUs; for a smoke run of the same code on the "
                       "CPU add --device cpu (e.g. --device cpu --size tiny --seq-len 128 --batch-size 8 --steps 3)\n")
    if args.device == "cuda" and not torch.cuda.is_bf16_supported():
        parser.exit(2, f"{torch.cuda.get_device_name()} has no bf16: this benchmark compares bf16 training\n")
    # pretrain_throughput's arms read these: the harness's own data and thread defaults, and the accelerator.
    args.threads, args.data = None, "wikitext"
    args.ours_set = [f"impl.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", *args.ours_set]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # one device: the HF Trainer would wrap several in DataParallel
    num_examples = args.batch_size * (args.warmup + args.steps + 1)
    data = pt.wikitext_data(num_examples, args.seq_len, args.vocab_size, 0)
    tokens_per_step = float(sum(sum(ex["attention_mask"]) for ex in data.dataset[: args.batch_size]))
    if args.child:
        clock = CudaStepClock() if args.device == "cuda" else pt.StepClock()
        ARMS[args.child](args, data, clock)
        print(json.dumps(dict(zip(("wall", "cpu"), clock.rates(args.warmup, tokens_per_step), strict=True))))
        return
    if BASELINE in args.arms and not pt.trainer_available():
        raise SystemExit("the baseline needs the HF Trainer, which needs accelerate: pip install accelerate")
    wall, _ = pt.run_arms(argv if argv is not None else sys.argv[1:], args.arms, args.repeats, script=__file__)
    report(args, data, wall)


def arm_precision(arm: str, device: str) -> str:
    if arm == BASELINE:
        return "bf16 autocast"
    from harness.config import ImplConfig
    from harness.train import resolve_precision

    return resolve_precision(ImplConfig(accelerator="gpu" if device == "cuda" else "cpu"))


def ceilings_tflops(device: str) -> dict[str, float]:
    """Measured matmul TFLOP/s by arm precision: bf16 on a GPU; bf16 and fp32 on the CPU (smoke runs)."""
    if device == "cuda":
        bf16 = pt.matmul_ceiling(torch.bfloat16, size=GPU_CEILING_SIZE, seconds=2.0, device="cuda") / 1e3
        return {"bf16": bf16}
    return {name: pt.matmul_ceiling(dtype) / 1e3 for name, dtype in (("bf16", torch.bfloat16),
                                                                       ("fp32", torch.float32))}


def report(args: argparse.Namespace, data: pt.BenchData, wall: pt.Rates) -> None:
    model_flops, vocab_flops = pt.flops_per_token(args, data)
    useful_flops = model_flops + MASK_RATE * vocab_flops
    smoke = args.device == "cpu"
    device_name = torch.cuda.get_device_name() if not smoke else f"CPU, {torch.get_num_threads()} threads"
    peak = args.peak_tflops or (None if smoke else peak_bf16_tflops(device_name))
    ceilings = ceilings_tflops(args.device)
    if smoke:
        print("\nSMOKE RUN on the CPU (--device cpu): the code path only, no GPU figures; MFU is against this CPU's "
              "measured matmul ceiling")
    print(f"\n{args.size}, seq {args.seq_len}, batch {args.batch_size} per device, vocab {data.vocab_size} "
          f"(WikiText-2, the harness's BPE), median of {args.repeats} x {args.steps} updates after {args.warmup} "
          f"warm-up; device: {device_name}")
    print(f"model FLOPs/token = 6N + 12*layers*hidden*seq + {MASK_RATE} * 6*hidden*vocab = {useful_flops / 1e6:.1f} "
          f"MFLOP: the vocabulary projection is credited at the {MASK_RATE:.0%} masked positions for both arms (the "
          "same useful work, whatever each head computes)")
    source = "--peak-tflops" if args.peak_tflops else "NVIDIA datasheet, dense bf16"
    peak_text = (f"{peak:.0f} TFLOP/s ({source})" if peak else "none for a CPU (smoke run)" if smoke
                 else f"unknown for {device_name} (pass --peak-tflops)")
    measured = ", ".join(f"{name} {tflops:.3g} TFLOP/s" for name, tflops in ceilings.items())
    size = GPU_CEILING_SIZE if not smoke else 1024
    print(f"peak: {peak_text}; measured matmul ceiling ({size}^3): {measured}")
    print(f"{'arm':16s} {'tokens/s':>10s} {'ratio':>6s} {'model TFLOP/s':>13s} {'MFU':>6s} {'of ceiling':>10s}  "
          "precision")
    for arm, rate in wall.items():
        precision = arm_precision(arm, args.device)
        ceiling = ceilings["bf16" if "bf16" in precision else "fp32"]
        tflops = rate * useful_flops / 1e12
        ratio = f"{rate / wall[BASELINE]:.2f}x" if BASELINE in wall else "-"
        arm_peak = peak or (ceiling if smoke else None)  # a smoke run's MFU is against the CPU's own ceiling
        mfu = f"{tflops / arm_peak:.1%}" if arm_peak else "-"
        print(f"{arm:16s} {rate:10.0f} {ratio:>6s} {tflops:13.3g} {mfu:>6s} {tflops / ceiling:>10.1%}  {precision}")
    print(f"ratio = tokens/s against {BASELINE} (transformers Trainer, bf16=True, sdpa, dense head) in this run; "
          "MFU = model TFLOP/s / peak; of ceiling = model TFLOP/s / the measured matmul ceiling at the arm's "
          "precision")


if __name__ == "__main__":
    main()
