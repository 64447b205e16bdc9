"""Sentence segmenters on the pipeline's paragraphs: speed, and agreement with pysbd (corpus.segmenter's default until
sentencex replaced it).

    python benchmarks/segmenters.py [--data-dir ../shared/data] [--corpus corpora/reuters.jsonl] [--max-documents 300]
        [--layout jsonl | wikitext]

The documents of a corpus (jsonl by default; --layout wikitext for corpora/wikitext-2-raw/wiki.valid.raw) are
read by the harness's loader and cut into paragraphs as the corpus build does (harness.data.segment.split_paragraphs:
blank lines separate paragraphs, hard wraps become spaces); each segmenter then splits every paragraph, one process,
one thread:
- pysbd and sentencex through the functions the corpus build calls (harness.data.segment);
- blingfire (`text_to_sentences`, not a corpus.segmenter option) only when the package is installed.

    MB/s        UTF-8 megabytes (10^6 bytes) of paragraph text per wall-clock second, and per CPU-second of this
                process (the steadier figure on a machine shared with other jobs); the fastest of repeated passes
                over the paragraphs for a segmenter whose pass takes under a second
    x pysbd     wall-clock speed against pysbd's
    P, R, F1    sentence ends (character offsets in the paragraph) against pysbd's: precision = share of the
                segmenter's ends that pysbd also has, recall = share of pysbd's ends the segmenter also finds.
                "inside" counts only ends inside a paragraph: a paragraph's end is an end for every segmenter, so
                "all" (which counts them) is the higher figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.config import CorpusConfig  # noqa: E402
from harness.data.documents import load_documents  # noqa: E402
from harness.data.segment import segment_paragraph, segment_paragraph_sentencex, split_paragraphs  # noqa: E402

Ends = set[tuple[int, int]]  # (paragraph index, character offset just past a sentence's last character)


Split = Callable[[str], list[str]]


def segmenters() -> dict[str, Split]:
    found: dict[str, Split] = {"pysbd": segment_paragraph, "sentencex": segment_paragraph_sentencex}
    try:
        import blingfire
    except ImportError:
        return found
    found["blingfire"] = lambda p: [s.strip() for s in blingfire.text_to_sentences(p).split("\n") if s.strip()]
    return found


def paragraphs_of(data_dir: Path, corpus: str, max_documents: int | None, layout: str = "jsonl"
                  ) -> tuple[list[str], int]:
    config = CorpusConfig(layout=layout, path=corpus, max_documents=max_documents, validation_fraction=0.0)
    with tempfile.TemporaryDirectory(prefix="segmenters-") as work:
        docs = load_documents(config, data_dir, Path(work), "strict")
        texts = list(docs["text"])
    return [p for text in texts for p in split_paragraphs(text)], len(texts)


def sentence_ends(paragraphs: list[str], sentences: list[list[str]]) -> tuple[Ends, Ends, int]:
    """(all ends, ends inside a paragraph, sentences not found verbatim in their paragraph: left out)."""
    ends: Ends = set()
    inside: Ends = set()
    lost = 0
    for index, (paragraph, parts) in enumerate(zip(paragraphs, sentences, strict=True)):
        position = 0
        for sentence in parts:
            start = paragraph.find(sentence, position)
            if start < 0:
                lost += 1
                continue
            position = start + len(sentence)
            ends.add((index, position))
            if paragraph[position:].strip():
                inside.add((index, position))
    return ends, inside, lost


def timed(split: Split, paragraphs: list[str], least_s: float = 1.0) -> tuple[list[list[str]], float, float]:
    """The sentences of every paragraph, and the wall-clock and CPU seconds of the fastest pass: fast segmenters
    are repeated until `least_s` has passed, so that a pass of a few milliseconds is not one noisy sample."""
    split("Warm up. Build what is built once.")
    passes: list[tuple[float, float]] = []
    started = time.perf_counter()
    while not passes or (time.perf_counter() - started < least_s and len(passes) < 100):
        wall, cpu = time.perf_counter(), time.process_time()
        sentences = [split(p) for p in paragraphs]
        passes.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = min(passes)
    return sentences, wall, cpu


def agreement(found: Ends, reference: Ends) -> tuple[float, float, float]:
    both = len(found & reference)
    precision, recall = both / max(len(found), 1), both / max(len(reference), 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data"))
    parser.add_argument("--corpus", default="corpora/reuters.jsonl", help="corpus file, relative to --data-dir")
    parser.add_argument("--layout", choices=("jsonl", "wikitext"), default="jsonl")
    parser.add_argument("--max-documents", type=int, default=None, help="the first N documents; default all")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "benchmarks"))
    from blimp import machine_line  # the CPU line every benchmark prints (model, cores, flags, load)

    paragraphs, documents = paragraphs_of(args.data_dir, args.corpus, args.max_documents, args.layout)
    megabytes = sum(len(p.encode("utf-8")) for p in paragraphs) / 1e6
    print(f"{args.corpus}: {documents:,} documents, {len(paragraphs):,} paragraphs, {megabytes:.2f} MB")
    print(f"machine: {machine_line()}")
    header = (f"{'segmenter':<11}{'sentences':>10}{'s':>8}{'MB/s':>9}{'MB/CPU-s':>10}{'x pysbd':>9}"
              f"{'P all':>8}{'R all':>7}{'F1 all':>8}{'P inside':>10}{'R inside':>10}{'F1 inside':>11}")
    print(header)
    print("-" * len(header))
    reference: tuple[Ends, Ends, int] | None = None
    pysbd_rate = None
    for name, split in segmenters().items():
        sentences, wall, cpu = timed(split, paragraphs)
        ends, inside, lost = sentence_ends(paragraphs, sentences)
        reference = reference or (ends, inside, lost)
        pysbd_rate = pysbd_rate or megabytes / wall
        scores = (*agreement(ends, reference[0]), *agreement(inside, reference[1]))
        print(f"{name:<11}{sum(map(len, sentences)):>10,}{wall:>8.3f}{megabytes / wall:>9.3f}"
              f"{megabytes / max(cpu, 1e-9):>10.3f}{megabytes / wall / pysbd_rate:>9.0f}"
              + "".join(f"{x:>{w}.3f}" for x, w in zip(scores, (8, 7, 8, 10, 10, 11), strict=True))
              + (f"  ({lost} sentences not found verbatim, left out)" if lost else ""), flush=True)


if __name__ == "__main__":
    main()
