"""Recipe presets: each recipe holds the paper's values, composes with every size preset, sits between the size
preset and the file in precedence, round-trips through a saved config, and its weight-decay choice reaches the
real optimizer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from harness.cli import main
from harness.config import (
    PRESETS,
    PUBLISHED_AT_SIZE,
    RECIPES,
    ConfigError,
    ModelConfig,
    OptimConfig,
    RunConfig,
    dump_yaml,
    from_dict,
    load_config,
)
from harness.models.pretrain import PretrainModule, build_pretraining_model
from harness.study import load_grid

# Written out by hand from the sources cited in harness/config.py, so a slip in RECIPES shows up here.
GOOGLE_OPTIM = {"betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01, "decay_norm_and_bias": False,
                "warmup_fraction": 0.01, "schedule": "linear", "clip_grad_norm": 1.0}
GOOGLE_DATA = {"packing": "segment_pair", "nsp": True, "segment_embeddings": True, "masking": "static",
               "static_mode": "redraw", "mask_count": "google"}
EXPECTED = {
    "bert": ("wordpiece", "bert", {**GOOGLE_DATA, "short_seq_prob": 0.1, "dupe_factor": 10}, GOOGLE_OPTIM),
    "bert-reimpl": ("wordpiece", "bert", {**GOOGLE_DATA, "short_seq_prob": 0.0, "dupe_factor": "auto"},
                    GOOGLE_OPTIM),
    "roberta": ("bpe", "roberta",
                {"packing": "full_sentences", "separators": "document", "nsp": False, "segment_embeddings": False,
                 "masking": "dynamic", "short_seq_prob": 0.0, "mask_count": "fairseq"},
                {"betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01, "decay_norm_and_bias": True,
                 "warmup_fraction": 0.06, "schedule": "linear", "clip_grad_norm": 0.0}),
}
SIZE_SECTIONS_OF_PRESETS = {"model.size", "data.max_seq_length", "tokenizer.vocab_size", "optim.batch_size",
                            "optim.peak_lr", "budget.max_steps", "impl.precision"}


def test_recipes_are_the_ones_expected():
    assert set(RECIPES) == set(EXPECTED)


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_recipe_values(recipe):
    kind, family, data, optim = EXPECTED[recipe]
    config = load_config(recipe=recipe)
    assert config.recipe == recipe
    assert (config.tokenizer.kind, config.model.family, config.model.dropout) == (kind, family, 0.1)
    for field, value in data.items():
        assert getattr(config.data, field) == value, field
    for field, value in optim.items():
        assert getattr(config.optim, field) == value, field
    d = config.data
    assert (d.mask_prob, d.mask_token_fraction, d.random_token_fraction) == (0.15, 0.8, 0.1)
    assert d.max_predictions_per_seq is None and not d.whole_word_masking


def test_defaults_are_the_papers_not_googles():
    config = RunConfig()
    assert config.recipe is None
    assert config.data.short_seq_prob == 0.0  # paper 3.1: no random short sequences
    assert [name for name in RECIPES if RECIPES[name].get("data.short_seq_prob")] == ["bert"]


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_composes_with_every_size_preset(recipe, preset):
    config = load_config(preset=preset, recipe=recipe)
    assert config.model.size == preset and config.recipe == recipe
    assert config.data.max_seq_length == PRESETS[preset]["data.max_seq_length"]
    assert config.optim.peak_lr == PUBLISHED_AT_SIZE.get((recipe, preset), PRESETS[preset])["optim.peak_lr"]
    assert config.optim.betas == EXPECTED[recipe][3]["betas"]


# Written out by hand: RoBERTa paper Table 9 (base / large) and Devlin et al. A.2 (BERT base and large).
PUBLISHED = {("roberta", "base"): (8192, 500_000, 6e-4, 24_000), ("roberta", "large"): (8192, 500_000, 4e-4, 30_000),
             ("bert", "base"): (256, 1_000_000, 1e-4, 10_000), ("bert", "large"): (256, 1_000_000, 1e-4, 10_000)}


@pytest.mark.parametrize(("recipe", "preset"), list(PUBLISHED))
def test_a_recipe_at_a_published_size_gets_the_published_settings(recipe, preset, capsys):
    """`harness config --preset base --recipe roberta` is RoBERTa-base as Table 9 trains it (it was 256 x 1M at
    lr 1e-4 with a 60K warm-up: the ablation setting); --set still wins; a size without published settings keeps
    the preset's."""
    assert main(["config", "--preset", preset, "--recipe", recipe, "--plain"]) == 0
    config = from_dict(yaml.safe_load(capsys.readouterr().out))
    batch, steps, lr, warmup = PUBLISHED[(recipe, preset)]
    assert (config.optim.batch_size, config.budget.max_steps, config.optim.peak_lr) == (batch, steps, lr)
    assert round(config.optim.warmup_fraction * steps) == warmup and config.data.max_seq_length == 512
    pinned = load_config(preset=preset, recipe=recipe, overrides=["optim.peak_lr=1e-4", "optim.batch_size=256"])
    assert (pinned.optim.peak_lr, pinned.optim.batch_size) == (1e-4, 256)
    tiny = load_config(preset="tiny", recipe=recipe)
    assert (tiny.optim.batch_size, tiny.optim.peak_lr) == (PRESETS["tiny"]["optim.batch_size"],
                                                          PRESETS["tiny"]["optim.peak_lr"])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_size_presets_hold_only_size_settings(preset):
    assert set(PRESETS[preset]) <= SIZE_SECTIONS_OF_PRESETS
    assert not set(PRESETS[preset]) & {key for recipe in RECIPES.values() for key in recipe}


