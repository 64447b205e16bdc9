"""Fine-tuning end to end on tiny checkpoints made here: encoders, the lr x seed protocol, run directories,
resume, and smoke runs for every task kind. The checkpoints are random-init 2-layer models whose tokenizers
are trained on SST-2 (the pre-training code is tested elsewhere)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from harness.config import ConfigError, HarnessError
from harness.downstream.encode import encode_texts, open_checkpoint
from harness.downstream.glue import TextExample
from harness.downstream.sources import load_examples
from harness.finetune import FinetuneConfig, finetune, load_finetune_config, study_name, summarize
from harness.tasks import get_task

FAST = ["learning_rates=[1e-3]", "seeds=[0]", "max_seq_length=48", "batch_size=16", "impl.eval_batch_size=128"]


def sst2_sentences(shared_data: Path) -> list[str]:
    with (shared_data / "glue" / "SST-2" / "train.tsv").open(encoding="utf-8") as handle:
        return [line.split("\t")[0] for line in handle.read().splitlines()[1:]]


def save_roberta(path: Path, sentences: list[str]) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=2000, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(path.parent), "bpe")
    tokenizer = RobertaTokenizer(vocab=str(path.parent / "bpe-vocab.json"), merges=str(path.parent / "bpe-merges.txt"))
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=512, max_position_embeddings=66, type_vocab_size=1,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)  # the same "pre-trained" weights whatever ran before
    RobertaForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_bert(path: Path, sentences: list[str], type_vocab_size: int = 2, nsp: bool = False) -> Path:
    """A tiny BERT checkpoint: BertForPreTraining (MLM + NSP heads and a pooler) with `nsp`, else BertForMaskedLM
    (no pooler in the file), as pre-training saves them."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(sentences, vocab_size=2000, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    path.mkdir(parents=True)
    wordpiece.save_model(str(path.parent), path.name)
    tokenizer = BertTokenizer(vocab=str(path.parent / f"{path.name}-vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=64, type_vocab_size=type_vocab_size,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    (BertForPreTraining if nsp else BertForMaskedLM)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def roberta(tmp_path_factory, shared_data) -> Path:
    return save_roberta(tmp_path_factory.mktemp("roberta") / "tiny-roberta", sst2_sentences(shared_data))


@pytest.fixture(scope="module")
def bert(tmp_path_factory, shared_data) -> Path:
    return save_bert(tmp_path_factory.mktemp("bert") / "tiny-bert", sst2_sentences(shared_data)[:5000])


@pytest.fixture(scope="module")
def bert_nsp(tmp_path_factory, shared_data) -> Path:
    return save_bert(tmp_path_factory.mktemp("bert-nsp") / "tiny-nsp", sst2_sentences(shared_data)[:5000], nsp=True)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def untrained_dev_scores(checkpoint: Path, task: str, data_dir: Path, settings: FinetuneConfig,
                         seed: int = 0) -> dict[str, float]:
    """The dev metrics of the model a trial of `seed` starts from (the checkpoint with its fresh head, no update),
    on the same encoded dev set: the floor a smoke run has to clear to show that it learned something."""
    from harness.downstream.encode import pad_batch
    from harness.finetune import _prepare, _seeded_model
    from harness.models.finetune import FinetuneModule

    spec, ckpt = get_task(task), open_checkpoint(checkpoint)
    data = _prepare(spec, ckpt, data_dir, settings)
    model, _ = _seeded_model(ckpt.path, spec, settings, seed)
    module = FinetuneModule(model, data.make_evaluator(), learning_rate=1e-3).eval()
    size = settings.impl.eval_batch_size
    with torch.no_grad():
        for start in range(0, len(data.dev), size):
            batch = pad_batch(data.dev[start:start + size], ckpt.tokenizer.pad_token_id)
            module.evaluator.update(batch, module(batch))
    return module.evaluator.compute()


# ---- checkpoints and encoders ---------------------------------------------------------------------------------
def test_pairs_use_the_checkpoints_own_format(roberta, bert, tmp_path, shared_data):
    pair = [TextExample("the cat sat", "a dog ran", 1)]
    rob = open_checkpoint(roberta)
    feature = encode_texts(rob.tokenizer, pair, 64, rob.token_types)[0]
    tokens = rob.tokenizer.convert_ids_to_tokens(feature["input_ids"])
    sep = tokens.index("</s>")
    assert tokens[0] == "<s>" and tokens[sep:sep + 2] == ["</s>", "</s>"] and tokens[-1] == "</s>"
    assert "token_type_ids" not in feature and rob.max_length == 66 - 1 - 1  # positions start after pad
    brt = open_checkpoint(bert)
    feature = encode_texts(brt.tokenizer, pair, 64, brt.token_types)[0]
    tokens = brt.tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first = tokens.index("[SEP]") + 1
    assert feature["token_type_ids"] == [0] * first + [1] * (len(tokens) - first)
    no_segments = save_bert(tmp_path / "bert1", sst2_sentences(shared_data)[:500], type_vocab_size=1)
    one = open_checkpoint(no_segments)
    assert "token_type_ids" not in encode_texts(one.tokenizer, pair, 64, one.token_types)[0]


def test_checkpoint_without_config_or_tokenizer_is_a_one_line_error(roberta, tmp_path):
    with pytest.raises(HarnessError) as err:
        open_checkpoint(tmp_path / "missing")
    assert "no such folder" in one_line(err)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(roberta / name, no_tokenizer / name)
    with pytest.raises(HarnessError) as err:
        open_checkpoint(no_tokenizer)
    assert "no tokenizer" in one_line(err)
    (no_tokenizer / "config.json").unlink()
    with pytest.raises(HarnessError) as err:
        finetune(no_tokenizer, "sst2", None, FinetuneConfig(), tmp_path / "results")
    assert "no config.json" in one_line(err)


def test_the_module_trains_with_dropout_on(roberta):
    from harness.downstream.evaluators import ClassificationEvaluator
    from harness.models.finetune import FinetuneModule, load_finetune_model

    model = load_finetune_model(roberta, get_task("sst2"))
    assert not model.training  # from_pretrained hands back eval mode, and Lightning keeps submodule modes
    module = FinetuneModule(model, ClassificationEvaluator(get_task("sst2")), learning_rate=1e-3)
    assert all(m.training for m in module.model.modules())


def saved_pooler(checkpoint: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))["bert.pooler.dense.weight"]


def test_every_head_starts_fresh_and_depends_on_the_seed_only(bert_nsp, bert, roberta):
    from harness.models.finetune import init_fresh_head, load_finetune_model, load_pretrained

    sst2 = get_task("sst2")
    fresh = load_finetune_model(bert_nsp, sst2)
    kept = load_finetune_model(bert_nsp, sst2, keep_pretrained_pooler=True)
    assert not torch.allclose(fresh.bert.pooler.dense.weight, saved_pooler(bert_nsp))  # NSP-trained pooler dropped
    assert torch.equal(kept.bert.pooler.dense.weight, saved_pooler(bert_nsp))  # Google's fine-tuning keeps it
    heads = {}
    for name, checkpoint in (("nsp", bert_nsp), ("mlm", bert)):  # with and without a pooler in the file
        model, missing = load_pretrained(checkpoint, sst2)
        assert ("bert.pooler.dense.weight" in missing) == (name == "mlm")
        torch.manual_seed(7)
        assert init_fresh_head(model, missing, keep_pretrained_pooler=True) == (
            ["classifier"] if name == "nsp" else ["bert.pooler", "classifier"])
        torch.manual_seed(7)
        assert init_fresh_head(model, missing) == ["bert.pooler", "classifier"]
        heads[name] = [p.detach().clone() for p in (*model.bert.pooler.parameters(), *model.classifier.parameters())]
    assert all(torch.equal(a, b) for a, b in zip(heads["nsp"], heads["mlm"], strict=True))  # same seed, same head
    for task, head in (("sst2", ["classifier"]), ("squad_v1", ["qa_outputs"]), ("conll2003", ["classifier"])):
        model, missing = load_pretrained(roberta, get_task(task))  # RoBERTa's heads read <s> without a pooler
        assert init_fresh_head(model, missing, keep_pretrained_pooler=True) == head, task
    model, missing = load_pretrained(bert_nsp, get_task("squad_v1"))  # BERT's QA model is built without a pooler
    assert init_fresh_head(model, missing) == ["qa_outputs"] and model.bert.pooler is None


@pytest.mark.parametrize("keep", [False, True])
def test_keep_pretrained_pooler_reaches_the_trial(bert_nsp, shared_data, tmp_path, keep):
    """Through finetune_trial: the model that starts training has the checkpoint's pooler only with the switch on,
    and the switch is part of the trial's record and identity."""
    from harness.finetune import finetune_trial

    class Probe(Callback):
        def on_train_start(self, trainer, module) -> None:
            self.pooler = module.model.bert.pooler.dense.weight.detach().clone()

    probe = Probe()
    settings = load_finetune_config([*FAST, "max_steps=1", "train_subsample=32", f"keep_pretrained_pooler={keep}"])
    result = finetune_trial(bert_nsp, "wnli", shared_data, settings, tmp_path, 1e-3, 0, [probe])
    assert torch.equal(probe.pooler, saved_pooler(bert_nsp)) == keep
    assert result["fresh_modules"] == (["classifier"] if keep else ["bert.pooler", "classifier"])
    trial = next(tmp_path.glob("finetune/finetune/*/lr0.001__seed0"))
    assert json.loads((trial / "config.json").read_text())["settings"]["keep_pretrained_pooler"] is keep
    other = load_finetune_config([*FAST, "max_steps=1", "train_subsample=32", f"keep_pretrained_pooler={not keep}"])
    assert study_name(bert_nsp, get_task("wnli"), settings, "f") != study_name(bert_nsp, get_task("wnli"), other, "f")


def test_ner_labels_sit_on_the_first_subtoken_only(roberta):
    from harness.downstream.conll import IGNORE_INDEX, NerSentence, encode_ner

    ckpt = open_checkpoint(roberta)
    labels = get_task("conll2003").labels
    sentence = NerSentence(("Zyxwvutsrq", "visited", "Blackburnshire", "."), ("B-PER", "O", "B-LOC", "O"))
    feature = encode_ner(ckpt.tokenizer, [sentence], {t: i for i, t in enumerate(labels)}, 64, False)[0]
    tokens = ckpt.tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert len(tokens) > len(sentence.tokens) + 2  # the rare words are split into several pieces
    kept = [(tok, labels[lab]) for tok, lab in zip(tokens, feature["labels"], strict=True) if lab != IGNORE_INDEX]
    assert [lab for _, lab in kept] == list(sentence.tags)
    assert [tok.lstrip("Ġ")[:1] for tok, _ in kept] == ["Z", "v", "B", "."]  # each word's first piece
    assert feature["labels"][0] == feature["labels"][-1] == IGNORE_INDEX


def test_qa_windows_and_postprocessing_recover_gold_answers(roberta):
    import numpy as np

    from harness.downstream.metrics import squad_scores
    from harness.downstream.squad import QAExample, encode_qa, postprocess_qa

    ckpt = open_checkpoint(roberta)
    filler = "it is a charming and often affecting journey . " * 6
    context = f"{filler}The film was directed by Steven Soderbergh in 1998 . {filler}"
    start = context.index("Steven Soderbergh")
    examples = [QAExample("a", "Who directed it?", context, ("Steven Soderbergh",), (start,)),
                QAExample("b", "When?", context, ("1998",), (context.index("1998"),)),
                QAExample("c", "Why?", context, (), ())]
    train, _ = encode_qa(ckpt.tokenizer, examples, 48, 16, False, train=True)
    assert len(train) > 2 * len(examples)  # long contexts become several overlapping windows
    features, windows = encode_qa(ckpt.tokenizer, examples, 48, 16, False, train=False)
    starts, ends = [], []
    for feature, labelled, window in zip(features, train, windows, strict=True):
        s, e = np.full(len(feature["input_ids"]), -5.0), np.full(len(feature["input_ids"]), -5.0)
        s[labelled["start_positions"]] += 10  # an oracle: high logits where the training labels point
        e[labelled["end_positions"]] += 10
        if labelled["start_positions"]:
            span = window.offsets[labelled["start_positions"]][0], window.offsets[labelled["end_positions"]][1]
            assert context[span[0]:span[1]] == examples[window.example_index].answers[0]
        starts.append(s)
        ends.append(e)
    predictions = postprocess_qa(examples, windows, starts, ends, allow_no_answer=True)
    assert predictions == {"a": "Steven Soderbergh", "b": "1998", "c": ""}
    assert squad_scores(predictions, examples, version_2=True)["exact_match"] == pytest.approx(100.0)


# ---- config and protocol --------------------------------------------------------------------------------------
def test_overrides_are_validated_like_the_config():
    settings = load_finetune_config(["learning_rates=[1e-3, 5e-4]", "seeds=[1, 2]", "impl.precision=bf16-mixed",
                                     "train_subsample=100"])
    assert settings.learning_rates == (1e-3, 5e-4) and settings.seeds == (1, 2) and settings.train_subsample == 100
    assert FinetuneConfig().learning_rates == (5e-5, 4e-5, 3e-5, 2e-5) and FinetuneConfig().seeds == (0, 1, 2, 3, 4)
    assert load_finetune_config(["impl.num_workers=2"]).outcome() == FinetuneConfig().outcome()
    for bad, field in [("epochs=0", "epochs"), ("warmup_fraction=1.5", "warmup_fraction"), ("nope=1", "nope"),
                       ("impl.precision=fp8", "impl.precision"), ("learning_rates=[2]", "learning_rates"),
                       ("seeds=[1, 1]", "seeds"), ("batch_size", "batch_size")]:
        with pytest.raises(ConfigError) as err:
            load_finetune_config([bad])
        assert field in one_line(err), bad


def test_best_lr_is_chosen_by_median_over_seeds_not_mean():
    settings = load_finetune_config(["learning_rates=[3e-5, 2e-5]", "seeds=[0, 1, 2]"])
    scores = {3e-5: [90.0, 60.0, 61.0], 2e-5: [70.0, 70.0, 69.0]}  # 3e-5 has the higher mean, lower median
    trials = [{"learning_rate": lr, "seed": i, "score": s, "dev": {"accuracy": s, "score": s}}
              for lr, values in scores.items() for i, s in enumerate(values)]
    summary = summarize(get_task("sst2"), trials, settings)
    assert summary["best_learning_rate"] == 2e-5 and summary["best"]["median"] == 70.0
    assert summary["best"]["min"] == 69.0 and summary["best"]["max"] == 70.0
    assert summary["best"]["iqr"] == pytest.approx(0.5)  # numpy: q75 70.0 - q25 69.5
    assert summary["best_on_grid_edge"] is True
    assert summary["per_learning_rate"]["3e-05"]["median"] == 61.0


# ---- end to end -----------------------------------------------------------------------------------------------
def dev_predictions(trial_dir: Path) -> list[dict[str, str]]:
    with (trial_dir / "dev_predictions.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def metrics_rows(trial_dir: Path) -> list[dict[str, str]]:
    with next(trial_dir.glob("logs/version_*/metrics.csv")).open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # 15-30 s on 2 cores; the QA and NER smoke tests show learning in the default suite
def test_sst2_finetuning_beats_the_majority_class(roberta, shared_data, tmp_path):
    settings = load_finetune_config([*FAST, "epochs=2", "train_subsample=2000"])
    summary = finetune(roberta, "sst2", shared_data, settings, tmp_path)
    dev_labels = [ex.label for ex in load_examples(get_task("sst2"), "dev", shared_data)]
    majority = 100 * max(dev_labels.count(0), dev_labels.count(1)) / len(dev_labels)
    assert 50.0 < majority < 52.0
    assert summary["best"]["median"] > majority + 5, summary["best"]
    study = Path(summary["study_dir"])
    assert study.parent == tmp_path / "finetune" / "finetune" and study.name.startswith("tiny-roberta__sst2__")
    trial = study / "lr0.001__seed0"
    config = json.loads((trial / "config.json").read_text())
    assert config["resolved"]["train_examples"] == 2000 and config["resolved"]["max_seq_length"] == 48
    final = json.loads((trial / "final_metrics.json").read_text())
    assert final["train_subsample"] == 2000 and final["dev"]["accuracy"] == summary["best"]["median"]
    assert (trial / "env.json").is_file() and not (trial / "checkpoints").exists()
    rows = metrics_rows(trial)
    assert any(r["train_loss"] for r in rows) and sum(1 for r in rows if r["dev_accuracy"]) == 2
    assert json.loads((study / "summary.json").read_text())["best"] == summary["best"]
    rows = dev_predictions(trial)  # the last dev pass, example by example, re-scored by hand
    assert [int(r["id"]) for r in rows] == list(range(len(dev_labels)))
    assert [int(r["label"]) for r in rows] == dev_labels
    hits = sum(int(r["prediction"]) == int(r["label"]) for r in rows)
    assert 100 * hits / len(rows) == pytest.approx(final["dev"]["accuracy"], abs=1e-4)

    before = (trial / "final_metrics.json").stat().st_mtime_ns
    again = finetune(roberta, "sst2", shared_data, settings, tmp_path)  # done trials are skipped
    assert again["best"] == summary["best"] and (trial / "final_metrics.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("fast", [True, False])
def test_fast_dropout_setting_reaches_the_finetuning_model(roberta, shared_data, tmp_path, fast):
    """impl.fast_dropout through finetune_trial (what a sweep job runs): the model being trained has every dropout
    on PCG64 masks, or none, and trains either way."""
    from harness.finetune import finetune_trial
    from harness.models.dropout import ATTENTION, FastDropout

    class Probe(Callback):
        def on_train_start(self, trainer, module) -> None:
            self.fast = sum(isinstance(m, FastDropout) for m in module.model.modules())
            self.attention = module.model.config._attn_implementation

    probe = Probe()
    settings = load_finetune_config([*FAST, "train_subsample=256", "epochs=1", f"impl.fast_dropout={fast}"])
    result = finetune_trial(roberta, "sst2", shared_data, settings, tmp_path, 1e-3, 0, [probe])
    assert (probe.fast > 0 and probe.attention == ATTENTION) if fast else (probe.fast == 0)
    assert result["global_step"] == 16 and 0.0 <= result["score"] <= 100.0


def test_an_interrupted_trial_resumes_from_its_last_checkpoint(roberta, shared_data, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    import harness.finetune as module

    class Crash(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    original = module._trainer

    def crashing_trainer(trial_dir, settings):
        trainer = original(trial_dir, settings)
        trainer.callbacks.append(Crash())
        return trainer

    settings = load_finetune_config([*FAST, "epochs=2", "train_subsample=128"])
    monkeypatch.setattr(module, "_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(roberta, "wnli", shared_data, settings, tmp_path)
    trial = next(tmp_path.glob("finetune/finetune/*/lr0.001__seed0"))
    assert (trial / "checkpoints" / "last.ckpt").is_file() and not (trial / "final_metrics.json").exists()

    config = json.loads((trial / "config.json").read_text())
    tampered = json.loads(json.dumps(config))
    tampered["resolved"]["train_examples"] = 7
    (trial / "config.json").write_text(json.dumps(tampered))
    monkeypatch.setattr(module, "_trainer", original)
    with pytest.raises(HarnessError, match="resolved.train_examples: 7 there, 128 now"):
        finetune(roberta, "wnli", shared_data, settings, tmp_path)
    (trial / "config.json").write_text(json.dumps(config))

    summary = finetune(roberta, "wnli", shared_data, settings, tmp_path)
    final = json.loads((trial / "final_metrics.json").read_text())
    assert final["global_step"] == 2 * 8  # 128 examples / batch 16, two epochs in all
    assert [h["step"] for h in final["dev_history"]] == [16]  # only epoch 2 ran after the resume
    assert sorted(p.name for p in (trial / "logs").iterdir()) == ["version_0", "version_1"]
    assert summary["best"]["n"] == 1


def write_squad(root: Path, version_2: bool) -> None:
    names = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Lisbon", "Prague", "Dublin"]
    filler = "The weather there is mild and the food is good . "
    paragraphs = []
    for i, city in enumerate(names):
        context = f"{filler * 3}The capital of country {i} is {city} . {filler * 3}"
        qas = [{"id": f"{i}", "question": f"What is the capital of country {i}?",
                "answers": [{"text": city, "answer_start": context.index(city)}]}]
        if version_2:
            qas.append({"id": f"{i}-none", "question": f"What is the moon of country {i}?", "answers": [],
                        "is_impossible": True})
        paragraphs.append({"context": context, "qas": qas})
    suffix = "v2.0" if version_2 else "v1.1"
    (root / "squad").mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        data = {"version": suffix, "data": [{"title": "capitals", "paragraphs": paragraphs}]}
        (root / "squad" / f"{split}-{suffix}.json").write_text(json.dumps(data))


@pytest.mark.parametrize("task", ["squad_v1", "squad_v2"])
def test_qa_smoke(task, roberta, tmp_path):
    write_squad(tmp_path / "data", version_2=task == "squad_v2")
    settings = load_finetune_config([*FAST, "max_steps=3", "doc_stride=16"])
    summary = finetune(roberta, task, tmp_path / "data", settings, tmp_path / "results")
    final = json.loads(next(Path(summary["study_dir"]).glob("*/final_metrics.json")).read_text())
    assert final["global_step"] == 3
    # 3 updates beat the untrained head (F1 0 here): SQuAD 1.1 finds 2 of the 8 capitals (F1 25); SQuAD 2.0 learns
    # that its impossible questions have no answer (F1 50: those 8 right, the answerable 8 wrong).
    untrained = untrained_dev_scores(roberta, task, tmp_path / "data", settings)
    assert final["dev"]["f1"] > untrained["f1"] + 10, (final["dev"], untrained)
    assert summary["selection_metric"] == "f1" and summary["best"]["median"] == final["dev"]["f1"]
    assert ("no_answer_f1" in final["dev"]) == (task == "squad_v2")
    rows = dev_predictions(next(Path(summary["study_dir"]).glob("lr*")))
    assert len(rows) == (16 if task == "squad_v2" else 8)  # one row per question, keyed by its id
    from harness.downstream.metrics import squad_scores
    from harness.downstream.squad import QAExample

    questions = [QAExample(r["id"], "", "", tuple(json.loads(r["label"])), ()) for r in rows]
    rescored = squad_scores({r["id"]: r["prediction"] for r in rows}, questions, version_2=task == "squad_v2")
    assert rescored["f1"] == pytest.approx(final["dev"]["f1"])
    config = json.loads(next(Path(summary["study_dir"]).glob("*/config.json")).read_text())
    assert config["resolved"]["train_features"] > config["resolved"]["train_examples"]  # windows


def test_ner_smoke_on_conll2003(roberta, shared_data, tmp_path):
    """One pass over 1,024 training sentences (64 updates) beats the untrained head's entity F1 on the dev set
    (measured: 13.4 against 3.3; 40 updates or fewer still tag every token O, F1 0)."""
    settings = load_finetune_config([*FAST, "max_steps=64", "train_subsample=1024"])
    summary = finetune(roberta, "conll2003", shared_data, settings, tmp_path)
    final = json.loads(next(Path(summary["study_dir"]).glob("*/final_metrics.json")).read_text())
    assert set(final["dev"]) == {"f1", "precision", "recall", "score"} and final["global_step"] == 64
    assert final["train_examples"] == 1024
    untrained = untrained_dev_scores(roberta, "conll2003", shared_data, settings)
    assert final["dev"]["f1"] > untrained["f1"] + 5, (final["dev"], untrained)
    from seqeval.metrics import f1_score

    rows = dev_predictions(next(Path(summary["study_dir"]).glob("lr*")))
    gold = [s.tags for s in load_examples(get_task("conll2003"), "dev", shared_data)]
    assert len(rows) == len(gold) and [r["label"].split() for r in rows] == [list(t) for t in gold]
    predicted = [r["prediction"].split() for r in rows]
    assert 100 * f1_score([r["label"].split() for r in rows], predicted) == pytest.approx(final["dev"]["f1"])


class SegmentProbe(Callback):
    """The ids that reach the model's segment (token type) embedding in each training step, beside the batch's own
    token_type_ids; at the end of training, the model's output on the last batch with those ids and with zeros."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.embedded: list[torch.Tensor] = []

    def on_train_start(self, trainer, module) -> None:
        def record(embedding, args, output) -> None:
            if embedding.training:  # not the dev passes
                self.embedded.append(args[0])

        self.hook = module.model.bert.embeddings.token_type_embeddings.register_forward_hook(record)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append(batch)

    def on_train_end(self, trainer, module) -> None:
        self.hook.remove()
        batch = self.batches[-1]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        module.model.eval()
        with torch.no_grad():
            self.with_ids = module.model(**inputs, token_type_ids=batch["token_type_ids"]).logits
            self.with_zeros = module.model(**inputs, token_type_ids=torch.zeros_like(batch["input_ids"])).logits
        module.model.train()


def test_regression_and_segment_ids_smoke(bert, shared_data, tmp_path):
    """STS-B sentence pairs on a BERT checkpoint with segment embeddings: every training batch carries segment B
    ids (1), exactly those reach the model's token type embedding, and they change its output."""
    from harness.finetune import finetune_trial

    settings = load_finetune_config([*FAST, "max_steps=3", "train_subsample=48"])
    probe = SegmentProbe()
    finetune_trial(bert, "stsb", shared_data, settings, tmp_path, 1e-3, 0, [probe])
    assert len(probe.batches) == 3 and len(probe.embedded) == 3  # one forward pass per update
    for batch, embedded in zip(probe.batches, probe.embedded, strict=True):
        assert torch.equal(embedded, batch["token_type_ids"])
        assert all(1 in row for row in embedded.tolist())  # every pair has a segment B
    assert not torch.allclose(probe.with_ids, probe.with_zeros, atol=1e-4)
    study = next(tmp_path.glob("finetune/finetune/*"))
    final = json.loads(next(study.glob("*/final_metrics.json")).read_text())
    assert set(final["dev"]) == {"pearson", "spearman", "score"}
    assert final["dev"]["score"] == pytest.approx((final["dev"]["pearson"] + final["dev"]["spearman"]) / 2)
    from scipy.stats import pearsonr, spearmanr

    rows = dev_predictions(next(study.glob("lr*")))
    gold = [ex.label for ex in load_examples(get_task("stsb"), "dev", shared_data)]
    assert len(rows) == len(gold) == 1500 and [float(r["label"]) for r in rows] == pytest.approx(gold, rel=1e-5)
    predicted = [float(r["prediction"]) for r in rows]  # 6 significant digits, as the labels
    assert len(set(predicted)) > 1 and 100 * pearsonr(predicted, gold)[0] == pytest.approx(final["dev"]["pearson"],
                                                                                          abs=0.01)
    assert 100 * spearmanr(predicted, gold)[0] == pytest.approx(final["dev"]["spearman"], abs=0.01)
