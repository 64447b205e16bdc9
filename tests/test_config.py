"""The run config: YAML round trip, run id, presets, and every validation error as one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from harness.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    dump_yaml,
    from_dict,
    load_config,
    read_yaml,
    write_yaml,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("with_help", [False, True])
def test_yaml_round_trip_is_exact(preset, with_help, tmp_path):
    config = load_config(preset=preset, overrides=["data.packing=segment_pair", "data.nsp=true",
                                                   "model.family=bert", "optim.eps=1e-8"])
    text = dump_yaml(config, with_help=with_help)
    again = from_dict(yaml.safe_load(text))
    assert again == config
    assert again.run_id() == config.run_id()
    write_yaml(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_help_comments_cover_every_field():
    text = dump_yaml(RunConfig(), with_help=True)
    leaves = [line for line in text.splitlines() if ":" in line and not line.rstrip().endswith(":")]
    missing = [line for line in leaves if "  # " not in line]
    assert not missing, missing


def test_run_id_hashes_only_outcome_fields():
    base = RunConfig()
    speed_only = load_config(overrides=["impl.num_workers=4", "impl.precision=bf16-mixed", "logging.wandb=false",
                                        "impl.micro_batch_size=8", "experiment=other", "name=x"])
    assert speed_only.run_id() == base.run_id()
    for override in ["seed=1", "data.masking=static", "tokenizer.vocab_size=4096", "optim.batch_size=64",
                     "corpus.max_documents=3", "budget.max_steps=10", "model.size=mini"]:
        assert load_config(overrides=[override]).run_id() != base.run_id(), override


def test_derived_gradient_accumulation():
    config = load_config(overrides=["optim.batch_size=256", "impl.micro_batch_size=16", "impl.devices=2"])
    assert config.grad_accumulation() == 8
    assert RunConfig().grad_accumulation() == 1


def test_overrides_parse_yaml_scalars_and_float_spellings(tmp_path):
    config = load_config(overrides=["optim.peak_lr=1e-4", "data.nsp=false", "optim.betas=[0.9, 0.999]"])
    assert config.optim.peak_lr == pytest.approx(1e-4)
    assert config.optim.betas == (0.9, 0.999)
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  peak_lr: 7e-4\n")  # YAML 1.1 reads this as a string; we accept it
    assert load_config(path).optim.peak_lr == pytest.approx(7e-4)


def test_file_then_overrides_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  packing: doc_sentences\n  max_seq_length: 64\n")
    config = load_config(path, ["data.max_seq_length=32"], preset="mini")
    assert (config.data.packing, config.data.max_seq_length, config.model.size) == ("doc_sentences", 32, "mini")


BAD = [
    (["data.mask_prob=1.5"], ["data.mask_prob", "1.5", "less than 1"]),
    (["data.mask_prob=0"], ["data.mask_prob", "greater than 0"]),
    (["optim.batch_size=-3"], ["optim.batch_size", "-3", "greater than or equal to 1"]),
    (["data.packing=segments"], ["data.packing", "'segments'", "'segment_pair'", "'doc_sentences'"]),
    (["data.typo=1"], ["unknown config field 'data.typo'"]),
    (["bogus=1"], ["unknown config field 'bogus'"]),
    (["optim.batch_size=abc"], ["optim.batch_size", "'abc'", "integer"]),
    (["data.nsp=maybe"], ["data.nsp", "boolean"]),
    (["data.dupe_factor=0"], ["data.dupe_factor", "an integer >= 1 or 'auto'"]),
    (["data.nsp=true"], ["data.nsp", "full_sentences", "segment_pair or sentence_pair"]),
    (["data.nsp=true", "data.packing=segment_pair"], ["model.family", "roberta", "NSP head"]),
    (["data.max_seq_length=4", "data.packing=segment_pair"], ["data.max_seq_length = 4", ">= 6"]),
    (["data.mask_token_fraction=0.95"], ["mask_token_fraction", "at most 1"]),
    (["optim.betas=[0.9, 1.5]"], ["optim.betas", "[0, 1)"]),
    (["budget.max_tokens=100"], ["budget.max_steps", "budget.max_tokens"]),
    (["impl.micro_batch_size=5"], ["impl.micro_batch_size", "optim.batch_size = 32"]),
    (["corpus.hub=Salesforce/wikitext"], ["corpus.path", "corpus.hub"]),
    (["corpus.path=null", "corpus.hub=x", "corpus.layout=text_dir"], ["text_dir"]),
    (["model.size=huge"], ["model.size", "'tiny'", "'large'"]),
    (["tokenizer.kind=sentencepiece"], ["tokenizer.kind", "'bpe'", "'wordpiece'"]),
    (["noequals"], ["dotted.key=value"]),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_fail_with_one_line_naming_field(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  packing: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: not valid YAML"):
        read_yaml(broken)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"data:\n  packing: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(binary)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(preset="huge")


def test_config_is_frozen():
    """Every section and the root refuse assignment: a config never changes after validation (the run id of a
    mutated config would name other settings than the run used)."""
    config = RunConfig()
    with pytest.raises(ValidationError, match="Instance is frozen") as err:
        config.data.mask_prob = 0.2  # type: ignore[misc]
    assert [(e["type"], e["loc"]) for e in err.value.errors()] == [("frozen_instance", ("mask_prob",))]
    with pytest.raises(ValidationError, match="Instance is frozen"):
        config.seed = 3  # type: ignore[misc]
    assert config.data.mask_prob == 0.15 and config.seed == 0


# ---- the shipped run configs against the shared data ------------------------------------------------------------
RUN_CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))


def shipped_checksums(shared_data: Path) -> dict[str, str]:
    """SHA256SUMS of the shared data: relative path -> SHA-256 (hex)."""
    lines = (shared_data / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    return {name.removeprefix("./"): digest for digest, name in (line.split(maxsplit=1) for line in lines)}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_run_config_finds_its_data(path, shared_data):
    """Each experiments/configs/*.yaml (a grid's base config) names a corpus that is in the shared data, byte for
    byte the shipped file (its SHA-256 in SHA256SUMS), in the layout the config declares."""
    from harness.data.documents import source_identity
    from harness.data.readers import read_lines, split_wikitext_articles
    from harness.paths import resolve_data_path

    config = load_config(path)
    corpus = config.corpus
    assert corpus.hub is None and corpus.path and not Path(corpus.path).is_absolute(), corpus
    identity = source_identity(corpus, shared_data, corpus.encoding_errors)  # resolves the path, checks the layout
    [(_, size, digest)] = identity["files"]
    assert shipped_checksums(shared_data)[corpus.path][:16] == digest and size > 0, (corpus.path, digest)
    if corpus.layout == "wikitext":
        file = resolve_data_path(corpus.path, shared_data)
        articles = split_wikitext_articles(read_lines(file, corpus.encoding_errors))
        title, text = next(articles)
        assert title and text.strip(), (title, text[:80])
    assert config.tokenizer.path is None  # a saved tokenizer would be a second data path to check here
