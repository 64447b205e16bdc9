"""bf16 autocast against fp32 through the real `pretrain()` path: speed and how closely the loss curves agree.

Both runs use the same config apart from `impl.precision` (a speed knob, not part of the run id, so each run gets
its own results folder): the same data order, masks, initialisation and dropout. Prints real tokens per second of
each, the largest gap between the two training-loss curves (per update, and smoothed over 10 updates, which is
what a reader of the curve sees), and the final held-out losses.

Usage: python benchmarks/precision_curves.py --preset tiny --steps 300 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.config import load_config
from harness.runs import read_curves, run_dir
from harness.train import pretrain

BASE = ["corpus.path=corpora/wikitext-2-raw/wiki.valid.raw", "impl.num_proc=2", "logging.wandb=false",
        "impl.progress_bar=false", "logging.log_every_steps=1", "impl.checkpoint_every_steps=100000"]


def run(preset: str, precision: str, steps: int, overrides: list[str], results: Path) -> tuple[dict, np.ndarray, float]:
    config = load_config(overrides=[*BASE, f"budget.max_steps={steps}", f"budget.val_every_steps={steps}",
                                    f"impl.precision={precision}", *overrides], preset=preset)
    started = time.perf_counter()
    metrics = pretrain(config, results_root=results / precision)
    seconds = time.perf_counter() - started
    curves = read_curves(run_dir(results / precision, config))
    return metrics, curves["train/mlm_loss"].dropna().to_numpy(), seconds


def smooth(values: np.ndarray, window: int = 10) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, fp32_curve, _ = run(args.preset, "32-true", args.steps, args.overrides, Path(tmp))
        bf16, bf16_curve, _ = run(args.preset, "bf16-mixed", args.steps, args.overrides, Path(tmp))
    gap = np.abs(bf16_curve - fp32_curve)
    smoothed = np.abs(smooth(bf16_curve) - smooth(fp32_curve))
    print(f"{args.preset}, {args.steps} updates, {' '.join(args.overrides) or 'preset defaults'}")
    print(f"{'precision':<12}{'real tok/s':>12}{'final train':>13}{'val loss':>10}{'common bpc':>12}")
    for name, metrics in (("32-true", fp32), ("bf16-mixed", bf16)):
        print(f"{name:<12}{metrics['tokens_seen'] / metrics['fit_seconds_this_launch']:>12.0f}"
              f"{metrics['train_mlm_loss']:>13.4f}{metrics['val_mlm_loss']:>10.4f}{metrics['common_val_bpc']:>12.4f}")
    speedup = fp32["fit_seconds_this_launch"] / bf16["fit_seconds_this_launch"]
    print(f"bf16 speed-up {speedup:.2f}x; train-loss gap per update: max {gap.max():.4f} (update {gap.argmax() + 1}), "
          f"mean {gap.mean():.4f}; over 10-update means: max {smoothed.max():.4f}; "
          f"val loss gap {abs(bf16['val_mlm_loss'] - fp32['val_mlm_loss']):.4f}")


if __name__ == "__main__":
    main()
