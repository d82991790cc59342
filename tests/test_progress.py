"""Progress: tqdm bars (with loss and learning rate) on a terminal, log lines elsewhere, main process only.

The line-based side of a real training run is checked in test_report.py (its run's output
is captured through pipes); here a run in a pseudo-terminal shows the bars.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from conftest import TRAINER_SCRIPT, quick_args

from seqtune.progress import Progress, progress_mode


def run_in_terminal(command: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    """Run `command` with stdin/stdout/stderr on a pseudo-terminal; return (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        code = process.wait(timeout=60)
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def test_training_shows_a_bar_with_loss_and_learning_rate_on_a_terminal(t5_model, corpus_files, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SEQTUNE_PROGRESS",)}
    args = quick_args(
        t5_model,
        corpus_files,
        tmp_path / "out",
        "--do_train",
        "--do_eval",
        "--predict_with_generate",
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--save_steps",
        "4",
        "--max_eval_samples",
        "8",
    )
    code, output = run_in_terminal([sys.executable, TRAINER_SCRIPT, *args], env)
    assert code == 0, output[-3000:]
    assert "\r" in output  # the bar is redrawn in place
    assert re.search(r"Training: +100%.*4/4 \[[^\]]*(step/s|s/ step), loss=[\d.]+, lr=[\d.e-]+\]", output), output[
        -3000:
    ]
    assert re.search(r"Evaluating: +100%.*1/1 \[", output)
    assert "seqtune.progress: Training:" not in output  # no log lines where a bar is shown


def test_lines_mode_reports_each_tenth_with_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("SEQTUNE_PROGRESS_INTERVAL", "3600")
    with caplog.at_level(logging.INFO, logger="seqtune.progress"):
        with Progress(40, "Copying", unit="file", mode="lines") as progress:
            for _ in range(40):
                progress.update(1)
                time.sleep(0.001)
            progress.set_postfix(loss=1.25)
    lines = [record.getMessage() for record in caplog.records]
    assert [re.match(r"Copying: (\d+)/40 files", line).group(1) for line in lines] == [str(4 * k) for k in range(1, 11)]
    assert all("files/s" in line or "s/file" in line for line in lines)
    assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_deferred_line_waits_for_the_loss(monkeypatch, caplog):
    monkeypatch.setenv("SEQTUNE_PROGRESS_INTERVAL", "3600")
    with caplog.at_level(logging.INFO, logger="seqtune.progress"):
        progress = Progress(2, "Training", unit="step", mode="lines")
        progress.update(1, defer=True)
        assert not caplog.records
        progress.set_postfix(loss=2.5, lr=1e-3)
        progress.flush()
        progress.update(1)
        progress.close()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and "1/2 steps (50%) | loss 2.5 | lr 0.001" in lines[0]


def test_only_the_main_process_shows_progress(monkeypatch, caplog):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("SEQTUNE_PROGRESS", raising=False)
    assert progress_mode() == "off"
    with caplog.at_level(logging.INFO, logger="seqtune.progress"):
        with Progress(3, "Training", unit="step") as progress:
            progress.update(3)
            progress.write("a message")
    assert not caplog.records
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SEQTUNE_PROGRESS", "lines")
    assert progress_mode() == "lines"


SAVE_A_MODEL = """
import sys
from seqtune.progress import configure_library_progress
print(configure_library_progress())
from seqtune.demo import make_base_model
make_base_model(sys.argv[1])
"""


def test_library_bars_are_silenced_in_lines_mode_and_kept_for_bars(tmp_path):
    """transformers draws a bar while it saves a model ("Writing model shards", with carriage returns):
    not in a log (lines mode, as in `seqtune demo` writing its base model), but on a terminal (bar mode)."""
    env = {k: v for k, v in os.environ.items() if k != "SEQTUNE_PROGRESS"}
    outputs = {}
    for mode in ("", "bar"):  # "": stderr is a pipe, so lines mode by default
        result = subprocess.run(
            [sys.executable, "-c", SAVE_A_MODEL, str(tmp_path / (mode or "lines"))],
            capture_output=True,  # bytes: text mode would turn every "\r" into "\n"
            timeout=300,
            env=dict(env, SEQTUNE_PROGRESS=mode),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[mode] = result
    assert outputs[""].stdout.strip() == b"lines" and outputs["bar"].stdout.strip() == b"bar"
    assert b"\r" not in outputs[""].stderr and b"Writing model shards" not in outputs[""].stderr
    assert b"\r" in outputs["bar"].stderr and b"Writing model shards" in outputs["bar"].stderr
