"""`harness inspect-data`: the exact batches the model receives, as JSON lines, a decoded view and statistics.

The statistics are computed from batches alone (plus the packed rows they came from), so the same functions
serve researchers looking at their data and the tests that prove each recipe rule.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import RunConfig
from harness.data.masking import IGNORE_INDEX
from harness.data.module import PretrainDataModule
from harness.data.specials import SpecialTokens
from harness.recipe import build_datamodule, resolve_recipe

RECORD_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def iter_batches(data: PretrainDataModule, batches: int, epochs: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """The first `batches` training micro-batches that start in each of the first `epochs` passes over the data,
    exactly as training would see them (a micro-batch may run on into the next pass)."""
    loader = data.train_dataloader()
    sampler = loader.batch_sampler
    for epoch in range(epochs):
        sampler.start = sampler.first_batch_of_epoch(epoch)
        sampler.num_batches = max(sampler.num_batches, sampler.start + batches)  # beyond the run's budget if asked
        for batch in islice(loader, batches):
            yield epoch, batch


def batch_records(epoch: int, batch: dict[str, torch.Tensor]) -> Iterator[dict[str, Any]]:
    """One JSON-ready record per example, padding stripped."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    for i, length in enumerate(lengths):
        record: dict[str, Any] = {"epoch": epoch, "example_index": int(batch["example_index"][i]),
                                  "mask_key": int(batch["mask_epoch"][i])}
        for field in RECORD_FIELDS:
            if field in batch:
                record[field] = batch[field][i, :length].tolist()
        if "next_sentence_label" in batch:
            record["next_sentence_label"] = int(batch["next_sentence_label"][i])
        yield record


def mask_statistics(records: Iterable[dict[str, Any]], specials: SpecialTokens, max_seq_length: int) -> dict[str, Any]:
    """Mask rate over non-special tokens, the mask/random/kept split, NSP balance, lengths, padding."""
    special = np.zeros(specials.vocab_size, dtype=bool)
    special[list(specials.all_ids)] = True
    counts: Counter[str] = Counter()
    lengths: list[int] = []
    nsp: Counter[int] = Counter()
    for record in records:
        ids, labels = np.asarray(record["input_ids"]), np.asarray(record["labels"])
        chosen = labels != IGNORE_INDEX
        originals = labels[chosen]
        counts["examples"] += 1
        counts["candidates"] += int((~special[np.where(chosen, labels, ids)]).sum())
        counts["chosen"] += int(chosen.sum())
        counts["chosen_special"] += int(special[originals].sum())
        counts["as_mask"] += int((ids[chosen] == specials.mask_id).sum())
        counts["kept"] += int((ids[chosen] == originals).sum())
        replaced = chosen & (ids != specials.mask_id) & (ids != labels)
        counts["as_random"] += int(replaced.sum())
        counts["random_is_special"] += int(special[ids[replaced]].sum())
        lengths.append(len(ids))
        if "next_sentence_label" in record:
            nsp[record["next_sentence_label"]] += 1
    chosen = max(counts["chosen"], 1)
    length_array = np.asarray(lengths)
    stats: dict[str, Any] = {
        "examples": counts["examples"],
        "mask_rate": counts["chosen"] / max(counts["candidates"], 1),
        "mask_split": {"mask": counts["as_mask"] / chosen, "random": counts["as_random"] / chosen,
                       "kept": counts["kept"] / chosen},
        "special_tokens_chosen": counts["chosen_special"],
        "special_tokens_as_replacement": counts["random_is_special"],
        "length": {"mean": float(length_array.mean()) if lengths else 0.0,
                   "max": int(length_array.max()) if lengths else 0,
                   "over_max_seq_length": int((length_array > max_seq_length).sum()),
                   "histogram": _histogram(length_array, max_seq_length)},
        "padding_fraction_at_max_length": 1 - float(length_array.sum()) / max(len(lengths) * max_seq_length, 1),
    }
    if nsp:
        stats["nsp"] = {"is_next": nsp[0], "random": nsp[1], "random_fraction": nsp[1] / max(sum(nsp.values()), 1)}
    return stats


def _histogram(lengths: np.ndarray, max_seq_length: int, bins: int = 8) -> dict[str, int]:
    edges = np.linspace(0, max_seq_length, bins + 1).astype(int)
    counts, _ = np.histogram(lengths, bins=edges)
    return {f"{edges[i] + 1}-{edges[i + 1]}": int(c) for i, c in enumerate(counts)}


def boundary_statistics(data: PretrainDataModule) -> dict[str, Any]:
    """How many training inputs draw on more than one document (full_sentences may; doc_sentences never)."""
    packed = data.train_examples.packed
    boundaries = np.asarray(packed.boundaries)
    return {"inputs": len(packed), "inputs_crossing_documents": int((boundaries > 0).sum()),
            "document_boundaries_crossed": int(boundaries.sum())}


def render_example(record: dict[str, Any], tokenizer: Any, mask_id: int) -> str:
    """Decoded tokens; a chosen position shows as [original] when masked, [original->replacement] when replaced
    by a random token and [=original] when kept. A '|' marks the segment A/B boundary."""
    pieces = []
    types = record.get("token_type_ids")
    for pos, (token, label) in enumerate(zip(record["input_ids"], record["labels"], strict=True)):
        if types and pos and types[pos] != types[pos - 1]:
            pieces.append("|")
        shown = tokenizer.convert_ids_to_tokens(token)
        if label == IGNORE_INDEX:
            pieces.append(shown)
            continue
        original = tokenizer.convert_ids_to_tokens(label)
        pieces.append(f"[{original}]" if token == mask_id else f"[={original}]" if token == label
                      else f"[{original}->{shown}]")
    return " ".join(pieces)


def inspect_data(config: RunConfig, *, batches: int, out: Path, epochs: int = 1, data_dir: str | Path | None = None,
                 show: int = 3) -> dict[str, Any]:
    """Write the batches as JSON lines to `out`, print a decoded view of `show` examples, return statistics."""
    data = build_datamodule(config, resolve_recipe(config), data_dir)
    data.prepare_data()
    data.setup("fit")
    records: list[dict[str, Any]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for epoch, batch in iter_batches(data, batches, epochs):
            for record in batch_records(epoch, batch):
                handle.write(json.dumps(record) + "\n")
                records.append(record)
    for record in records[:show]:
        nsp = f" nsp={record['next_sentence_label']}" if "next_sentence_label" in record else ""
        print(f"--- epoch {record['epoch']} example {record['example_index']}{nsp}")
        print(render_example(record, data.tokenizer, data.specials.mask_id))
    stats = mask_statistics(records, data.specials, config.data.max_seq_length)
    stats["documents"] = boundary_statistics(data)
    stats["padded_tokens_per_batch"] = config.data.max_seq_length * data.micro_batch_size
    return stats
