"""What the command line prints besides the generated text: one-line errors, and progress on stderr."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager

from charlstm.errors import UserError


def flag(param: str) -> str:
    return "--" + param.replace("_", "-")


def message(e: UserError, flags: dict[str, str] | None = None) -> str:
    """The error's one line in the command's words: the library's argument at fault, which starts the message,
    becomes its flag (`temperature 5` -> `--temperature 5`), and each `name=value` it suggests becomes the flag
    to type (`--unknown skip`)."""
    flags = flags or {}
    text = str(e)
    param = getattr(e, "param", None)
    if param and text.startswith(param + " "):
        text = flags.get(param, flag(param)) + text[len(param):]
    return re.sub(r"`(\w+)=([^`]*)`", lambda m: f"{flags.get(m[1], flag(m[1]))} {m[2]}", text)


@contextmanager
def user_errors(flags: dict[str, str] | None = None):
    """Turn a UserError into `error: ...` on stderr and its exit code; used around every command's body.
    `flags` maps a library argument to the flag that sets it where the names differ."""
    try:
        yield
    except UserError as e:
        print(f"error: {message(e, flags)}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class progress:
    """A rich progress bar on stderr, fed by progress(done, total) callbacks; quiet when stderr is not a terminal
    is rich's own choice."""

    def __init__(self, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True)
        self.description = description

    def __enter__(self):
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=None)
        return lambda done, total: self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        self.bar.stop()
