"""Contract tests for the command line: every subcommand has --help, config errors are one line, no traceback."""

from __future__ import annotations

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


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_run_config_file_validates(path):
    """Grid files (experiments/*.yaml) are validated at every scale in test_study_grid.py."""
    assert load_config(path).run_id()
