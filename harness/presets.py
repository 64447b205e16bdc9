"""The named settings a run config is layered from: size presets (model shape and the scale around it) and paper
recipes (how a model is trained). Plain data in dotted-key form; harness.config validates what they produce."""

from __future__ import annotations

from typing import Any

# ---- presets ---------------------------------------------------------------------------------------------
# A size preset holds only size-ish settings: model shape, lengths, vocabulary, batch, peak lr and steps
# (precision is impl.precision auto: bf16 where the hardware has it). How a model is trained (input format,
# masking, objective, optimiser shape) is a recipe (below).
# CPU presets finish in minutes; base/large are the paper's shapes, meant for GPUs.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"model.size": "tiny", "data.max_seq_length": 128, "tokenizer.vocab_size": 8192,
             "optim.batch_size": 32, "optim.peak_lr": 1e-3, "budget.max_steps": 200},
    "mini": {"model.size": "mini", "data.max_seq_length": 128, "tokenizer.vocab_size": 8192,
             "optim.batch_size": 32, "optim.peak_lr": 5e-4, "budget.max_steps": 1000},
    "small": {"model.size": "small", "data.max_seq_length": 256, "tokenizer.vocab_size": 16384,
              "optim.batch_size": 128, "optim.peak_lr": 5e-4, "budget.max_steps": 10_000},
    "medium": {"model.size": "medium", "data.max_seq_length": 512, "tokenizer.vocab_size": 32768,
               "optim.batch_size": 256, "optim.peak_lr": 3e-4, "budget.max_steps": 50_000},
    # The ablation model of the paper (sections 3.1, 4; Table 3 first row): BERT-base, 256 sequences of 512 tokens
    # x 1M updates at peak lr 1e-4 (Devlin et al. A.2). 50,265 = RoBERTa's byte-level BPE dictionary (paper 4.4:
    # 50K); BERT's WordPiece has 30,522: --set tokenizer.vocab_size=30522 with the bert recipes.
    "base": {"model.size": "base", "data.max_seq_length": 512, "tokenizer.vocab_size": 50_265,
             "optim.batch_size": 256, "optim.peak_lr": 1e-4, "budget.max_steps": 1_000_000},
    # RoBERTa-large (paper Table 9): 8K sequences of 512 tokens x 500K updates, peak lr 4e-4.
    "large": {"model.size": "large", "data.max_seq_length": 512, "tokenizer.vocab_size": 50_265,
              "optim.batch_size": 8192, "optim.peak_lr": 4e-4, "budget.max_steps": 500_000},
}

