"""Reading a corpus and holding out its end: the same text and the same split for training, export and evaluate.

The held-out split is nanoGPT's: the last `val_fraction` of the text, no shuffling across the boundary
(111,540 characters of tinyshakespeare at 0.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from charlstm.errors import UserError

VAL_FRACTION = 0.1  # the last 10% of the text is held out, as nanoGPT splits it

Seq = TypeVar("Seq")


class TextError(UserError):
    """A text file that cannot be used; the message names the file and the fix."""


def read_text(path, keep_newlines: bool = False, param: str = "text") -> str:
    """Decode a UTF-8 file, strip a byte-order mark and (unless keep_newlines) turn \\r\\n into \\n."""
    path = Path(path)
    if not path.is_file():
        raise TextError(f"{param} file not found: {path} (pass an existing UTF-8 file)", param)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TextError(f"cannot read {path} ({e.strerror}): check the file", param) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"{path} is not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                        f"(convert it first, e.g. iconv -f latin1 -t utf-8)", param) from None
    text = text.removeprefix("\ufeff")
    if not keep_newlines:
        text = text.replace("\r\n", "\n")
    if not text:
        raise TextError(f"{path} is empty: give a file with some text in it", param)
    return text


def split(seq: Seq, val_fraction: float = VAL_FRACTION) -> tuple[Seq, Seq]:
    """(training part, held-out part) of a text or an id array: the held-out part is the last val_fraction."""
    cut = int(len(seq) * (1.0 - val_fraction))
    return seq[:cut], seq[cut:]
