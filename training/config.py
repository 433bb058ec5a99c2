"""The two configurations of a training run: the model's shape and how it is trained.

`ModelConfig` is shared with `export`: it is saved in every run folder (config.json) so no later step needs
a flag repeated. Each default has a one-line why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from charlstm.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embedding_dim: int = 256  # the notebook's embedding size
    units: int = 1024  # the notebook's LSTM width
    layers: int = 1  # the notebook stacks one LSTM
    dropout: float = 0.0  # between layers and before the Dense; the notebook had none
    recurrent_dropout: float = 0.0  # on h inside each LSTM, one mask per sequence (Gal & Ghahramani)

    def validate(self) -> None:
        _check(self.vocab_size >= 1, f"vocab_size must be at least 1, got {self.vocab_size}")
        _check(self.embedding_dim >= 1, f"--embedding-dim must be at least 1, got {self.embedding_dim}")
        _check(self.units >= 1, f"--units must be at least 1, got {self.units}")
        _check(self.layers >= 1, f"--layers must be at least 1, got {self.layers}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        _check(0.0 <= self.recurrent_dropout < 1.0,
               f"--recurrent-dropout must be in [0, 1), got {self.recurrent_dropout}")

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
    epochs: int = 50  # the notebook's count; early stopping usually ends sooner
    batch_size: int = 64  # the notebook's batch
    seq_length: int = 100  # the notebook's 100-character inputs (101-character windows)
    learning_rate: float = 1e-3  # Adam's default, as the notebook
    clip_norm: float = 0.0  # 0 = no clipping (the notebook did none)
    lr_decay: float = 1.0  # learning rate x lr_decay each epoch after lr_decay_after (char-rnn: 0.97 after 10)
    lr_decay_after: int = 10  # epochs at the full learning rate before the decay starts
    val_fraction: float = 0.1  # the last 10% of the text, as nanoGPT splits
    patience: int = 0  # 0 = no early stopping; the best checkpoint is kept either way
    seed: int = 1337  # fixed so runs and resumes are reproducible
    stateful: bool = False  # carry LSTM state across consecutive batches (truncated BPTT)
    sample_every: int = 1  # print a sample every N epochs; 0 = never
    sample_prompt: str = "\n"  # a newline is in every text's vocabulary
    strategy: str = "none"  # "mirrored" = tf.distribute.MirroredStrategy over local GPUs
    keep_newlines: bool = False  # False normalises \r\n to \n

    def validate(self) -> None:
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(self.seq_length >= 1, f"--seq-length must be at least 1, got {self.seq_length}")
        _check(self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}")
        _check(0.0 < self.lr_decay <= 1.0, f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        _check(self.lr_decay_after >= 0, f"--lr-decay-after must be 0 or more, got {self.lr_decay_after}")
        _check(self.clip_norm >= 0, f"--clip-norm must be 0 (off) or positive, got {self.clip_norm}")
        _check(0.0 < self.val_fraction < 1.0, f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.patience >= 0, f"--patience must be 0 (off) or positive, got {self.patience}")
        _check(self.sample_every >= 0, f"--sample-every must be 0 (off) or positive, got {self.sample_every}")
        _check(self.strategy in ("none", "mirrored"), f"--strategy must be none or mirrored, got {self.strategy!r}")


# `seed` is the notebook's recipe exactly. `default` is the recipe of the shipped models/shakespeare (README,
# "Default models"): two layers, dropout between them and variational dropout on h, a higher learning rate
# with clipping and a decay, state carried across batches, smaller batches for more updates per epoch on a CPU.
PRESETS: dict[str, dict] = {
    "seed": dict(embedding_dim=256, units=1024, layers=1, dropout=0.0,
                 epochs=50, batch_size=64, seq_length=100, learning_rate=1e-3, clip_norm=0.0, stateful=False),
    "default": dict(embedding_dim=256, units=512, layers=2, dropout=0.25, recurrent_dropout=0.25,
                    epochs=30, batch_size=32, seq_length=100, learning_rate=2e-3, lr_decay=0.85, lr_decay_after=5,
                    clip_norm=1.0, stateful=True, patience=5),
}


class ConfigError(UserError, ValueError):
    """A user-facing configuration mistake; its message is one line naming the value and the fix."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
