"""Run `harness.train.pretrain` in this process, recording the examples each rank trains on. Started by
tests/test_distributed.py under torchrun (2 processes) and as a plain process (1).

    python tests/distributed_run.py RESULTS RECORD_DIR [--exit-at-step N] --set key=value ...

RECORD_DIR/rank<R>.jsonl gets one line per micro-batch: {"step", "examples"}. --exit-at-step N ends every process
abruptly (os._exit) when update N starts: a crash between checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pytorch_lightning.callbacks import Callback

from harness.config import load_config
from harness.train import pretrain


class RecordExamples(Callback):
    def __init__(self, record_dir: Path, exit_at: int | None) -> None:
        self.record_dir, self.exit_at = record_dir, exit_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.exit_at is not None and trainer.global_step == self.exit_at:
            os._exit(3)
        line = {"step": trainer.global_step, "examples": batch["example_index"].tolist()}
        with open(self.record_dir / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("record_dir", type=Path)
    parser.add_argument("--exit-at-step", type=int)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    args.record_dir.mkdir(parents=True, exist_ok=True)
    config = load_config(None, args.overrides, preset="tiny")
    metrics = pretrain(config, data_dir=os.environ["HARNESS_DATA_DIR"], results_root=args.results,
                       extra_callbacks=[RecordExamples(args.record_dir, args.exit_at_step)])
    print(json.dumps({"rank_metrics": bool(metrics)}))
    sys.exit(0)


if __name__ == "__main__":
    main()
