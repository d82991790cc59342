"""seqtune.errors: a UserError becomes one stderr line and exit code 2; everything else keeps its traceback."""

from __future__ import annotations

import pytest

from seqtune.errors import USER_ERROR_EXIT_CODE, UserError, exit_on_user_error


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


def test_exit_and_interrupt_pass_through():
    @exit_on_user_error
    def stop(code):
        raise SystemExit(code)

    @exit_on_user_error
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as excinfo:
        stop(5)
    assert excinfo.value.code == 5
    with pytest.raises(KeyboardInterrupt):
        interrupted()


def test_return_value_and_arguments_pass_through(capsys):
    @exit_on_user_error
    def main(argv, *, verbose=False):
        """The entry point."""
        return {"argv": argv, "verbose": verbose}

    assert main(["--do_train"], verbose=True) == {"argv": ["--do_train"], "verbose": True}
    assert main.__name__ == "main" and main.__doc__ == "The entry point."  # functools.wraps
    assert capsys.readouterr().err == ""
