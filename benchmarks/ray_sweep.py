"""Wall-clock time of one small sweep (2 arms pre-trained, each fine-tuned on an SST-2 subset: 4 jobs) run by the
sequential local launcher (--workers 1) and by the Ray launcher with 2 workers on a local Ray instance, each into
a fresh results folder and in its own `harness sweep` process (Python start-up, imports and, for Ray, starting the
Ray instance included: what a user waits for).

    python benchmarks/ray_sweep.py --data-dir ../shared/data [--steps 60]

An untimed warm-up sweep (1 update per run, its own folder) fills the tokenizer, corpus and task caches first, so
neither timed arm pays for them. impl.threads is left to the launcher: 1 worker trains with all the cores, 2
workers with half each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.machine import usable_cores

TINY = {"corpus.path": "corpora/wikitext-2-raw/wiki.valid.raw", "corpus.max_documents": 12,
        "corpus.validation_fraction": 0.25, "tokenizer.vocab_size": 1000, "data.max_seq_length": 64,
        "optim.batch_size": 8, "budget.val_max_examples": 32, "logging.wandb": False, "impl.progress_bar": False}


def grid(steps: int) -> dict:
    return {"name": "ray_bench", "base": {"preset": "tiny", "recipe": "roberta",
                                          "set": {**TINY, "budget.max_steps": steps, "budget.val_every_steps": steps}},
            "scientific": {"arms": {"dynamic": {}, "static": {"data.masking": "static", "data.dupe_factor": 2}}},
            "nuisance": {"finetune.learning_rate": [1e-3]}, "seeds": {"pretrain": [0], "finetune": [0]},
            "finetune": {"train_subsample": 256, "epochs": 1, "max_seq_length": 32, "batch_size": 16},
            "tasks": {"sst2": {}}}


def timed_sweep(grid_file: Path, results: Path, data_dir: Path, *flags: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(grid_file), "--results", str(results),
                           "--data-dir", str(data_dir), *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "ran 4 job(s); 0 failure(s)" not in done.stdout:
        sys.exit(f"sweep {' '.join(flags)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HARNESS_DATA_DIR", "../shared/data")))
    parser.add_argument("--steps", type=int, default=60, help="pre-training updates per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        grid_file = Path(tmp) / "ray_bench.yaml"
        grid_file.write_text(yaml.safe_dump(grid(args.steps), sort_keys=False))
        timed_sweep(grid_file, Path(tmp) / "warm-up", args.data_dir, "--set", "budget.max_steps=1",
                    "--set", "budget.val_every_steps=1")
        local = timed_sweep(grid_file, Path(tmp) / "local", args.data_dir, "--workers", "1")
        on_ray = timed_sweep(grid_file, Path(tmp) / "ray", args.data_dir, "--workers", "2", "--launcher", "ray")
    cores = usable_cores()
    print(f"4 jobs ({args.steps} updates per pre-training run), {cores} cores:")
    print(f"  local launcher, 1 worker:        {local:7.1f} s")
    print(f"  Ray launcher, 2 workers (local): {on_ray:7.1f} s")
    print(f"  speed-up: {local / on_ray:.2f}x")


if __name__ == "__main__":
    main()
