"""A corpus as the notebook reads it: UTF-8 in, a clean string and its vocabulary out.

The vocabulary is the notebook's: the sorted set of the text's characters, id = position in that list. Reading
the file and the held-out split are charlstm.runtime.text's, so that training, export and evaluate agree.
"""

from __future__ import annotations

import numpy as np

from charlstm.runtime.text import TextError as CorpusError  # a corpus that cannot be trained on


def build_vocab(text: str) -> list[str]:
    """The notebook's vocabulary: sorted set of characters."""
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> np.ndarray:
    stoi = {ch: i for i, ch in enumerate(vocab)}
    try:
        return np.fromiter((stoi[ch] for ch in text), dtype=np.int32, count=len(text))
    except KeyError as e:
        raise CorpusError(f"character {e.args[0]!r} is not in the vocabulary", "text") from None


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[int(i)] for i in ids)


def count_batches(characters: int, batch_size: int, seq_length: int, stateful: bool, shuffle: bool,
                  name: str) -> int:
    """Batches an epoch of `characters` makes (training.data.CharBatches); CorpusError when not even one."""
    if stateful:
        stream = characters // batch_size
        # room for the largest offset (seq_length - 1) plus one target character
        n = (stream - seq_length) // seq_length if shuffle else (stream - 1) // seq_length
    else:
        windows = (characters - seq_length) // (seq_length + 1) if shuffle else characters // (seq_length + 1)
        n = windows // batch_size
    if n < 1:
        raise CorpusError(f"the {name} split has {characters:,} characters, too few for one batch of {batch_size} x "
                          f"{seq_length + 1} characters (needs about {batch_size * (seq_length + 1) + seq_length:,}): "
                          "use a longer text, a smaller --batch-size or --seq-length, or a larger --val-fraction",
                          "text")
    return n
