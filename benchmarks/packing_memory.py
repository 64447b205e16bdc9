"""Peak memory and time of packing one split, from the tokenized corpus on disk to the examples folder.

Builds (or finds) the corpus of a JSON Lines file through the real path (`build_corpus`), then packs its training
split in a child process, so the figure is packing's alone and not what building the corpus left behind:

  peak_rss_mb   the child's peak resident set (ru_maxrss), memory-mapped file pages included
  peak_anon_mb  the child's peak anonymous memory (RssAnon, sampled every 10 ms): what packing holds itself
  base_anon_mb  anonymous memory before packing starts (libraries and the opened corpus)
  seconds       wall time of build_packed into a fresh folder

`--replicate N` writes the file N times over (documents renamed) to a scratch folder first, to show how memory grows
with the corpus. The segmenter is 'newline' (pysbd would take an hour on 16 x Reuters; packing does not care).

Usage: python benchmarks/packing_memory.py corpora/reuters.jsonl --replicate 16 --cache-dir /tmp/pk/cache
           [--packing segment_pair --nsp --dupe-factor 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def replicated(source: Path, times: int, folder: Path) -> Path:
    if times == 1:
        return source
    target = folder / f"{source.stem}-x{times}.jsonl"
    if not target.exists():
        lines = source.read_text(encoding="utf-8").splitlines()
        with target.open("w", encoding="utf-8") as out:
            for k in range(times):
                for line in lines:
                    record = json.loads(line)
                    record["id"] = f"{record.get('id')}-{k}"
                    out.write(json.dumps(record) + "\n")
    return target


def config_for(args: argparse.Namespace, path: Path):
    from harness.config import load_config

    return load_config(overrides=["corpus.layout=jsonl", f"corpus.path={path}", "corpus.segmenter=newline",
                                  f"impl.cache_dir={args.cache_dir}"])


def anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def pack(args: argparse.Namespace) -> None:
    from harness.data.corpus import build_corpus
    from harness.data.examples import PackingPlan, build_packed
    from harness.data.specials import SpecialTokens

    corpus = build_corpus(config_for(args, Path(args.path)))
    assert corpus.from_cache, "build the corpus first (the parent process does)"
    specials = SpecialTokens.from_tokenizer(corpus.tokenizer)
    plan = PackingPlan.create(packing=args.packing, max_seq_length=128, nsp=args.nsp, short_seq_prob=0.0, seed=0,
                              static_copies=args.dupe_factor)
    documents = corpus.documents("train")
    base = anon_kb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], anon_kb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        start = time.perf_counter()
        packed = build_packed(documents, plan, specials, Path(tmp) / "examples", "bench")
        seconds = time.perf_counter() - start
        rows = len(packed)
    done.set()
    thread.join()
    print(json.dumps({"packing": args.packing, "nsp": args.nsp, "copies": plan.copies, "documents": len(documents),
                      "rows": rows, "seconds": round(seconds, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "peak_anon_mb": round(peak[0] / 1024, 1), "base_anon_mb": round(base / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a JSON Lines corpus (relative paths: under HARNESS_DATA_DIR)")
    parser.add_argument("--replicate", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--packing", default="full_sentences")
    parser.add_argument("--nsp", action="store_true")
    parser.add_argument("--dupe-factor", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return pack(args)
    from harness.data.corpus import build_corpus

    source = args.path if args.path.is_absolute() else Path(os.environ.get("HARNESS_DATA_DIR", ".")) / args.path
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = replicated(source, args.replicate, args.cache_dir)
    build_corpus(config_for(args, path))
    child = [sys.executable, __file__, str(path), "--cache-dir", str(args.cache_dir), "--packing", args.packing,
             "--dupe-factor", str(args.dupe_factor), "--child", *(["--nsp"] if args.nsp else [])]
    subprocess.run(child, check=True)


if __name__ == "__main__":
    main()
