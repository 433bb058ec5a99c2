"""Reading a corpus: UTF-8 in, a clean string and its vocabulary out.

The vocabulary is the notebook's: the sorted set of the text's characters, id = position in that list.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from training.config import ConfigError


class CorpusError(ConfigError):
    """A corpus that cannot be trained on; the message names the file and the fix."""


def read_text(path: str | Path, keep_newlines: bool = False) -> str:
    """Decode a UTF-8 file, strip a byte-order mark and (unless keep_newlines) turn \\r\\n into \\n."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"text file not found: {path} (pass an existing UTF-8 file to --text)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{path} is not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"(convert it first, e.g. iconv -f latin1 -t utf-8)") from None
    text = text.removeprefix("\ufeff")
    if not keep_newlines:
        text = text.replace("\r\n", "\n")
    if not text:
        raise CorpusError(f"{path} is empty: give --text a file with some text in it")
    return text


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_vocab(text: str) -> list[str]:
    """The notebook's vocabulary: sorted set of characters."""
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> np.ndarray:
    stoi = {ch: i for i, ch in enumerate(vocab)}
    try:
        return np.fromiter((stoi[ch] for ch in text), dtype=np.int32, count=len(text))
    except KeyError as e:
        raise CorpusError(f"character {e.args[0]!r} is not in the vocabulary") from None


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[int(i)] for i in ids)


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last val_fraction of the text is held out, as nanoGPT does (no shuffling across the split)."""
    n_train = int(len(ids) * (1.0 - val_fraction))  # nanoGPT's int(n * 0.9): 111,540 val chars of tinyshakespeare
    return ids[:n_train], ids[n_train:]
