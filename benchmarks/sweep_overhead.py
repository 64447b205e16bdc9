"""The sweep's overhead per already-finished job: `harness sweep` on a grid of 50 finished jobs (10 pre-training runs,
40 fine-tuning trials) does no training, only validation, planning, status checks and the table. Target: well
under 1 second per job.

    python benchmarks/sweep_overhead.py --data-dir ../shared/data [--rounds 3]

The finished jobs are made through the run-record protocol (harness.runs) with tiny stand-in models, so the
fine-tuning trials' directories (which hash the model's weights) are found exactly as after a real sweep.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.runs import prepare_run_dir, write_final_metrics
from harness.study import load_grid, sweep
from harness.study.jobs import expand

GRID = {"name": "overhead", "base": {"preset": "tiny", "recipe": "roberta"},
        "scientific": {"arms": {f"arm{i}": {"optim.warmup_fraction": 0.01 * (i + 1)} for i in range(5)}},
        "nuisance": {"finetune.learning_rate": [1e-4, 2e-4]}, "seeds": {"pretrain": [0, 1], "finetune": [0, 1]},
        "tasks": {"sst2": {}}}


def finish_every_job(grid: Path, results: Path, data_dir: Path) -> int:
    plan = expand(load_grid(grid, data_dir=data_dir), results)
    for job in plan.pretrain:
        run = prepare_run_dir(job.run.config, results)
        (run.path / "model").mkdir()
        (run.path / "model" / "config.json").write_text(json.dumps({"run": job.run.label}))
        (run.path / "model" / "model.safetensors").write_bytes(os.urandom(4 << 20))  # a tiny model's weights
        write_final_metrics(run, {"steps": 200, "tokens_seen": 800_000, "fit_seconds_this_launch": 60.0,
                                  "common_val_bpc": 3.0, "model_dir": "model"})
    for job in plan.finetune:
        write_final_metrics(plan.path(job), {"score": 80.0 + job.seed, "wall_s": 30.0, "dev": {}})
    return len(plan.jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HARNESS_DATA_DIR", "../shared/data")))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "overhead.yaml"
        grid.write_text(yaml.safe_dump(GRID))
        jobs = finish_every_job(grid, Path(tmp) / "results", args.data_dir)
        timings = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            result = sweep(grid, results=Path(tmp) / "results", data_dir=args.data_dir, out=io.StringIO())
            timings.append(time.perf_counter() - started)
            assert result.ran == [] and result.exit_status == 0 and len(result.table) == 5
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(grid), "--results", f"{tmp}/results",
                        "--data-dir", str(args.data_dir)], check=True, capture_output=True)
        cold = time.perf_counter() - started
    best, median = min(timings), statistics.median(timings)
    print(f"sweep() over {jobs} finished jobs: median {median:.2f} s, best {best:.2f} s "
          f"({1000 * median / jobs:.0f} ms per job)")
    print(f"`harness sweep` in a fresh process (Python and library imports included): {cold:.2f} s "
          f"({1000 * cold / jobs:.0f} ms per job)")


if __name__ == "__main__":
    main()
