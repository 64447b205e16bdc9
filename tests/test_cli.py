"""Contract tests for the command line: every subcommand has --help, config errors are one line, no traceback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import build_parser, main
from harness.config import from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: harness " + command in capsys.readouterr().out


def installed_harness() -> str:
    """The `harness` console script pip installed beside this interpreter (pyproject's [project.scripts])."""
    script = Path(sys.executable).parent / "harness"
    found = str(script) if script.is_file() else shutil.which("harness")
    assert found, f"no harness console script beside {sys.executable} or on PATH: pip install -e ."
    return found


@pytest.mark.parametrize("launcher", [[], [sys.executable, "-m", "harness"]], ids=["console-script", "python-m"])
def test_installed_entry_point_help_lists_every_subcommand(launcher):
    result = subprocess.run([*(launcher or [installed_harness()]), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: harness ")
    listed = re.findall(r"^    (\S+)", result.stdout, flags=re.MULTILINE)  # one line per command, with its help
    assert listed == _subcommands(), result.stdout


# A slice of WikiText-2 a command handles in seconds: 8 articles (7 train, 1 held out), a 500-token vocabulary.
SLICE = ["--set", "corpus.max_documents=8", "--set", "tokenizer.vocab_size=500", "--set", "impl.num_proc=1"]


def test_installed_tokenizer_command_trains_and_saves_a_tokenizer(shared_data, tmp_path):
    from transformers import AutoTokenizer

    result = subprocess.run([installed_harness(), "tokenizer", "--data-dir", str(shared_data), *SLICE,
                             "--set", f"impl.cache_dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"RobertaTokenizer with 500 tokens saved at (\S+)\n", result.stdout)
    assert match, result.stdout
    folder = Path(match.group(1))
    assert folder.parent == tmp_path / "tokenizers"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 500 and tokenizer.decode(tokenizer("The game began.")["input_ids"]) == (
        "<s>The game began.</s>")


def test_installed_corpus_command_caches_the_corpus_and_prints_its_statistics(shared_data, tmp_path):
    result = subprocess.run([installed_harness(), "corpus", "--data-dir", str(shared_data), *SLICE,
                             "--set", f"impl.cache_dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    train, validation = stats["train"], stats["validation"]
    assert (train["documents"], validation["documents"]) == (7, 1)  # 5% held out, at least one document
    assert min(train["sentences"], train["tokens"], validation["sentences"], validation["tokens"]) > 0
    assert train["tokens"] > train["sentences"] and train["chars"] > train["tokens"]
    assert (stats["vocab_size"], stats["tokenizer"], stats["loaded_from_cache"]) == (500, "RobertaTokenizer", False)
    cache, tokenizer = Path(stats["cache_dir"]), Path(stats["tokenizer_dir"])
    assert cache.parent == tmp_path / "corpora" and any(cache.iterdir())
    assert tokenizer.parent == tmp_path / "tokenizers" and (tokenizer / "tokenizer_config.json").is_file()


def test_config_prints_a_loadable_config_with_help(capsys):
    assert main(["config", "--preset", "mini", "--set", "data.masking=static"]) == 0
    text = capsys.readouterr().out
    assert "# fraction of non-special tokens chosen for prediction" in text
    config = from_dict(yaml.safe_load(text))
    assert config == load_config(preset="mini", overrides=["data.masking=static"])


def test_bad_override_is_one_line_error_without_traceback():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "config", "--set", "data.packing=segments"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "data.packing" in result.stderr and "segments" in result.stderr
    assert "Traceback" not in result.stderr


