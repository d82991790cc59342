"""The one error type for mistakes a user can fix, and the wrapper that reports it.

Anything the user can fix (a bad file, a bad flag, a missing column, an unreachable
hub) raises `UserError` with a message that says what, where and how to fix it. Entry
points run through `exit_on_user_error`, which prints the message and exits with 2;
every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem in the user's input, with the fix in the message."""


def exit_on_user_error(main):
    """Decorate an entry point: a `UserError` becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"seqtune: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None

    return wrapper
