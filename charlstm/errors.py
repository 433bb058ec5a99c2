"""The one exception type the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import sys
from contextlib import contextmanager


class UserError(Exception):
    """A mistake the user can fix (a bad value, a missing file). The message names the value and the fix.

    Anything else that escapes is a bug and keeps its traceback.
    """

    exit_code = 2


@contextmanager
def user_errors():
    """Turn a UserError into `error: ...` on stderr and its exit code; used around every command's body."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
