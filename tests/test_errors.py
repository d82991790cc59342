"""seqtune.errors: a UserError becomes one stderr line and exit code 2, Ctrl-C one line and exit code 130;
everything else keeps its traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args

from seqtune.errors import (
    INTERRUPTED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    UserError,
    exit_on_user_error,
    interrupted_message,
)


def test_user_error_becomes_one_line_and_exit_code_2(capsys):
    @exit_on_user_error
    def main():
        print("working")
        raise UserError("--train_file data.csv: no such file. Fix: check the path.")

    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 2 == USER_ERROR_EXIT_CODE
    captured = capsys.readouterr()
    assert captured.err == "seqtune: error: --train_file data.csv: no such file. Fix: check the path.\n"
    assert captured.out == "working\n"  # nothing of the error goes to stdout
    # `from None`: no chained "During handling of the above exception" traceback.
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_subclass_of_user_error_is_reported_too(capsys):
    class MissingColumn(UserError):
        pass

    @exit_on_user_error
    def main():
        raise MissingColumn("column 'summary' not found")

    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 2
    assert capsys.readouterr().err == "seqtune: error: column 'summary' not found\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("missing"), RuntimeError("boom")])
def test_other_exceptions_propagate_unchanged(error, capsys):
    @exit_on_user_error
    def main():
        raise error

    with pytest.raises(type(error)) as excinfo:
        main()
    assert excinfo.value is error  # the very same object, traceback intact
    assert capsys.readouterr().err == ""


def test_exit_passes_through():
    @exit_on_user_error
    def stop(code):
        raise SystemExit(code)

    with pytest.raises(SystemExit) as excinfo:
        stop(5)
    assert excinfo.value.code == 5


@pytest.fixture()
def sigint_handler_restored():
    """An interrupt replaces the SIGINT handler (a second Ctrl-C exits at once): restore pytest's."""
    saved = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, saved)


def test_interrupt_becomes_one_line_and_exit_code_130(capsys, monkeypatch, sigint_handler_restored):
    monkeypatch.delenv("RANK", raising=False)

    @exit_on_user_error
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as excinfo:
        main(["--do_train", "--output_dir", "runs/t5"])
    assert excinfo.value.code == 130 == INTERRUPTED_EXIT_CODE
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    err = capsys.readouterr().err
    assert err == (
        "seqtune: interrupted. Run the same command again to resume from the newest complete checkpoint in "
        "runs/t5 (a run stopped before its first checkpoint starts again).\n"
    )
    # A second Ctrl-C while the process winds down (torchrun forwards one) exits at once, without a traceback.
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler


def test_interrupt_on_another_rank_is_silent(capsys, monkeypatch, sigint_handler_restored):
    monkeypatch.setenv("RANK", "1")  # torchrun's second process: rank 0 says it once

    @exit_on_user_error
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as excinfo:
        main(["--output_dir", "out"])
    assert excinfo.value.code == 130
    assert capsys.readouterr().err == ""


def test_entry_point_inside_another_the_outer_one_reports_once(capsys, monkeypatch, sigint_handler_restored):
    """`seqtune demo` runs the Trainer script's main: the demo's own interrupt line, said once."""
    monkeypatch.delenv("RANK", raising=False)

    @exit_on_user_error
    def inner(argv):
        raise KeyboardInterrupt

    @exit_on_user_error(interrupted="seqtune: interrupted. Run the same command again: the demo starts afresh.")
    def outer(argv):
        return inner(["--output_dir", "outputs/demo/run", "--overwrite_output_dir"])

    with pytest.raises(SystemExit) as excinfo:
        outer([])
    assert excinfo.value.code == 130
    assert capsys.readouterr().err == "seqtune: interrupted. Run the same command again: the demo starts afresh.\n"

    @exit_on_user_error
    def inner_mistake(argv):
        raise UserError("bad flag. Fix: drop it.")

    @exit_on_user_error()
    def outer_of_mistake(argv):
        return inner_mistake([])

    with pytest.raises(SystemExit) as excinfo:
        outer_of_mistake([])
    assert excinfo.value.code == 2
    assert capsys.readouterr().err == "seqtune: error: bad flag. Fix: drop it.\n"
    with pytest.raises(SystemExit) as excinfo:  # and the count of running entry points is back to 0
        inner([])
    assert "resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--output_dir", "out/a"], "resume from the newest complete checkpoint in out/a "),
        (["--do_train", "--output_dir=out/b"], "resume from the newest complete checkpoint in out/b "),
        (["--output_dir", "out/c", "--overwrite_output_dir"], "starts afresh in out/c; without --overwrite_output_dir"),
        (["--model", "m", "a.txt"], "a training run resumes from the newest complete checkpoint in its --output_dir"),
    ],
)
def test_interrupt_message_says_how_to_resume(argv, expected):
    message = interrupted_message(argv)
    assert message.startswith("seqtune: interrupted. ") and "\n" not in message
    assert expected in message


def test_interrupt_message_reads_the_output_dir_of_a_config_file(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"output_dir": "runs/from-config", "do_train": True}))
    assert "checkpoint in runs/from-config " in interrupted_message([str(config)])
    (tmp_path / "run.yaml").write_text("output_dir: runs/from-yaml\ndo_train: true\n")
    assert "checkpoint in runs/from-yaml " in interrupted_message([str(tmp_path / "run.yaml")])


def test_return_value_and_arguments_pass_through(capsys):
    @exit_on_user_error
    def main(argv, *, verbose=False):
        """The entry point."""
        return {"argv": argv, "verbose": verbose}

    assert main(["--do_train"], verbose=True) == {"argv": ["--do_train"], "verbose": True}
    assert main.__name__ == "main" and main.__doc__ == "The entry point."  # functools.wraps
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- Ctrl-C in a real run


@pytest.mark.parametrize("script", [TRAINER_SCRIPT, LOOP_SCRIPT], ids=["trainer", "no_trainer"])
def test_ctrl_c_while_training_is_one_line_and_exit_code_130(script, t5_model, corpus_files, tmp_path):
    out = tmp_path / "run"
    if script == TRAINER_SCRIPT:
        extra = ["--do_train", "--max_steps", "100000", "--logging_steps", "1", "--save_steps", "100000"]
    else:
        extra = ["--max_train_steps", "100000", "--logging_steps", "1"]
    args = quick_args(t5_model, corpus_files, out, *extra)
    stderr_path = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would stall the run
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, script, *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # Ctrl-C must reach it even where this test runs with SIGINT ignored (a background job).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            log = out / "log_history.jsonl"
            deadline = time.monotonic() + 300
            while not (log.exists() and '"event": "train"' in log.read_text()):  # a training step was logged
                assert process.poll() is None, stderr_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the run never started training"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    err = stderr_path.read_text()
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == [
        f"seqtune: interrupted. Run the same command again to resume from the newest complete checkpoint in "
        f"{out} (a run stopped before its first checkpoint starts again)."
    ]
    assert err.splitlines()[-1] == lines[0]  # the last word
