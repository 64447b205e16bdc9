"""The run configuration: one typed, frozen tree that is the schema of every run.

YAML is only how the tree is written down. Every field carries a one-line help text (printed by
`harness config`), types and ranges are checked by pydantic, and the few rules that tie two fields
together live in `RunConfig._check_combinations`. Any violation surfaces as a `ConfigError` whose
message is one line naming the field, the value and what is allowed.

Sections that change the outcome of a run (corpus, tokenizer, data, model, optim, budget, seed) are
hashed into the run id; `impl` (speed only) and `logging` are not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.presets import PRESETS, PUBLISHED_AT_SIZE, RECIPES

PackingMode = Literal["segment_pair", "sentence_pair", "full_sentences", "doc_sentences"]
PAIR_PACKINGS = ("segment_pair", "sentence_pair")
SizePreset = Literal["tiny", "mini", "small", "medium", "base", "large"]
RecipeName = Literal["bert", "bert-reimpl", "roberta"]


class HarnessError(ValueError):
    """An error caused by the user's input (config, data, run directory): the CLI prints its one-line
    message instead of a traceback."""


class ConfigError(HarnessError):
    """A config value that is not allowed; the message is one line meant for the user."""


class ConfigSection(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, defaults validated too."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class CorpusConfig(ConfigSection):
    layout: Literal["wikitext", "jsonl", "text_dir", "parquet"] = Field(
        "wikitext",
        description="wikitext: articles start at ' = Title = ' lines; jsonl: one document per record; "
        "text_dir: one document per file, every file below a folder or every file a glob matches (books/**/*.txt); "
        "parquet: one document per row of the text_field column (doc ids <file>:<row>, rows from 0)",
    )
    path: str | None = Field(
        "corpora/wikitext-2-raw/wiki.valid.raw",
        description="local file, folder (text_dir) or glob (a path with * ? or [, e.g. corpora/shards/*.jsonl; ** "
        "spans folders): absolute, relative to the working dir, or to --data-dir/HARNESS_DATA_DIR. A glob's files "
        "are read in sorted order as one corpus; their doc ids start with each file's path below the pattern's "
        "fixed folder (a plain file's: its name); the cache key covers every file's content, in order",
    )
    hub: str | None = Field(
        None, description="Hugging Face hub dataset instead of path, e.g. Salesforce/wikitext (needs network)"
    )
    hub_config: str | None = Field(None, description="hub dataset configuration, e.g. wikitext-103-raw-v1")
    hub_split: str = Field("train", description="hub dataset split to read")
    hub_streaming: bool = Field(
        False, description="stream the hub split while the corpus is built (load_dataset streaming=True: nothing "
        "downloaded up front; max_documents stops the stream early). A streamed hub dataset is identified in the "
        "cache key by name/config/split/revision (the commit the hub resolves), not by content",
    )
    text_field: str = Field("text", description="record field or column holding the text (jsonl, parquet and hub)")
    encoding_errors: Literal["strict", "replace"] = Field(
        "strict", description="non-UTF-8 bytes in a local file: strict stops with file and line; replace substitutes"
    )
    segmenter: Literal["sentencex", "pysbd", "newline"] = Field(
        "sentencex", description="sentence splitter: sentencex (compiled English rules; the default: about 90 MB/s "
        "per core, 500x pysbd, boundary F1 against pysbd 0.98 on Reuters, 0.97 on WikiText: docs/fidelity.md), "
        "pysbd (rule-based, pure Python, 0.17 MB/s per core; the default of the reference studies' runs) or newline "
        "(one sentence per line)"
    )
    validation_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="fraction of documents held out for validation (at least one if > 0)"
    )
    max_documents: int | None = Field(
        None, ge=1, description="use only the first N documents (smoke runs); null = all"
    )

    @model_validator(mode="after")
    def _one_source(self) -> CorpusConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("set exactly one of corpus.path and corpus.hub")
        if self.hub is not None and self.layout in ("text_dir", "parquet"):
            raise ValueError(f"layout '{self.layout}' reads local files; with corpus.hub use 'wikitext' (rows are "
                             "lines) or 'jsonl' (rows are documents)")
        if self.hub_streaming and self.hub is None:
            raise ValueError("corpus.hub_streaming = true streams a hub dataset: set corpus.hub (and corpus.path: "
                             "null), or hub_streaming: false for a local corpus")
        return self


class TokenizerConfig(ConfigSection):
    kind: Literal["bpe", "wordpiece"] = Field(
        "bpe", description="bpe: byte-level BPE with <s> </s> (RoBERTa); wordpiece: [CLS] [SEP] (BERT)"
    )
    vocab_size: int = Field(8192, ge=300, le=1_000_000, description="vocabulary size (paper: 50K BPE, 30K WordPiece)")
    lowercase: bool = Field(False, description="lowercase text before tokenizing (BERT-uncased style)")
    min_frequency: int = Field(2, ge=1, description="minimum pair/word frequency when training the tokenizer")
    train_sample_mb: float | None = Field(
        1024, gt=0, description="when the training documents hold more than this many MB of text (10^6 bytes of "
        "UTF-8), train the tokenizer on an evenly spaced sample of them (every k-th training document, the same for "
        "every seed) holding about this much; null = always the whole corpus. Users of HF tokenizers and "
        "SentencePiece commonly train on a sample; 1 GB is our choice, taken to give a stable vocabulary at these "
        "vocabulary sizes (not measured here), and it bounds the trainer's time and memory"
    )
    path: str | None = Field(
        None, description="load this saved tokenizer directory instead of training one (kind must match)"
    )


class DataConfig(ConfigSection):
    max_seq_length: int = Field(128, ge=3, le=8192, description="maximum tokens per input, special tokens included")
    packing: PackingMode = Field(
        "full_sentences",
        description="segment_pair | sentence_pair | full_sentences | doc_sentences (paper section 4.2)",
    )
    separators: Literal["document", "fairseq"] = Field(
        "document",
        description="full/doc_sentences: document = one separator between two documents sharing an input (default: "
        "what the paper describes, and the same on every corpus, paragraph breaks or not); fairseq = also </s> "
        "after every paragraph, as fairseq's one-line-per-paragraph files (doc_sentences: no document separator, "
        "as complete_doc skips the empty line)",
    )
    short_seq_prob: float = Field(
        0.0, ge=0.0, le=1.0,
        description="segment_pair only: probability of a shorter random target length (Google 0.1; the paper 0)",
    )
    nsp: bool = Field(False, description="next-sentence prediction: pair packings only; B is random half the time")
    segment_embeddings: bool = Field(
        False, description="feed token_type_ids (segment A=0, B=1) through a 2-row segment embedding"
    )
    masking: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: fresh mask per epoch (RoBERTa); static: dupe_factor fixed copies (BERT)"
    )
    dupe_factor: int | Literal["auto"] = Field(
        10, description="static masking: differently masked copies of the data (Google 10); auto = passes over the "
        "data / 4, so each mask is shown 4 times as in the paper (10 copies over 40 epochs)"
    )
    static_mode: Literal["redraw", "masks_only"] = Field(
        "redraw", description="static copies of pair packings: redraw = each copy re-draws lengths, A/B splits and "
        "NSP negatives (Google); masks_only = one packing, only the masks differ (isolates masking)"
    )
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="fraction of non-special tokens chosen for prediction")
    mask_token_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="of the chosen tokens: replaced by the mask token"
    )
    random_token_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="of the chosen tokens: replaced by a random non-special token"
    )
    mask_count: Literal["fairseq", "google", "bernoulli"] = Field(
        "fairseq",
        description="how many tokens to choose: fairseq int(p*n+U[0,1)); google max(1,round(p*n)); bernoulli per token",
    )
    max_predictions_per_seq: int | None = Field(
        None, ge=1, description="cap on chosen tokens per sequence (Google's max_predictions_per_seq); null = none"
    )
    whole_word_masking: bool = Field(False, description="choose whole words: all pieces of a word or none")

    @field_validator("dupe_factor", mode="before")
    @classmethod
    def _dupe_factor(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError("allowed: an integer >= 1 or 'auto'")
        return value

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.mask_token_fraction + self.random_token_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"data.mask_token_fraction + data.random_token_fraction = "
                f"{self.mask_token_fraction + self.random_token_fraction:g}; allowed: at most 1"
            )
        return self


# Model sizes: (layers, hidden, heads, intermediate). base is the paper's BERT-base.
MODEL_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


class ModelConfig(ConfigSection):
    family: Literal["bert", "roberta"] = Field(
        "roberta", description="transformers model class: bert (BertForPreTraining) or roberta (RobertaForMaskedLM)"
    )
    size: SizePreset = Field("tiny", description="tiny | mini | small | medium | base (paper) | large")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="hidden and attention dropout")
    activation: Literal["gelu", "gelu_tanh"] = Field(
        "gelu", description="feed-forward activation: gelu (exact, erf; fairseq and RoBERTa) or gelu_tanh (the tanh "
        "approximation of Google's BERT modeling.py)"
    )

    @property
    def layers(self) -> int:
        return MODEL_SIZES[self.size][0]

    @property
    def hidden(self) -> int:
        return MODEL_SIZES[self.size][1]

    @property
    def heads(self) -> int:
        return MODEL_SIZES[self.size][2]

    @property
    def intermediate(self) -> int:
        return MODEL_SIZES[self.size][3]


class OptimConfig(ConfigSection):
    peak_lr: float = Field(5e-4, gt=0.0, lt=1.0, description="peak learning rate after warm-up")
    betas: tuple[float, float] = Field((0.9, 0.98), description="Adam betas (paper: 0.999, 0.98 for large batches)")
    eps: float = Field(1e-6, gt=0.0, lt=1.0, description="Adam epsilon")
    weight_decay: float = Field(
        0.01, ge=0.0, lt=1.0, description="decoupled weight decay (biases and LayerNorm only with decay_norm_and_bias)"
    )
    decay_norm_and_bias: bool = Field(
        False, description="also decay biases and LayerNorm weights (fairseq: all parameters; Google exempts them)"
    )
    warmup_fraction: float = Field(0.06, ge=0.0, lt=1.0, description="fraction of the update budget spent warming up")
    schedule: Literal["linear", "constant"] = Field(
        "linear", description="after warm-up: linear decay to 0, or constant"
    )
    batch_size: int = Field(32, ge=1, description="sequences per optimizer update (effective batch)")
    batch_tokens: int | None = Field(
        None, ge=1, description="if set, build each update from this many tokens instead of batch_size sequences"
    )
    group_by_length: bool = Field(
        True, description="with batch_tokens: batch inputs of similar length, the budget counting padded positions "
        "(fairseq's batch_by_size with --max-tokens), so short formats waste little compute on padding; false = "
        "consecutive inputs of the shuffled order up to batch_tokens real tokens; no effect with batch_size"
    )
    clip_grad_norm: float = Field(
        0.0, ge=0.0, description="gradient clipping max norm; 0 = off (RoBERTa, paper Table 9; BERT: 1.0)"
    )

    @model_validator(mode="after")
    def _betas(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas = {list(self.betas)}; allowed: two numbers in [0, 1)")
        return self


class BudgetConfig(ConfigSection):
    max_steps: int | None = Field(200, ge=0, description="optimizer updates to train for (set this or max_tokens); "
                                   "0 = no pre-training: the initialised model is evaluated and exported")
    max_tokens: int | None = Field(None, ge=1, description="input tokens to train on (set this or max_steps)")
    val_every_steps: int = Field(50, ge=1, description="run held-out MLM evaluation every N updates")
    val_max_examples: int | None = Field(
        512, ge=1, description="cap on the run's own-format validation examples; null = all"
    )
    common_val_max_chars: int | None = Field(
        150_000, ge=1, description="common held-out set (same text for every arm): whole held-out documents, in "
        "order, up to this many non-whitespace characters; null = all"
    )

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetConfig:
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ValueError("set exactly one of budget.max_steps and budget.max_tokens")
        return self


class ImplConfig(ConfigSection):
    """Settings that change only speed, never the result: not part of the run id."""

    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward pass per device; updates accumulate to optim.batch_size (with "
        "optim.batch_tokens: about this many full-length inputs' tokens per pass); the update's inputs do not change"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    num_proc: int | None = Field(
        None, ge=1, description="processes for datasets.map when segmenting and tokenizing the corpus (the output is "
        "the same for any value: map keeps row order); null = auto: the usable cores, but at most one per 1,000 "
        "documents, so a corpus under 2,000 documents is prepared in this process (starting a worker costs about "
        "0.2-0.5 s, about what one process takes to segment and tokenize 1,000 documents: below that size it saves "
        "little or nothing, and the tests build many tiny corpora)"
    )
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="Lightning precision; auto = bf16-mixed where bf16 matmuls are fast (GPUs with bf16, CPUs "
        "with AVX512-BF16 or AMX), else 32-true"
    )
    compile: bool = Field(False, description="torch.compile the model")
    fast_dropout: bool = Field(
        True, description="CPU dropout masks from numpy's PCG64 instead of torch's single-threaded generator (same "
        "distribution, 2x faster steps on our CPU; harness/models/dropout.py); no effect on GPUs"
    )
    allocator: Literal["reuse", "system"] = Field(
        "reuse", description="reuse: glibc keeps freed memory for the next tensor (mallopt, as jemalloc does) "
        "instead of unmapping blocks above 32 MiB and page-faulting them back every step; system: glibc's defaults"
    )
    profiler: Literal["simple", "advanced", "pytorch"] | None = Field(
        None, description="Lightning profiler; its report goes to <run dir>/fit-profile.txt; null = off"
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; null = torch default")
    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="Lightning accelerator")
    devices: int = Field(1, ge=1, description="devices (processes) per machine")
    num_nodes: int = Field(1, ge=1, description="machines (SLURM or torchrun launch one process per device on each)")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="Lightning strategy: auto (ddp when devices x num_nodes > 1), ddp (data parallel), fsdp "
        "(sharded data parallel); the "
        "global batch, accumulation and lr schedule stay the config's whatever devices x num_nodes is"
    )
    cache_dir: str | None = Field(
        None, description="cache for tokenizers and tokenized corpora; null = $HARNESS_CACHE_DIR or ~/.cache/harness"
    )
    checkpoint_every_steps: int = Field(50, ge=1, description="save checkpoints/last.ckpt every N updates (resume)")
    progress_bar: bool = Field(True, description="show Lightning's progress bar")


class LoggingConfig(ConfigSection):
    wandb: bool = Field(True, description="also log to Weights & Biases (CSV is always written)")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline never needs a login; run `wandb sync` later to upload"
    )
    wandb_project: str = Field("harness", description="wandb project name")
    log_every_steps: int = Field(10, ge=1, description="log training metrics every N updates")


OUTCOME_SECTIONS = ("seed", "corpus", "tokenizer", "data", "model", "optim", "budget")
# Outcome fields added after runs were recorded, with the default every earlier run had: hashed only when set away
# from it, so adding a field never changes the id of a run that did not use it (a resumed sweep keeps its runs).
ADDED_LATER: dict[tuple[str, str], Any] = {("model", "activation"): "gelu", ("corpus", "hub_streaming"): False,
                                           ("tokenizer", "train_sample_mb"): 1024}


class RunConfig(ConfigSection):
    experiment: str = Field("quickstart", min_length=1, description="experiment name: results/<experiment>/")
    name: str | None = Field(None, description="run name; null = derived from the recipe toggles")
    recipe: RecipeName | None = Field(
        None, description="bert | bert-reimpl | roberta: the paper-recipe values laid over the size preset "
        "(file and --set win); a record only, not hashed"
    )
    seed: int = Field(0, ge=0, description="seed for data order, masks, NSP negatives and initialisation")
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    budget: BudgetConfig = BudgetConfig()
    impl: ImplConfig = ImplConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        d = self.data
        if d.nsp and d.packing not in PAIR_PACKINGS:
            raise ValueError(
                f"data.nsp = true with data.packing = '{d.packing}': a single-segment input has no pair to judge; "
                f"allowed: nsp with {' or '.join(PAIR_PACKINGS)}"
            )
        if d.separators != "document" and d.packing in PAIR_PACKINGS:
            raise ValueError(
                f"data.separators = '{d.separators}' with data.packing = '{d.packing}': pair inputs keep their own "
                "layout; allowed: separators 'fairseq' with full_sentences or doc_sentences"
            )
        if d.nsp and self.model.family == "roberta":
            raise ValueError(
                "data.nsp = true with model.family = 'roberta': RobertaForMaskedLM has no NSP head; "
                "allowed: model.family = 'bert' for NSP"
            )
        specials = special_token_count(self.tokenizer.kind, d.packing)
        segments = 2 if d.packing in PAIR_PACKINGS else 1
        if d.max_seq_length < specials + segments:
            raise ValueError(
                f"data.max_seq_length = {d.max_seq_length}; '{d.packing}' with {self.tokenizer.kind} needs "
                f"{specials} special tokens + {segments} content token(s): allowed: >= {specials + segments}"
            )
        self._check_update_split()
        return self

    def _check_update_split(self) -> None:
        """Every update must be exactly the size the config says, however it is split into micro-batches."""
        micro, per_update, devices = self.impl.micro_batch_size, self.optim.batch_size, self.world_size()
        tokens = self.optim.batch_tokens
        if tokens is None and per_update % ((micro or 1) * devices):
            field = f"impl.micro_batch_size = {micro} x " if micro else ""
            nodes = f" x impl.num_nodes = {self.impl.num_nodes}" if self.impl.num_nodes > 1 else ""
            raise ValueError(
                f"{field}impl.devices = {self.impl.devices}{nodes} does not divide optim.batch_size = {per_update}; "
                f"allowed: a batch size that is a multiple of {(micro or 1) * devices}"
            )
        parts = self.grad_accumulation() * devices
        if self.impl.strategy == "fsdp" and self.impl.accelerator == "cpu":
            raise ValueError("impl.strategy = 'fsdp' with impl.accelerator = 'cpu'; allowed: fsdp on 'gpu' (or "
                             "'auto' on a GPU machine), or impl.strategy = 'ddp' on CPUs")
        if tokens is not None and tokens < parts * self.data.max_seq_length:
            raise ValueError(
                f"optim.batch_tokens = {tokens} split into {parts} micro-batches (accumulation x devices) leaves "
                f"less than one input of data.max_seq_length = {self.data.max_seq_length} per micro-batch; "
                f"allowed: >= {parts * self.data.max_seq_length}"
            )

    # Derived values live here as methods so every consumer computes them the same way.
    def world_size(self) -> int:
        """Training processes: devices per machine x machines. Each takes 1 / world_size of every update."""
        return self.impl.devices * self.impl.num_nodes

    def grad_accumulation(self) -> int:
        """Micro-batches per update per process. By tokens, impl.micro_batch_size full-length inputs are the size of
        one forward pass: the update is split into batch_tokens // (micro x max_seq_length x processes) per process.
        Either way the split changes only speed: the update's inputs are cut first (harness.data.loader)."""
        if self.optim.batch_tokens is not None:
            if self.impl.micro_batch_size is None:
                return 1
            per_pass = self.impl.micro_batch_size * self.data.max_seq_length * self.world_size()
            return max(1, self.optim.batch_tokens // per_pass)
        micro = self.impl.micro_batch_size or self.optim.batch_size
        return max(1, self.optim.batch_size // (micro * self.world_size()))

    def run_id(self) -> str:
        """Hash of the outcome-affecting fields only: equal ids mean equal experiments."""
        dumped = self.model_dump(mode="json")
        outcome = {key: dumped[key] for key in OUTCOME_SECTIONS}
        for (section, field), default in ADDED_LATER.items():
            if outcome[section][field] == default:
                del outcome[section][field]
        return hashlib.sha256(json.dumps(outcome, sort_keys=True).encode()).hexdigest()[:10]

    def run_name(self) -> str:
        if self.name:
            return self.name
        d = self.data
        parts = [self.model.family, self.model.size, d.packing, "nsp" if d.nsp else "nonsp", d.masking,
                 f"bs{self.optim.batch_tokens or self.optim.batch_size}{'tok' if self.optim.batch_tokens else ''}"]
        return "-".join(parts)


def special_token_count(tokenizer_kind: str, packing: str) -> int:
    """Special tokens one input needs: BERT [CLS] A [SEP] B [SEP]; RoBERTa <s> A </s></s> B </s>."""
    if packing not in PAIR_PACKINGS:
        return 2
    return 3 if tokenizer_kind == "wordpiece" else 4


def format_validation_error(err: ValidationError) -> str:
    """pydantic's first error as one line naming the field, the value and what is allowed."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown config field '{loc}'"
    if not loc:  # a cross-field rule: its message already names the fields
        return msg
    value = first.get("input")
    if isinstance(value, dict):  # a section-level rule: the message names the fields
        return msg
    return f"config field '{loc}' = {value!r}: {msg}"


def from_dict(data: dict[str, Any]) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def _parse_scalar(text: str) -> Any:
    """YAML 1.1 reads '1e-4' as a string; accept the float spelling users expect."""
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _coerce_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_coerce_floats(v) for v in node]
    if isinstance(node, str):
        return _parse_scalar(node) if _looks_numeric(node) else node
    return node


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` strings (values parsed as YAML) to a plain config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value")
        set_dotted(data, key.strip(), _parse_scalar(raw))
    return data


def _dotted_dict(settings: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in settings.items():
        set_dotted(data, key, value)
    return data


def preset_dict(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; allowed: {', '.join(PRESETS)}")
    return _dotted_dict(PRESETS[preset])


def recipe_dict(recipe: str) -> dict[str, Any]:
    """The recipe's fields as a nested dict, with `recipe` itself so the resolved config records it."""
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise ConfigError(f"config field 'recipe' = {recipe!r}: unknown recipe; allowed: "
                          f"{', '.join(RECIPES)} (or null)")
    return {**_dotted_dict(RECIPES[recipe]), "recipe": recipe}


def _recipe_name(argument: str | None, file_data: dict[str, Any], overrides: list[str]) -> str | None:
    """Which recipe to lay under the file: `recipe=` in --set beats the file's `recipe:`, as --set beats any file
    field; the argument (--recipe) fills in when neither names one, and may not contradict them."""
    named = apply_overrides({}, [item for item in overrides if item.partition("=")[0].strip() == "recipe"])
    source = "--set recipe" if "recipe" in named else "the config file"
    name = named["recipe"] if "recipe" in named else file_data.get("recipe")
    if name is None:
        return None if "recipe" in named else argument
    if argument is not None and name != argument:
        raise ConfigError(f"config field 'recipe': --recipe {argument} but {source} says {name!r}; name one recipe")
    return name


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset: str | None = None, recipe: str | None = None) -> RunConfig:
    """Field defaults < size preset < recipe < the recipe's published settings at that size < file < overrides,
    validated once at the end.

    The recipe may be named by the `recipe` argument (the CLI's --recipe), in the file (`recipe: bert`) or by an
    override (`recipe=bert`); all three give the same config. A saved config.yaml names its recipe and holds every
    resolved value, so it loads back to an equal config."""
    overrides = list(overrides or [])
    file_data = read_yaml(path) if path is not None else {}
    data: dict[str, Any] = preset_dict(preset) if preset else {}
    name = _recipe_name(recipe, file_data, overrides)
    if name is not None:
        data = _deep_merge(data, recipe_dict(name))
        if (name, preset) in PUBLISHED_AT_SIZE:  # the recipe's published settings at this size (presets.py)
            data = _deep_merge(data, _dotted_dict(PUBLISHED_AT_SIZE[(name, preset)]))
    data = _deep_merge(data, file_data)
    return from_dict(apply_overrides(data, overrides))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top level")
    return _coerce_floats(data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dump_yaml(config: RunConfig, with_help: bool = False) -> str:
    """YAML text that loads back to an equal config; with_help adds each field's help as a comment."""
    if not with_help:
        return yaml.safe_dump(to_dict(config), sort_keys=False)
    lines: list[str] = []
    _emit_section(config, lines, indent="")
    return "\n".join(lines) + "\n"


def _emit_section(section: BaseModel, lines: list[str], indent: str) -> None:
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()
            lines.append(f"{indent}{name}:" + (f"  # {doc[0]}" if doc and doc[0] else ""))
            _emit_section(value, lines, indent + "  ")
            continue
        plain = list(value) if isinstance(value, tuple) else value
        scalar = yaml.safe_dump(plain, default_flow_style=True).strip().removesuffix("\n...").strip()
        lines.append(f"{indent}{name}: {scalar}  # {info.description or ''}".rstrip())


def write_yaml(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(config), encoding="utf-8")
