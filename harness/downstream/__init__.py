"""Downstream evaluation data: task files -> examples -> encoded features, metrics and dev-set evaluators.

Flow: `sources.load_examples` (local official layout or hub) -> `prepare.prepare_task_data` (subsample, encode
with the checkpoint's tokenizer) -> `harness.models.finetune.FinetuneModule` scores dev with `evaluators`.
"""
