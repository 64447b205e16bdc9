"""Data preparation at growing corpus sizes, through the real commands: MB/s and peak memory per stage.

A shipped corpus (Reuters-21578 by default) is written 1x, 4x, 16x and 64x over (documents renamed, so nothing is
deduplicated), and each size is prepared cold, in a fresh cache, by the commands a user runs:

    tokenizer   `harness tokenizer`     read the documents, train the tokenizer (on all of them, or on its sample:
                                        tokenizer.train_sample_mb)
    corpus      `harness corpus`        segment into sentences and tokenize (the tokenizer comes from the cache)
    packing     `harness inspect-data`  pack the training split into the example store, then write one batch

Each stage is its own process. Its figures: wall seconds, MB of corpus text per second (the UTF-8 size of the file),
that rate per core used (`impl.num_proc`), and the peak memory of the stage's process tree: the largest sum of the
processes' anonymous memory (RssAnon: what they hold themselves, not the memory-mapped Arrow and .npy files the
kernel can drop), sampled every 50 ms, beside the largest single resident set (ru_maxrss, mapped files included).
Then a projection to a corpus of --project-gb on --project-cores from the largest size measured: the stages that
run on all cores (segmenting and tokenizing: datasets.map over num_proc processes) scaled by cores, the tokenizer
trained on its sample (a fixed cost past tokenizer.train_sample_mb), packing in one process.

Usage: python benchmarks/data_scale.py [--sizes 1,4,16,64] [--segmenter sentencex] [--num-proc 2]
           [--packing full_sentences] [--work /tmp/data_scale] [--project-gb 16 --project-cores 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.machine import usable_cores

REPO = Path(__file__).resolve().parents[1]


def tree_anon_mb(pid: int) -> float:
    """Anonymous memory of a process and all its descendants (MB)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_stage(command: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run one command; its wall time, the peak anonymous memory of its process tree and its largest RSS."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak = 0.0
        while True:  # reaped here, not by Popen, so that wait4 gives the child's own resource usage
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_anon_mb(process.pid))
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed with status {process.returncode}; its output: {log}")
    largest = usage.ru_maxrss / 1024
    return {"seconds": seconds, "peak_anon_mb": peak, "max_rss_mb": largest}


def replicate(source: Path, times: int, folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from packing_memory import replicated  # the same renamed copies as the packing benchmark

    return replicated(source, times, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data"))
    parser.add_argument("--corpus", default="corpora/reuters.jsonl", help="a JSON Lines corpus under --data-dir")
    parser.add_argument("--sizes", default="1,4,16,64", help="how many times over the corpus is written")
    parser.add_argument("--segmenter", default="sentencex", choices=("pysbd", "sentencex", "newline"))
    parser.add_argument("--num-proc", type=int, default=usable_cores())
    parser.add_argument("--packing", default="full_sentences")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--work", type=Path, default=Path("/tmp/data_scale"))
    parser.add_argument("--project-gb", type=float, default=16.0)
    parser.add_argument("--project-cores", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "benchmarks"))
    from blimp import machine_line  # the CPU line every benchmark prints (model, cores, flags, load)

    args.work.mkdir(parents=True, exist_ok=True)
    harness = str(Path(sys.executable).with_name("harness"))
    env = {**os.environ, "HARNESS_DATA_DIR": str(args.data_dir), "WANDB_MODE": "offline"}
    print(f"machine: {machine_line()}")
    print(f"corpus {args.corpus} x {args.sizes}; segmenter {args.segmenter}; num_proc {args.num_proc}; packing "
          f"{args.packing}; vocabulary {args.vocab_size}")
    header = (f"{'size':>5}{'MB':>9}{'documents':>11} | {'stage':<10}{'s':>9}{'MB/s':>8}{'MB/s/core':>10}"
              f"{'peak anon MB':>13}{'max RSS MB':>11}")
    print(header)
    print("-" * len(header))
    rows: list[dict[str, Any]] = []
    for times in (int(x) for x in args.sizes.split(",")):
        path = replicate(args.data_dir / args.corpus, times, args.work)
        megabytes = path.stat().st_size / 1e6
        with path.open("rb") as handle:
            documents = sum(1 for _ in handle)
        cache = args.work / f"cache-x{times}"
        shutil.rmtree(cache, ignore_errors=True)
        settings = ["--set", "corpus.layout=jsonl", "--set", f"corpus.path={path}", "--set",
                    f"corpus.segmenter={args.segmenter}", "--set", f"impl.num_proc={args.num_proc}", "--set",
                    f"impl.cache_dir={cache}", "--set", f"tokenizer.vocab_size={args.vocab_size}", "--set",
                    f"data.packing={args.packing}", "--set", "data.nsp=false"]
        stages = {
            "tokenizer": [harness, "tokenizer", *settings],
            "corpus": [harness, "corpus", *settings],
            "packing": [harness, "inspect-data", *settings, "--batches", "1", "--out",
                        str(args.work / f"batches-x{times}.jsonl")],
        }
        for stage, command in stages.items():
            figures = run_stage(command, env, args.work / f"x{times}-{stage}.log")
            cores = args.num_proc if stage == "corpus" else 1
            row = {"times": times, "megabytes": round(megabytes, 1), "documents": documents, "stage": stage,
                   "seconds": round(figures["seconds"], 2), "mb_per_s": round(megabytes / figures["seconds"], 3),
                   "cores": cores, "peak_anon_mb": round(figures["peak_anon_mb"], 1),
                   "max_rss_mb": round(figures["max_rss_mb"], 1)}
            rows.append(row)
            print(f"{times:>4}x{megabytes:>9.1f}{documents:>11,} | {stage:<10}{row['seconds']:>9.1f}"
                  f"{row['mb_per_s']:>8.2f}{row['mb_per_s'] / cores:>10.2f}{row['peak_anon_mb']:>13.0f}"
                  f"{row['max_rss_mb']:>11.0f}", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    largest = max(row["times"] for row in rows)
    last = {row["stage"]: row for row in rows if row["times"] == largest}
    target = args.project_gb * 1000
    print(f"\nprojection to {args.project_gb:g} GB of text on {args.project_cores} cores, from the {largest}x "
          f"measurement ({last['corpus']['megabytes']:.0f} MB; linear in size; segmenting and tokenizing scale "
          f"with cores, packing runs in one process, the tokenizer trains on at most its sample):")
    projected: dict[str, float] = {}
    for stage, row in last.items():
        rate = row["mb_per_s"] / row["cores"] * (args.project_cores if stage == "corpus" else 1)
        size = target if stage != "tokenizer" else min(target, 1024.0)  # tokenizer.train_sample_mb default
        projected[stage] = size / rate / 3600
        print(f"  {stage:<10}{projected[stage]:>7.2f} h   (at {rate:.2f} MB/s)")
    print(f"  {'total':<10}{sum(projected.values()):>7.2f} h; memory: packing's anonymous memory grew "
          + " -> ".join(f"{row['peak_anon_mb']:.0f}" for row in rows if row["stage"] == "packing") + " MB over "
          + " -> ".join(f"{row['megabytes']:.0f}" for row in rows if row["stage"] == "packing") + " MB of text")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "rows": rows, "projection_hours": projected},
                                        indent=2))


if __name__ == "__main__":
    main()