# ---- recipes ---------------------------------------------------------------------------------------------
# A recipe is the other axis of the paper: how a model of any size is pre-trained. It sets only recipe-ish
# fields and no size-ish one, so every recipe composes with every size preset. Sources: "paper" = Liu et al.
# 2019 (../shared/docs/PAPER.md); "Devlin" = Devlin et al. 2019; Google's code = github.com/google-research/bert
# create_pretraining_data.py, run_pretraining.py, optimization.py; fairseq = examples/roberta/README.pretraining.md
# and its masked_lm task (MaskTokensDataset, TokenBlockDataset) and Adam optimizer.
_MASKING_AND_DROPOUT: dict[str, Any] = {
    "data.mask_prob": 0.15,  # Devlin 3.1; create_pretraining_data.py masked_lm_prob=0.15; fairseq mask_prob 0.15
    "data.mask_token_fraction": 0.8,  # Devlin 3.1 80/10/10; create_instances_from_document; fairseq 1 - 0.1 - 0.1
    "data.random_token_fraction": 0.1,  # idem; fairseq random_token_prob=0.1 (leave_unmasked_prob=0.1)
    "data.whole_word_masking": False,  # BERT as published and fairseq's default (mask_whole_words off)
    # Google's caps (20 at length 128, 80 at 512; run_pretraining.py max_predictions_per_seq) are at least
    # round(0.15 x L) = 19 / 77, so under its count rule they never bind: they only size its fixed-shape
    # TFRecord tensors. Null gives the same masks at every length, so the recipe composes with any preset.
    "data.max_predictions_per_seq": None,
    "model.dropout": 0.1,  # Devlin A.2; paper 2 and Table 9 (dropout and attention dropout 0.1)
}
_BERT: dict[str, Any] = {
    **_MASKING_AND_DROPOUT,
    "tokenizer.kind": "wordpiece",  # Devlin 3: 30K WordPiece, [CLS]/[SEP]
    "model.family": "bert",  # BertForPreTraining: MLM + NSP heads
    "model.activation": "gelu_tanh",  # modeling.py gelu(): 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
    "data.packing": "segment_pair",  # paper 4.2 SEGMENT-PAIR = create_pretraining_data.py
    "data.nsp": True,  # Devlin 3.1 task 2; run_pretraining.py adds the next-sentence loss
    "data.segment_embeddings": True,  # Devlin 3 (token_type embeddings, type_vocab_size=2)
    "data.masking": "static",  # paper 4.1: masked once in preprocessing (create_pretraining_data.py)
    "data.dupe_factor": 10,  # create_pretraining_data.py dupe_factor=10
    "data.static_mode": "redraw",  # create_pretraining_data.py: each copy re-draws pairs with one running RNG
    "data.short_seq_prob": 0.1,  # create_pretraining_data.py short_seq_prob=0.1
    "data.mask_count": "google",  # create_masked_lm_predictions: min(max_predictions, max(1, round(n x 0.15)))
    "optim.betas": [0.9, 0.999],  # Devlin A.2; optimization.py beta_2=0.999
    "optim.eps": 1e-6,  # optimization.py AdamWeightDecayOptimizer epsilon=1e-6
    "optim.weight_decay": 0.01,  # Devlin A.2; optimization.py weight_decay_rate=0.01
    "optim.decay_norm_and_bias": False,  # optimization.py exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]
    "optim.warmup_fraction": 0.01,  # Devlin A.2 / run_pretraining.py: 10K warm-up steps of 1M
    "optim.schedule": "linear",  # optimization.py polynomial_decay to 0 with power=1.0
    "optim.clip_grad_norm": 1.0,  # optimization.py clip_by_global_norm(grads, clip_norm=1.0)
}
RECIPES: dict[str, dict[str, Any]] = {
    "bert": _BERT,
    # The paper's re-implementation of BERT (Tables 1-2, sections 3.1 and 4): Google's recipe at full length only,
    # "we do not randomly inject short sequences" (3.1). Paper 4.1: 10 copies over 40 epochs, so each mask is seen
    # 4 times; `auto` keeps that ratio (passes / 4 copies) at budgets far below 40 epochs, where 10 fixed copies
    # would show each mask less than once and static masking would be dynamic in all but name.
    # fairseq's BERT re-implementation: exact (erf) GELU, as fairseq's `gelu` and RoBERTa.
    "bert-reimpl": {**_BERT, "data.short_seq_prob": 0.0, "data.dupe_factor": "auto", "model.activation": "gelu"},
    "roberta": {
        **_MASKING_AND_DROPOUT,
        "tokenizer.kind": "bpe",  # paper 4.4: byte-level BPE (GPT-2's, 50K units)
        "model.family": "roberta",  # RobertaForMaskedLM: no NSP head
        "model.activation": "gelu",  # fairseq's `gelu` (erf), as in the released RoBERTa
        # paper 4.2: FULL-SENTENCES "in the remainder of our experiments"; fairseq --sample-break-mode complete
        "data.packing": "full_sentences",
        # paper 4.2: "an extra separator token between documents". fairseq's files also end every paragraph with
        # </s> (data.separators=fairseq); that needs paragraph structure and no pair packing, so it stays opt-in.
        "data.separators": "document",
        "data.nsp": False,  # paper 4.2 and Table 2: no NSP loss
        "data.segment_embeddings": False,  # fairseq's RoBERTa has no segment embeddings (HF type_vocab_size=1)
        "data.masking": "dynamic",  # paper 4.1; fairseq MaskTokensDataset seeds each mask with (seed, epoch, index)
        "data.short_seq_prob": 0.0,  # paper 3.1: no short sequences (unused by full_sentences anyway)
        "data.mask_count": "fairseq",  # MaskTokensDataset: int(mask_prob x n + U[0, 1))
        "optim.betas": [0.9, 0.98],  # paper Table 9; README.pretraining.md --adam-betas '(0.9,0.98)'
        "optim.eps": 1e-6,  # paper Table 9; README.pretraining.md --adam-eps 1e-6
        "optim.weight_decay": 0.01,  # paper Table 9; README.pretraining.md --weight-decay 0.01
        "optim.decay_norm_and_bias": True,  # fairseq's Adam has one parameter group: the decay hits every parameter
        # Table 9: 24K (base, 4.8%) / 30K (large, 6%) of 500K updates; README.pretraining.md 10K of 125K (8%).
        # We take 6%, the middle value, which is also RoBERTa's fine-tuning warm-up.
        "optim.warmup_fraction": 0.06,
        "optim.schedule": "linear",  # paper Table 9 linear decay; fairseq --lr-scheduler polynomial_decay (power 1)
        "optim.clip_grad_norm": 0.0,  # paper Table 9 "gradient clipping 0.0"; README.pretraining.md --clip-norm 0.0
    },
}

# ---- a recipe at a published size ---------------------------------------------------------------------------
# Where the paper or BERT's paper published a recipe's settings for one model size, a recipe composed with that
# size preset takes them: the published value wins over the size preset's (which is the paper's ablation setting,
# Table 3's first row). Layered between the recipe and the config file, so a file, a grid's base.set and --set
# still win. Warm-up fractions are the published warm-up steps over the published updates.
PUBLISHED_AT_SIZE: dict[tuple[str, str], dict[str, Any]] = {
    # RoBERTa-base, paper Table 9: batch 8K x 500K updates, peak lr 6e-4, 24K warm-up (4.8%), length 512
    ("roberta", "base"): {"optim.batch_size": 8192, "budget.max_steps": 500_000, "optim.peak_lr": 6e-4,
                          "optim.warmup_fraction": 24_000 / 500_000},
    # RoBERTa-large, paper Table 9: batch 8K x 500K updates, peak lr 4e-4, 30K warm-up (6%)
    ("roberta", "large"): {"optim.batch_size": 8192, "budget.max_steps": 500_000, "optim.peak_lr": 4e-4,
                           "optim.warmup_fraction": 30_000 / 500_000},
    # BERT-base and BERT-large, Devlin et al. A.2: 256 x 1M updates, peak lr 1e-4, 10K warm-up (1%); the paper's
    # re-implementation (sections 3.1, 4) uses the same
    **{(recipe, size): {"optim.batch_size": 256, "budget.max_steps": 1_000_000, "optim.peak_lr": 1e-4,
                        "optim.warmup_fraction": 10_000 / 1_000_000}
       for recipe in ("bert", "bert-reimpl") for size in ("base", "large")},
}
