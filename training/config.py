"""The two configurations of a training run: the model's shape and how it is trained.

`ModelConfig` is shared with `export`: it is saved in every run folder (config.json) so no later step needs
a flag repeated. Each default has a one-line why.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from charlstm.errors import UserError
from charlstm.runtime.text import VAL_FRACTION


# The defaults are what a plain `charlstm train` trains: the recipe of the shipped models/shakespeare
# (docs/models.md has the runs behind each choice). `--preset seed` is the notebook's recipe.
@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embedding_dim: int = 256  # the notebook's embedding size
    units: int = 512  # two layers of 512 beat the notebook's one of 1024 on held-out text, with 3.7M weights
    layers: int = 2
    dropout: float = 0.25  # between layers and before the Dense: the notebook's recipe overfits by epoch 14
    recurrent_dropout: float = 0.25  # on h inside each LSTM, one mask per sequence (Gal & Ghahramani)
    weight_drop: float = 0.0  # DropConnect on each LSTM's recurrent kernel, one mask per batch (AWD-LSTM); off
    # until a run shows it helps (docs/models.md)
    embedding_dropout: float = 0.0  # whole characters' embedding rows dropped, one mask per batch (AWD-LSTM's
    # dropoute); off, like the next, until a run shows it helps
    input_dropout: float = 0.0  # on the first LSTM's input, one mask per sequence (AWD-LSTM's dropouti)

    def validate(self) -> None:
        _check(1 <= self.vocab_size <= 1 << 20, "vocab_size", f"vocab_size must be from 1 to 1,048,576, got {self.vocab_size}")
        _int(self, "embedding_dim", 1, 65_536)
        _int(self, "units", 1, 65_536)
        _int(self, "layers", 1, 64)
        _fraction(self, "dropout")
        _fraction(self, "recurrent_dropout")
        _fraction(self, "weight_drop")
        _fraction(self, "embedding_dropout")
        _fraction(self, "input_dropout")

    def parameters(self) -> int:
        """Number of weights: embedding, each LSTM's kernel, recurrent kernel and bias, and the Dense."""
        n = self.vocab_size * self.embedding_dim
        width = self.embedding_dim
        for _ in range(self.layers):
            n += 4 * self.units * (width + self.units + 1)
            width = self.units
        return n + self.units * self.vocab_size + self.vocab_size


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # recurrent dropout keeps improving for about 20 epochs; patience ends it sooner
    batch_size: int = 32  # half the notebook's 64: twice the updates per epoch, which a CPU run needs
    seq_length: int = 100  # the notebook's 100-character inputs (101-character windows)
    learning_rate: float = 2e-3  # twice Adam's default, safe with clipping, decayed from epoch 6
    clip_norm: float = 1.0  # global-norm clipping: an LSTM's gradients spike now and then
    lr_decay: float = 0.85  # learning rate x lr_decay each epoch after lr_decay_after (char-rnn: 0.97 after 10)
    lr_decay_after: int = 5  # epochs at the full learning rate before the decay starts
    val_fraction: float = VAL_FRACTION  # the last 10% of the text, as nanoGPT splits
    patience: int = 5  # stop after 5 epochs without a better validation loss; the best checkpoint is kept
    seed: int = 1337  # fixed so runs and resumes are reproducible
    stateful: bool = True  # carry LSTM state across consecutive batches of contiguous text (truncated BPTT)
    sample_every: int = 1  # print a sample every N epochs; 0 = never
    sample_prompt: str = "\n"  # a newline is in every text's vocabulary
    strategy: str = "none"  # "mirrored" = tf.distribute.MirroredStrategy over local GPUs
    keep_newlines: bool = False  # False normalises \r\n to \n

    def validate(self) -> None:
        _int(self, "epochs", 1, 100_000)
        _int(self, "batch_size", 1, 1 << 20)
        _int(self, "seq_length", 1, 1 << 20)
        _number(self, "learning_rate", 0.0, MAX_LEARNING_RATE, "a positive number up to 1, e.g. 2e-3", open_low=True)
        _number(self, "lr_decay", 0.0, 1.0, "in (0, 1]; 1 = constant", open_low=True)
        _int(self, "lr_decay_after", 0, 100_000)
        _number(self, "clip_norm", 0.0, 1e6, "0 (off) or a positive number, e.g. 1")
        _number(self, "val_fraction", 0.0, 1.0, "in (0, 1), e.g. 0.1", open_low=True, open_high=True)
        _int(self, "patience", 0, 100_000)
        _int(self, "seed", 0, MAX_SEED)
        _int(self, "sample_every", 0, 100_000)
        _check(self.strategy in ("none", "mirrored"), "strategy",
               f"strategy must be none or mirrored, got {self.strategy!r}")


# `default` is the dataclasses' defaults; `seed` is the notebook's recipe exactly; `finetune` is for --init-from:
# a lower learning rate decaying sooner and fewer epochs, so a small text refines the source model rather than
# overwriting it.
PRESETS: dict[str, dict] = {
    "default": {},
    "finetune": dict(learning_rate=5e-4, lr_decay_after=1, epochs=10, patience=3),
    "seed": dict(embedding_dim=256, units=1024, layers=1, dropout=0.0, recurrent_dropout=0.0,
                 epochs=50, batch_size=64, seq_length=100, learning_rate=1e-3, clip_norm=0.0, lr_decay=1.0,
                 stateful=False, patience=0),
}


class ConfigError(UserError, ValueError):
    """A user-facing configuration mistake; its message is one line naming the value and the fix."""


MAX_LEARNING_RATE = 1.0  # Adam above 1 diverges at once; the defaults are around 1e-3
MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed takes 32-bit seeds


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, param)


def _int(config, name: str, low: int, high: int) -> None:
    v = getattr(config, name)
    ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
    _check(ok, name, f"{name} must be an integer from {low:,} to {high:,}, got {v!r}")


def _number(config, name: str, low: float, high: float, expected: str, open_low=False, open_high=False) -> None:
    v = getattr(config, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (low < v if open_low else low <= v) and (v < high if open_high else v <= high)
    _check(ok, name, f"{name} must be {expected}, got {v!r}")


def _fraction(config, name: str) -> None:
    _number(config, name, 0.0, 1.0, "in [0, 1), e.g. 0.25", open_high=True)


def split_options(options: dict) -> tuple[dict, dict]:
    """Split a flat dict of options into ModelConfig and TrainConfig keyword arguments."""
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(options) - model_keys - train_keys
    if unknown:
        raise ConfigError(f"unknown options: {sorted(unknown)}")
    return ({k: v for k, v in options.items() if k in model_keys},
            {k: v for k, v in options.items() if k in train_keys})


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


__all__ = ["ModelConfig", "TrainConfig", "PRESETS", "ConfigError", "split_options", "to_dict", "from_dict"]
