"""The `harness` command line. Each subcommand parses its arguments, builds and validates the run config,
then calls one typed function; heavy libraries are imported inside the commands so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.config import PRESETS, RECIPES, HarnessError, RunConfig, dump_yaml, load_config
from harness.machine import usable_cores


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.evaluate import load_zero_shot_settings, zero_shot_task

    task = zero_shot_task(args.task)
    settings = load_zero_shot_settings(args.task, args.overrides)  # a bad value fails before the model loads
    metrics = task.evaluate(args.checkpoint, args.data_dir, settings, args.results)
    record = task.record_path(args.results, args.checkpoint, settings, metrics["checkpoint_fingerprint"])
    shown = ("task", "scoring", "overall", "by_field", "by_term", "ties", "pairs", "paradigms")
    print(json.dumps({**{key: metrics[key] for key in shown if key in metrics}, "record": str(record)}, indent=2))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand a grid file into jobs, print the plan, run what is missing, print the table and the failures."""
    from harness.study import sweep

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    result = sweep(args.grid, scale=args.scale, results=args.results, data_dir=args.data_dir,
                   overrides=args.overrides, tasks=tasks, workers=args.workers, dry_run=args.dry_run, only=args.only,
                   max_jobs=args.max_jobs, retry_failed=args.retry_failed, launcher=args.launcher,
                   address=args.address, verbose=args.verbose, gpu=args.gpu, throughput=args.throughput)
    return result.exit_status


def cmd_quickstart(args: argparse.Namespace) -> int:
    """`harness sweep experiments/quickstart.yaml`, then its report (the README's first command)."""
    status = cmd_sweep(args)
    if status == 130 or args.dry_run:  # interrupted, or nothing ran: no report to write
        return status
    from harness.report.report_md import write_report
    from harness.study import load_grid

    experiment = load_grid(args.grid, args.scale, args.overrides, check_data=False).experiment
    try:
        written, messages = write_report(args.results, experiment)
    except HarnessError as err:  # e.g. every run failed: the sweep's own status says so, the report says why
        print(f"harness report: {err}", file=sys.stderr)
        return status or 1
    for message in messages:
        print(f"harness report: {message}", file=sys.stderr)
    print(f"report: {written[0]}")
    return status


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild each study's report from its run directories; bad input is one line each, the rest is written."""
    from harness.report.report_md import write_report

    command = " ".join(["harness report", str(args.results)] + (["--study", args.study] if args.study else [])
                       + (["--out", str(args.out)] if args.out else []))
    written, messages = write_report(args.results, args.study, args.out, command)
    for message in messages:
        print(f"harness report: {message}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return 0


def _report_args(command: argparse.ArgumentParser) -> None:
    command.add_argument("results", type=Path, help="a results root (e.g. results/) or one study's folder in it")
    command.add_argument("--study", help="only this study (its name, or its folder's name <name>-<scale>)")
    command.add_argument("--out", type=Path, help="write into OUT/<study folder>/ (default: <study folder>/report/)")


def _finetune_args(command: argparse.ArgumentParser) -> None:
    command.add_argument("--checkpoint", type=Path, required=True,
                         help="a save_pretrained directory with its tokenizer (e.g. a run's model/)")
    command.add_argument("--task", required=True, help="task name, e.g. sst2, mnli, squad_v2, conll2003")
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a fine-tuning setting, e.g. --set learning_rates=[3e-5] (repeatable)")
    command.add_argument("--data-dir", type=Path, default=None,
                         help="root holding glue/<TASK>/, squad/, ner/ (default: $HARNESS_DATA_DIR)")
    command.add_argument("--results", type=Path, default=Path("results"), help="results root folder")


def _evaluate_args(command: argparse.ArgumentParser) -> None:
    command.add_argument("--checkpoint", type=Path, required=True,
                         help="a save_pretrained directory with its MLM head and tokenizer (e.g. a run's model/)")
    command.add_argument("--task", required=True, help="zero-shot task: blimp")
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a setting, e.g. --set blimp.scoring=pll_word_l2r, "
                         "--set blimp.paradigms=adjunct_island,passive_1 (repeatable)")
    command.add_argument("--data-dir", type=Path, default=None,
                         help="root holding blimp/data/ (default: $HARNESS_DATA_DIR; neither: the hub)")
    command.add_argument("--results", type=Path, default=Path("results"), help="results root folder")


