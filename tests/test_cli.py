"""The `seqtune` command itself, in real subprocesses: help, usage, unknown commands, dispatch, error lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from seqtune import __version__
from seqtune.cli import COMMANDS

EXPECTED_COMMANDS = {"demo", "train", "train-loop", "report", "summarize", "translate"}


def seqtune(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `seqtune` console script (or the module, where the script is not installed)."""
    script = os.path.join(os.path.dirname(sys.executable), "seqtune")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "seqtune.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="400")  # wide: argparse wraps no help text
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, env=env)


def choices_in_usage(text: str) -> set[str]:
    match = re.search(r"usage: seqtune \[-h\] \[--version\] \{([^}]*)\}", text)
    assert match, text
    return set(match.group(1).split(","))


def test_the_command_table_is_complete():
    assert set(COMMANDS) == EXPECTED_COMMANDS
    assert all(help_text.strip() for help_text in COMMANDS.values())


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_command_with_its_help(flag):
    result = seqtune(flag)
    assert result.returncode == 0, result.stderr
    assert choices_in_usage(result.stdout) == EXPECTED_COMMANDS
    text = " ".join(result.stdout.split())
    for name, help_text in COMMANDS.items():
        assert f"{name}: {help_text}" in text, name
    assert "Traceback" not in result.stderr


def test_no_arguments_prints_usage_and_exits_2():
    result = seqtune()
    assert result.returncode == 2
    assert result.stdout == ""
    assert choices_in_usage(result.stderr) == EXPECTED_COMMANDS
    assert "seqtune: error: the following arguments are required: command" in result.stderr


def test_an_unknown_command_exits_2_with_invalid_choice():
    result = seqtune("trian", "--do_train")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "seqtune: error: argument command: invalid choice: 'trian'" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_help_reaches_the_report_parser():
    result = seqtune("report", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: seqtune report")
    assert "output_dir" in result.stdout and "--output_dir of a seqtune run" in result.stdout


def test_report_on_a_missing_folder_is_one_error_line(tmp_path):
    missing = str(tmp_path / "nonexistent")
    result = seqtune("report", missing)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seqtune: error:") and missing in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in result.stderr


def test_report_on_a_folder_without_a_run_is_one_error_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = seqtune("report", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqtune: error:") and "holds no seqtune run" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # nothing written


def test_version_prints_the_package_version_and_exits_0():
    result = seqtune("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"seqtune {__version__}\n" == "seqtune 0.1.0\n"
    assert result.stderr == ""
