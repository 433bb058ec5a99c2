"""Importing an optional extra with a one-line message that quotes the exact install command."""

from __future__ import annotations

import importlib
import os

from charlstm.errors import UserError


def require(extra: str, *modules: str) -> None:
    """Fail with one line if any of `modules` is missing, naming the extra that brings it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"`charlstm {extra}` needs {name}, which is not installed: "
                            f"pip install 'charlstm[{extra}]'") from None
