"""scripts/gpu_check.sh: -h/--help prints its usage, an unknown option is refused, both before anything is made."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO

GPU_CHECK = os.path.join(REPO, "scripts", "gpu_check.sh")


def gpu_check(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Run the script in an empty folder, with its temporary folders in another empty one."""
    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(scratch))
    return subprocess.run(["bash", GPU_CHECK, *args], capture_output=True, text=True, timeout=60, cwd=work, env=env)


def nothing_made(tmp_path) -> bool:
    return not os.listdir(tmp_path / "cwd") and not os.listdir(tmp_path / "tmp")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_does_nothing_else(flag, tmp_path):
    result = gpu_check(tmp_path, flag)
    assert result.returncode == 0, result.stderr
    assert "scripts/gpu_check.sh [WORKDIR]" in result.stdout and "STEPS=40 BATCH=32 SIZE=small" in result.stdout
    lines = result.stdout.splitlines()
    assert not any(line.startswith(("#", "set ", "REPO=")) for line in lines)  # the comment's text, not the code
    assert result.stderr == ""
    assert nothing_made(tmp_path)  # no folder named -h, no temporary folder, no model


@pytest.mark.parametrize("args", [["--bogus"], ["-x", "work"], ["work", "--steps"]])
def test_unknown_option_is_refused_with_exit_code_2(args, tmp_path):
    result = gpu_check(tmp_path, *args)
    assert result.returncode == 2
    unknown = next(arg for arg in args if arg.startswith("-"))
    assert result.stderr.startswith(f"gpu_check.sh: unknown option '{unknown}'. Usage: scripts/gpu_check.sh [WORKDIR]")
    assert result.stdout == ""
    assert nothing_made(tmp_path)


def test_more_than_one_workdir_is_refused(tmp_path):
    result = gpu_check(tmp_path, "one", "two")
    assert result.returncode == 2
    assert "one WORKDIR at most, got 2: one two" in result.stderr
    assert nothing_made(tmp_path)


def test_slurm_script_without_a_command_says_how_to_use_it(tmp_path):
    """scripts/slurm/seqtune.sbatch run with no training script: the usage line, exit 2, before any srun."""
    sbatch = os.path.join(REPO, "scripts", "slurm", "seqtune.sbatch")
    result = subprocess.run(["bash", sbatch], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: sbatch [--nodes N] scripts/slurm/seqtune.sbatch TRAINING_SCRIPT")
    assert result.stdout == "" and not os.listdir(tmp_path)
