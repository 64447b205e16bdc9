"""Corpus build cost: segment + tokenize each shared corpus cold (fresh cache), again after a vocabulary change
(segments cached, tokenizer retrained, sentences re-tokenized), and warm (everything cached).

    cold s     documents -> tokenizer training -> pysbd segmentation -> tokenization -> cache
    re-tok s   the same with another vocabulary size: segmentation comes from the cache
    warm s     a second identical build: loads the cached tokenizer and corpus

Usage: python benchmarks/corpus.py [--data-dir ../shared/data] [--num-proc 2] [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.config import from_dict  # noqa: E402
from harness.data.corpus import build_corpus  # noqa: E402

CORPORA = {
    "wikitext-2 valid": {"layout": "wikitext", "path": "corpora/wikitext-2-raw/wiki.valid.raw"},
    "reuters": {"layout": "jsonl", "path": "corpora/reuters.jsonl"},
    # Two Gutenberg books carry a few stray Latin-1 bytes; replace them rather than stop.
    "gutenberg": {"layout": "text_dir", "path": "corpora/gutenberg", "encoding_errors": "replace"},
}


def _timed_build(corpus: dict[str, Any], vocab_size: int, num_proc: int, cache: Path, data_dir: Path
                 ) -> tuple[float, dict[str, Any]]:
    config = from_dict({"corpus": corpus, "tokenizer": {"vocab_size": vocab_size},
                        "impl": {"num_proc": num_proc, "cache_dir": str(cache)}})
    start = time.perf_counter()
    built = build_corpus(config, data_dir)
    return time.perf_counter() - start, built.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data"))
    parser.add_argument("--num-proc", type=int, default=2, help="processes for datasets.map")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    print(f"num_proc={args.num_proc}  vocab_size={args.vocab_size}  cpus={os.cpu_count()}  "
          f"load average (1 min) at start={os.getloadavg()[0]:.1f}  data={args.data_dir}")
    header = (f"{'corpus':<18}{'documents':>10}{'sentences':>11}{'tokens':>12}{'cold s':>9}{'re-tok s':>10}"
              f"{'warm s':>9}{'tokens/s cold':>15}")
    print(header)
    print("-" * len(header))
    for name in args.corpora:
        with tempfile.TemporaryDirectory(prefix="corpus-bench-") as cache:
            cold, stats = _timed_build(CORPORA[name], args.vocab_size, args.num_proc, Path(cache), args.data_dir)
            retok, _ = _timed_build(CORPORA[name], args.vocab_size // 2, args.num_proc, Path(cache), args.data_dir)
            warm, again = _timed_build(CORPORA[name], args.vocab_size, args.num_proc, Path(cache), args.data_dir)
            assert again["loaded_from_cache"] and again["train"] == stats["train"]
        splits = (stats["train"], stats["validation"])
        documents, sentences, tokens = (sum(s[key] for s in splits) for key in ("documents", "sentences", "tokens"))
        print(f"{name:<18}{documents:>10,}{sentences:>11,}{tokens:>12,}{cold:>9.1f}{retok:>10.1f}{warm:>9.2f}"
              f"{tokens / cold:>15,.0f}", flush=True)


if __name__ == "__main__":
    main()
