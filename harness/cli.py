"""The `harness` command line. Each subcommand parses its arguments, builds and validates the run config,
then calls one typed function; heavy libraries are imported inside the commands so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.config import PRESETS, RECIPES, HarnessError, RunConfig, dump_yaml, load_config


def _add_config_args(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    parser.add_argument("--config", type=Path, help="run config YAML (start from `harness config`)")
    parser.add_argument("--preset", choices=list(PRESETS), help="start from a size preset; the file and --set win")
    # No argparse `choices`: an unknown recipe is reported by the config as one line naming the allowed values.
    parser.add_argument("--recipe", metavar="|".join(RECIPES),
                        help="lay a paper recipe over the size preset (same as `recipe:` in the file); "
                        "the file and --set win")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set data.packing=doc_sentences (repeatable)")
    if data:
        parser.add_argument("--data-dir", type=Path, default=None,
                            help="root for relative data paths (default: $HARNESS_DATA_DIR)")


def _config_from(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides, preset=args.preset, recipe=args.recipe)


def cmd_config(args: argparse.Namespace) -> int:
    config = _config_from(args)
    print(dump_yaml(config, with_help=not args.plain), end="")
    print(f"# run id: {config.run_id()}  run name: {config.run_name()}", file=sys.stderr)
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    config = _config_from(args)  # a bad value fails before the heavy imports
    from harness.data.tokenizer import build_tokenizer

    tokenizer, path = build_tokenizer(config, args.data_dir)
    print(f"{type(tokenizer).__name__} with {len(tokenizer)} tokens saved at {path}")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    config = _config_from(args)  # a bad value fails before the heavy imports
    from harness.data.corpus import build_corpus

    corpus = build_corpus(config, args.data_dir)
    print(json.dumps(corpus.stats(), indent=2, default=str))
    return 0


def cmd_inspect_data(args: argparse.Namespace) -> int:
    config = _config_from(args)  # a bad value fails before the heavy imports
    from harness.data.inspect import inspect_data

    stats = inspect_data(config, batches=args.batches, out=args.out, epochs=args.epochs, data_dir=args.data_dir,
                         show=args.show)
    print(json.dumps(stats, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    config = _config_from(args)  # a bad value fails before the heavy imports
    from harness.train import pretrain

    metrics = pretrain(config, args.data_dir, args.results)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from harness.finetune import finetune, load_finetune_config

    settings = load_finetune_config(args.overrides)
    summary = finetune(args.checkpoint, args.task, args.data_dir, settings, args.results)
    print(json.dumps({key: summary[key] for key in ("task", "selection_metric", "best_learning_rate", "best",
                                                    "best_dev_medians", "best_on_grid_edge", "study_dir")},
                     indent=2))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Run a study file: pre-train every arm, fine-tune each, print the comparison table."""
    from harness.study import format_table, load_study, run_study

    study = load_study(args.study, args.overrides)
    rows = run_study(study, args.data_dir, args.results)
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Reproduce and extend the RoBERTa pre-training ablations (masking, NSP, input packing, "
        "batch size, tokenizer) with Lightning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, Callable[[argparse.Namespace], int], str]] = [
        ("config", cmd_config, "print the complete run config (every field with its help) as YAML"),
        ("tokenizer", cmd_tokenizer, "train (or load from cache) the tokenizer a config asks for"),
        ("corpus", cmd_corpus, "load, segment, tokenize and cache a corpus; print statistics"),
        ("inspect-data", cmd_inspect_data, "write the exact training batches as JSON lines, show and measure them"),
        ("pretrain", cmd_pretrain, "pre-train one run into results/<experiment>/runs/ (resumes if interrupted)"),
        ("finetune", cmd_finetune, "fine-tune a checkpoint on a task over the lr x seed grid (paper protocol)"),
        ("quickstart", cmd_quickstart, "run a study (default: the quickstart): pre-train arms, fine-tune, compare"),
    ]
    for name, func, help_text in commands:
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "finetune":
            command.add_argument("--checkpoint", type=Path, required=True,
                                 help="a save_pretrained directory with its tokenizer (e.g. a run's model/)")
            command.add_argument("--task", required=True, help="task name, e.g. sst2, mnli, squad_v2, conll2003")
            command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                                 help="override a fine-tuning setting, e.g. --set learning_rates=[3e-5] (repeatable)")
            command.add_argument("--data-dir", type=Path, default=None,
                                 help="root holding glue/<TASK>/, squad/, ner/ (default: $HARNESS_DATA_DIR)")
            command.add_argument("--results", type=Path, default=Path("results"), help="results root folder")
        elif name == "quickstart":
            command.add_argument("--study", type=Path, default=Path("experiments/quickstart.study.yaml"),
                                 help="study file: a base config, named arms, fine-tuning settings")
            command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                                 help="override one field in every arm (repeatable)")
            command.add_argument("--data-dir", type=Path, default=None,
                                 help="root for relative data paths (default: $HARNESS_DATA_DIR)")
        else:
            _add_config_args(command, data=name != "config")
        if name == "config":
            command.add_argument("--plain", action="store_true", help="omit the help comments")
        if name == "inspect-data":
            command.add_argument("--batches", type=int, default=4, help="batches per epoch to write")
            command.add_argument("--epochs", type=int, default=1, help="epochs to write (masks differ by epoch)")
            command.add_argument("--out", type=Path, default=Path("batches.jsonl"), help="JSON lines output file")
            command.add_argument("--show", type=int, default=3, help="examples to print decoded")
        if name in ("pretrain", "quickstart"):
            command.add_argument("--results", type=Path, default=Path("results"), help="results root folder")
        command.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as err:
        print(f"harness {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
