"""Contract tests for the command line: every subcommand has --help, config errors are one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import build_parser, main
from harness.config import ConfigError, from_dict, load_config
from harness.study import load_study

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


def test_console_script_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("config", "tokenizer", "corpus"):
        assert command in out.stdout


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


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_validates(path):
    if path.name.endswith(".study.yaml"):
        study = load_study(path)
        assert study.arms and all(config.run_id() for config in study.arms.values())
    else:
        load_config(path)


def test_study_arms_differ_only_by_their_overrides_and_bad_arms_name_themselves(tmp_path):
    study = load_study(REPO / "experiments" / "quickstart.study.yaml")
    bert, roberta = study.arms["bert-recipe"], study.arms["roberta-recipe"]
    assert (bert.data.nsp, bert.model.family, roberta.data.packing) == (True, "bert", "full_sentences")
    assert bert.run_id() != roberta.run_id() and bert.run_name() == "bert-recipe"
    (tmp_path / "base.yaml").write_text("experiment: x\n")
    (tmp_path / "bad.study.yaml").write_text("base: base.yaml\narms:\n  broken: {data.packing: segments}\n")
    with pytest.raises(ConfigError, match="study arm 'broken': config field 'data.packing'"):
        load_study(tmp_path / "bad.study.yaml")
