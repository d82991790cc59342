"""The embedded default: `seqtune demo` learns, and says where its results are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


def test_demo_trains_a_tiny_model_that_clearly_improves(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "demo", "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = dict(re.findall(r"^\s+(rouge1|rouge2|rougeL|rougeLsum)\s+([\d.]+\s+[\d.]+)$", result.stdout, re.M))
    assert set(rows) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}, result.stdout
    before, after = map(float, rows["rouge1"].split())
    assert after > before + 30, result.stdout
    run_dir = out / "run"
    assert str(run_dir) in result.stdout
    results = json.loads((run_dir / "all_results.json").read_text())
    assert abs(results["eval_rouge1"] - after) < 0.01
    assert len((run_dir / "generated_predictions.txt").read_text().splitlines()) == 100
    assert os.path.exists(run_dir / "model.safetensors")


def test_cli_lists_its_commands():
    result = subprocess.run(
        [sys.executable, "-m", "seqtune.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "demo" in result.stdout and "train" in result.stdout