def _sweep_args(command: argparse.ArgumentParser, grid: Path | None = None, workers: int = 1) -> None:
    if grid is None:
        command.add_argument("grid", type=Path, help="grid file (see experiments/ and the README)")
    else:
        command.add_argument("--grid", type=Path, default=grid, help=f"grid file (default: {grid})")
    command.add_argument("--scale", help="a scale the grid file defines (e.g. quick, cpu, paper)")
    command.add_argument("--results", type=Path, default=Path("results"), help="results root folder")
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override one field of every pre-training run (repeatable)")
    command.add_argument("--tasks", metavar="A,B", help="fine-tune on these tasks instead of the file's")
    command.add_argument("--data-dir", type=Path, default=None,
                         help="root for relative corpus and task paths (default: $HARNESS_DATA_DIR)")
    command.add_argument("--workers", type=int, default=workers,
                         help="jobs in parallel; the cores (of the Ray cluster with --launcher ray) are split between "
                         f"them (default: {workers})")
    command.add_argument("--launcher", default="local", metavar="{local,ray}",
                         help="local: worker processes on this machine (default); ray: Ray tasks, on a local Ray "
                         "instance or the cluster at --address (pip install 'harness[ray]')")
    command.add_argument("--address", metavar="ADDR", help="with --launcher ray: an existing Ray cluster, e.g. auto or "
                         "ray://head:10001; --results must be on a file system every node shares")
    command.add_argument("--only", metavar="PATTERN", help="run only jobs whose name matches this glob "
                         "(e.g. 'pretrain/*', '*/sst2/*'), with the pre-training runs they need")
    command.add_argument("--max-jobs", type=int, help="run at most N jobs, then stop")
    command.add_argument("--dry-run", action="store_true", help="print the plan and the jobs to run; run nothing")
    command.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    command.add_argument("--gpu", metavar="NAME", help="with the plan, project each pre-training run's hours on one "
                         "such GPU from its datasheet bf16 peak at an assumed MFU (h100, h200, a100, l40s, l4, a10g, "
                         "4090)")
    command.add_argument("--throughput", type=Path, metavar="JSON", help="with the plan, project each pre-training "
                         "run's hours from a measured tokens_per_s (benchmarks/gpu_check.py's gpu_check.json)")
    command.add_argument("--verbose", action="store_true", help="show each job's own console lines (Lightning, "
                         "wandb, warnings) here too; without it they go to the job directory's console.log")


def _inspect_args(command: argparse.ArgumentParser) -> None:
    _add_config_args(command)
    command.add_argument("--batches", type=int, default=4, help="batches per epoch to write")
    command.add_argument("--epochs", type=int, default=1, help="epochs to write (masks differ by epoch)")
    command.add_argument("--out", type=Path, default=Path("batches.jsonl"), help="JSON lines output file")
    command.add_argument("--show", type=int, default=3, help="examples to print decoded")


def _config_only_args(command: argparse.ArgumentParser) -> None:
    _add_config_args(command, data=False)
    command.add_argument("--plain", action="store_true", help="omit the help comments")


def _pretrain_args(command: argparse.ArgumentParser) -> None:
    _add_config_args(command)
    command.add_argument("--results", type=Path, default=Path("results"), help="results root folder")


Command = tuple[str, Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]
COMMANDS: list[Command] = [
    ("config", cmd_config, "print the complete run config (every field with its help) as YAML", _config_only_args),
    ("tokenizer", cmd_tokenizer, "train (or load from cache) the tokenizer a config asks for", _add_config_args),
    ("corpus", cmd_corpus, "load, segment, tokenize and cache a corpus; print statistics", _add_config_args),
    ("inspect-data", cmd_inspect_data, "write the exact training batches as JSON lines, show and measure them",
     _inspect_args),
    ("pretrain", cmd_pretrain, "pre-train one run into results/<experiment>/runs/ (resumes if interrupted)",
     _pretrain_args),
    ("finetune", cmd_finetune, "fine-tune a checkpoint on a task over the lr x seed grid (paper protocol)",
     _finetune_args),
    ("evaluate", cmd_evaluate, "score a checkpoint zero-shot (BLiMP minimal pairs by MLM pseudo-log-likelihood)",
     _evaluate_args),
    ("sweep", cmd_sweep, "run a grid file: pre-train and fine-tune every job that is missing, print the table",
     _sweep_args),
    ("quickstart", cmd_quickstart, "the quickstart study: harness sweep experiments/quickstart.yaml, then its report",
     # two jobs at a time where there are two cores: the quickstart's jobs are small enough to share them
     lambda command: _sweep_args(command, grid=Path("experiments/quickstart.yaml"),
                                 workers=min(2, usable_cores()))),
    ("report", cmd_report, "rebuild a study's tables, figures and report.md from its run directories",
     _report_args),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Reproduce and extend the RoBERTa pre-training ablations (masking, NSP, input packing, "
        "batch size, tokenizer) with Lightning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help_text, add_args in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_args(command)
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
