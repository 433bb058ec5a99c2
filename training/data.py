"""Batches of (input ids, target ids) as keras.utils.PyDataset: numpy only, so any Keras backend can use them.

Two layouts:
- windows (the notebook): the text cut into seq_length + 1 character windows, shuffled, batched. Each epoch
  starts the cut at a different offset, so no window boundary is seen twice in the same place.
- streams (--stateful): the text split into batch_size contiguous streams; batch i holds the i-th
  seq_length slice of every stream, so the LSTM state left by batch i is the right start for batch i + 1.

Every random choice is a pure function of (seed, epoch): a resumed run sees exactly the batches that an
uninterrupted one would.
"""

from __future__ import annotations

import keras
import numpy as np

from charlstm.training.corpus import count_batches


class CharBatches(keras.utils.PyDataset):
    def __init__(self, ids: np.ndarray, batch_size: int, seq_length: int, stateful: bool,
                 seed: int, shuffle: bool, name: str):
        super().__init__()
        self.ids, self.batch_size, self.seq_length = ids.astype(np.int32), batch_size, seq_length
        self.stateful, self.seed, self.shuffle = stateful, seed, shuffle
        self.epoch = 0
        self.stream_length = len(ids) // batch_size
        self.n_batches = count_batches(len(ids), batch_size, seq_length, stateful, shuffle, name)

    def __len__(self) -> int:
        return self.n_batches

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def __getitem__(self, index: int):
        n = self.seq_length
        if self.stateful:
            offset = int(self._rng().integers(n)) if self.shuffle else 0
            streams = self.ids[: self.stream_length * self.batch_size].reshape(self.batch_size, -1)
            start = offset + index * n
            chunk = streams[:, start: start + n + 1]
        else:
            rng = self._rng()
            offset = int(rng.integers(n + 1)) if self.shuffle else 0
            n_windows = self.n_batches * self.batch_size
            order = rng.permutation(n_windows) if self.shuffle else np.arange(n_windows)
            pick = order[index * self.batch_size: (index + 1) * self.batch_size]
            starts = offset + pick * (n + 1)
            chunk = self.ids[starts[:, None] + np.arange(n + 1)]
        return chunk[:, :-1], chunk[:, 1:]


class Tail(keras.utils.PyDataset):
    """Batches `start`.. of `base`'s epoch: the rest of an epoch that a killed run had begun."""

    def __init__(self, base: CharBatches, start: int):
        super().__init__()
        self.base, self.start = base, start

    def __len__(self) -> int:
        return len(self.base) - self.start

    def __getitem__(self, index: int):
        return self.base[self.start + index]


class Rows(keras.utils.PyDataset):
    """This process's rows of each of `base`'s global batches, in a group (training/distributed.py). A row is the
    same stream in every batch, so each process carries its streams' state on."""

    def __init__(self, base: keras.utils.PyDataset, rows: slice):
        super().__init__()
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x[self.rows], y[self.rows]


class SetEpoch(keras.callbacks.Callback):
    """Tells the datasets which epoch is starting, so their shuffling depends on (seed, epoch) only."""

    def __init__(self, *datasets: CharBatches):
        super().__init__()
        self.datasets = datasets

    def on_epoch_begin(self, epoch, logs=None):
        for d in self.datasets:
            d.epoch = epoch