def test_paper_shapes_of_base_and_large():
    base, large = load_config(preset="base"), load_config(preset="large")
    assert (base.optim.batch_size, base.optim.peak_lr, base.budget.max_steps) == (256, 1e-4, 1_000_000)
    assert (large.optim.batch_size, large.optim.peak_lr, large.budget.max_steps) == (8192, 4e-4, 500_000)


def test_three_ways_to_name_a_recipe_give_the_same_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: bert\nmodel:\n  size: mini\n")
    by_argument = load_config(overrides=["model.size=mini"], recipe="bert")
    assert load_config(overrides=["recipe=bert", "model.size=mini"]) == by_argument
    assert load_config(path) == by_argument
    assert load_config(path, recipe="bert") == by_argument  # the same recipe twice is no conflict


def test_file_and_set_beat_the_recipe_which_beats_the_preset(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  mask_count: bernoulli\noptim:\n  clip_grad_norm: 2.0\n")
    config = load_config(path, ["optim.clip_grad_norm=3.0"], preset="tiny", recipe="bert")
    assert (config.data.mask_count, config.optim.clip_grad_norm) == ("bernoulli", 3.0)
    assert config.data.packing == "segment_pair"  # the rest of the recipe still applies
    monkeypatch.setitem(PRESETS, "tiny", {**PRESETS["tiny"], "optim.clip_grad_norm": 5.0})
    assert load_config(preset="tiny", recipe="bert").optim.clip_grad_norm == 1.0
    assert load_config(preset="tiny").optim.clip_grad_norm == 5.0


def test_set_recipe_beats_the_files_recipe(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: bert\n")
    assert load_config(path, ["recipe=roberta"]) == load_config(recipe="roberta")
    assert load_config(path, ["recipe=null"]) == RunConfig()


def test_recipe_argument_contradicting_the_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: bert\n")
    with pytest.raises(ConfigError, match="--recipe roberta but the config file says 'bert'"):
        load_config(path, recipe="roberta")


@pytest.mark.parametrize("preset", ["tiny", "base"])
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("with_help", [False, True])
def test_saved_config_round_trips(recipe, preset, with_help, tmp_path):
    config = load_config(preset=preset, recipe=recipe, overrides=["optim.eps=1e-8"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config, with_help=with_help))
    assert f"recipe: {recipe}" in path.read_text()
    assert load_config(path) == config
    assert from_dict(yaml.safe_load(path.read_text())) == config


def test_recipe_is_bookkeeping_not_identity():
    by_recipe = load_config(recipe="roberta")
    spelled_out = load_config(overrides=[f"{key}={json.dumps(value)}" for key, value in RECIPES["roberta"].items()])
    assert spelled_out.recipe is None and by_recipe.run_id() == spelled_out.run_id()
    assert by_recipe.model_copy(update={"recipe": None}) == spelled_out


@pytest.mark.parametrize("how", ["argument", "override", "file"])
def test_unknown_recipe_is_one_line_naming_field_and_values(how, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: xlnet\n")
    kwargs = {"argument": {"recipe": "xlnet"}, "override": {"overrides": ["recipe=xlnet"]},
              "file": {"path": path}}[how]
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message and "'recipe'" in message and "xlnet" in message
    assert all(name in message for name in RECIPES)


@pytest.mark.parametrize("packing", ["segment_pair", "sentence_pair", "full_sentences", "doc_sentences"])
def test_roberta_recipe_takes_any_packing(packing):
    """Table 2 without NSP: the RoBERTa recipe over each input format must validate."""
    assert load_config(recipe="roberta", overrides=[f"data.packing={packing}"]).data.packing == packing


def test_grid_arm_can_name_a_recipe(tmp_path, shared_data):
    (tmp_path / "base.yaml").write_text("model:\n  size: tiny\n")
    (tmp_path / "s.yaml").write_text("base: {config: base.yaml}\nscientific:\n  arms:\n    b: {recipe: bert-reimpl}\n"
                                     "    r: {recipe: roberta, optim.clip_grad_norm: 1.0}\n")
    b, r = (run.config for run in load_grid(tmp_path / "s.yaml", data_dir=shared_data).runs)
    assert b.model_copy(update={"name": None, "experiment": "x"}) == load_config(
        tmp_path / "base.yaml", ["experiment=x"], recipe="bert-reimpl")
    assert (r.recipe, r.optim.clip_grad_norm, r.model.size) == ("roberta", 1.0, "tiny")


def test_cli_config_prints_the_composed_config(capsys):
    assert main(["config", "--recipe", "bert", "--preset", "tiny", "--plain"]) == 0
    text = capsys.readouterr().out
    assert "  # " not in text and "recipe: bert\n" in text
    assert from_dict(yaml.safe_load(text)) == load_config(preset="tiny", recipe="bert")


def test_cli_bad_recipe_is_one_line_on_stderr():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "config", "--recipe", "xlnet"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "'recipe'" in result.stderr and all(name in result.stderr for name in RECIPES)


# ---- weight decay on LayerNorm and biases, through the optimizer the Trainer gets --------------------------

def _decay_after_one_step(decay_norm_and_bias: bool) -> dict[str, float]:
    """Relative shrink of a LayerNorm weight, a bias and a dense weight after one AdamW step with zero gradients:
    with no gradient signal, the decoupled decay is the only thing that moves a parameter."""
    torch.manual_seed(0)
    model = build_pretraining_model(ModelConfig(family="roberta", size="tiny"), vocab_size=300, pad_token_id=1,
                                    bos_token_id=0, eos_token_id=2, max_seq_length=32, nsp=False,
                                    segment_embeddings=False)
    optim = OptimConfig(peak_lr=0.1, weight_decay=0.1, warmup_fraction=0.0, decay_norm_and_bias=decay_norm_and_bias)
    optimizer = PretrainModule(model, optim=optim, total_steps=10, nsp=False).configure_optimizers()["optimizer"]
    layer = model.roberta.encoder.layer[0]
    params = {"layer_norm": layer.output.LayerNorm.weight, "bias": layer.output.dense.bias,
              "weight": layer.output.dense.weight}
    params["bias"].data.fill_(1.0)  # biases start at zero, where decay cannot show
    before = {name: p.detach().clone() for name, p in params.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {name: float((params[name].detach() / before[name]).mean()) for name in params}


def test_decay_norm_and_bias_reaches_the_real_optimizer():
    shrink = 1 - 0.1 * 0.1  # AdamW: p <- p * (1 - lr * weight_decay)
    google, fairseq = _decay_after_one_step(False), _decay_after_one_step(True)
    assert google["weight"] == pytest.approx(shrink) and fairseq["weight"] == pytest.approx(shrink)
    assert google["layer_norm"] == pytest.approx(1.0) and google["bias"] == pytest.approx(1.0)
    assert fairseq["layer_norm"] == pytest.approx(shrink) and fairseq["bias"] == pytest.approx(shrink)


def test_recipes_choose_the_weight_decay_groups():
    assert load_config(recipe="roberta").optim.decay_norm_and_bias is True
    assert load_config(recipe="bert").optim.decay_norm_and_bias is False
    assert RunConfig().optim.decay_norm_and_bias is False  # the default keeps the exemption


@pytest.mark.parametrize("recipe, act", [("bert", "gelu_pytorch_tanh"), ("bert-reimpl", "gelu"), ("roberta", "gelu")])
def test_googles_bert_gets_the_tanh_gelu_and_fairseqs_recipes_the_exact_one(recipe, act):
    """Google's modeling.py uses the tanh approximation; fairseq (the paper's re-implementation, RoBERTa) erf."""
    config = load_config(recipe=recipe)
    model = build_pretraining_model(config.model, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                    max_seq_length=32, nsp=config.data.nsp,
                                    segment_embeddings=config.data.segment_embeddings)
    assert model.config.hidden_act == act
    x = torch.linspace(-3, 3, 61)
    layer = model.base_model.encoder.layer[0].intermediate.intermediate_act_fn
    exact = torch.nn.functional.gelu(x)
    gap = (layer(x) - exact).abs().max()
    assert (gap > 1e-4) == (recipe == "bert")  # the approximation differs from erf by up to ~5e-4


def test_a_field_added_later_keeps_the_ids_of_runs_that_did_not_use_it():
    """model.activation came after runs were recorded: at its default the run id is what it was before (these ids
    were computed by the code before the field existed, with pysbd, corpus.segmenter's default then), set away
    from it the id changes. The default config's own id changed with the segmenter's default (sentencex)."""
    pysbd = ["corpus.segmenter=pysbd"]
    assert load_config(overrides=pysbd).run_id() == "f257c67247"
    assert load_config(recipe="bert-reimpl", overrides=pysbd).run_id() == "c0d8a5644e"
    assert load_config(recipe="roberta", preset="base", overrides=pysbd).run_id() == "b5e3f290e7"
    assert load_config(overrides=[*pysbd, "model.activation=gelu_tanh"]).run_id() != "f257c67247"
    assert load_config().run_id() == "450ef5475e"
