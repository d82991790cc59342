"""The one error type for mistakes a user can fix, and the wrapper that reports it.

Anything the user can fix (a bad file, a bad flag, a missing column, an unreachable
hub) raises `UserError` with a message that says what, where and how to fix it. Entry
points run through `exit_on_user_error`, which prints the message and exits with 2;
an interrupt (Ctrl-C) becomes one line saying how to resume, and exit code 130; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


class UserError(Exception):
    """A problem in the user's input, with the fix in the message."""


def _output_dir_in(argv: list[str]) -> str | None:
    """The --output_dir of a command line (also inside a lone JSON/YAML config file), if it names one."""
    for position, arg in enumerate(argv):
        if arg == "--output_dir" and position + 1 < len(argv):
            return argv[position + 1]
        if arg.startswith("--output_dir="):
            return arg.split("=", 1)[1]
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) and os.path.isfile(argv[0]):
        try:
            with open(argv[0], encoding="utf-8") as handle:
                if argv[0].endswith(".json"):
                    config = json.load(handle)
                else:
                    import yaml

                    config = yaml.safe_load(handle)
        except Exception:  # an unreadable config: the generic line will do
            return None
        if isinstance(config, dict) and isinstance(config.get("output_dir"), str):
            return config["output_dir"]
    return None


def interrupted_message(argv: list[str] | None) -> str:
    """The one line printed on Ctrl-C: how to pick the run up again."""
    argv = list(sys.argv[1:] if argv is None else argv)
    output_dir = _output_dir_in(argv)
    if output_dir and "--overwrite_output_dir" in argv:
        return (
            f"seqtune: interrupted. Running the same command again starts afresh in {output_dir}; "
            f"without --overwrite_output_dir it resumes from the newest complete checkpoint there."
        )
    if output_dir:
        return (
            f"seqtune: interrupted. Run the same command again to resume from the newest complete checkpoint "
            f"in {output_dir} (a run stopped before its first checkpoint starts again)."
        )
    return (
        "seqtune: interrupted. Run the same command again: a training run resumes from the newest complete "
        "checkpoint in its --output_dir."
    )


def _exit_now_on_another_interrupt() -> None:
    """While the process winds down, a second Ctrl-C (or the SIGINT torchrun forwards to its
    workers) ends it at once, without a traceback from the middle of the shutdown."""

    def exit_now(signum, frame):
        os._exit(INTERRUPTED_EXIT_CODE)

    try:
        signal.signal(signal.SIGINT, exit_now)
    except ValueError:  # not the main thread: leave the handler as it is
        pass


def _is_main_rank() -> bool:
    """Rank 0 (or no distributed launcher): only it prints the interrupt line."""
    return os.environ.get("RANK", "0") in ("", "0")


_running = 0  # entry points running now, one inside another (`seqtune demo` runs the Trainer script's)


def exit_on_user_error(main=None, *, interrupted: str | None = None):
    """Decorate an entry point: a `UserError` becomes one line on stderr and exit code 2;
    Ctrl-C (KeyboardInterrupt) one line saying how to resume and exit code 130.

    `interrupted`: the line for Ctrl-C, where "run the same command again to resume" is not
    right (`@exit_on_user_error(interrupted="...")`). Of entry points run one inside another,
    the outermost reports an interrupt.
    """
    if main is None:
        return functools.partial(exit_on_user_error, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        global _running
        _running += 1
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"seqtune: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None
        except KeyboardInterrupt:
            if _running > 1:
                raise  # an entry point called by another one: that one says it
            _exit_now_on_another_interrupt()
            if _is_main_rank():
                argv = args[0] if args and isinstance(args[0], list) else kwargs.get("argv")
                try:
                    # On a terminal the cursor may stand after a progress bar or the echoed ^C.
                    newline = "\n" if sys.stderr.isatty() else ""
                    print(newline + (interrupted or interrupted_message(argv)), file=sys.stderr, flush=True)
                except (OSError, ValueError):  # stderr gone (a closed pipe): the exit code still says it
                    pass
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        finally:
            _running -= 1

    return wrapper
