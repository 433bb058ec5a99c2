"""`charlstm train`: options -> training.train.train. Needs the `train` extra (TensorFlow and Keras)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import user_errors
from charlstm.errors import UserError


class Preset(str, Enum):
    seed = "seed"
    default = "default"


class Strategy(str, Enum):
    none = "none"
    mirrored = "mirrored"


def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write (config, vocabulary, checkpoints, history).")],
    text: Annotated[Optional[Path], typer.Option("--text", help="UTF-8 text to train on. Optional with --resume.")] = None,
    preset: Annotated[Preset, typer.Option(help="seed = the notebook's recipe exactly; default = the best measured recipe.")] = Preset.default,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs to train (with --resume: the new total).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch (global, over all replicas).")] = None,
    seq_length: Annotated[Optional[int], typer.Option(help="Characters per training sequence (BPTT length).")] = None,
    embedding_dim: Annotated[Optional[int], typer.Option(help="Size of the character embedding.")] = None,
    units: Annotated[Optional[int], typer.Option(help="LSTM units per layer.")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Number of stacked LSTM layers.")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout after each LSTM layer, in [0, 1).")] = None,
    recurrent_dropout: Annotated[Optional[float], typer.Option(help="Dropout on each LSTM's recurrent input h, one mask per sequence, in [0, 1).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    lr_decay: Annotated[Optional[float], typer.Option(help="Multiply the learning rate by this every epoch after --lr-decay-after; 1 = constant.")] = None,
    lr_decay_after: Annotated[Optional[int], typer.Option(help="Epochs at the full learning rate before --lr-decay starts.")] = None,
    clip_norm: Annotated[Optional[float], typer.Option(help="Clip the global gradient norm to this; 0 = off.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Last fraction of the text held out for validation.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many epochs without a better validation loss; 0 = off.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (weights, shuffling, dropout).")] = None,
    stateful: Annotated[Optional[bool], typer.Option("--stateful/--stateless", help="Carry LSTM state across consecutive batches of contiguous text (truncated BPTT; recommended).")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Print a 200-character sample every N epochs; 0 = never.")] = None,
    keep_newlines: Annotated[bool, typer.Option(help="Keep \\r\\n line endings instead of normalising them to \\n.")] = False,
    strategy: Annotated[Strategy, typer.Option(help="mirrored = tf.distribute.MirroredStrategy over all local GPUs.")] = Strategy.none,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint, optimizer state included.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar (epoch summaries still go to stderr).")] = False,
) -> None:
    """Train a character-level LSTM on a UTF-8 text and write a self-describing run folder."""
    with user_errors():
        from charlstm.cli.extras import require
        require("train", "keras", "tensorflow") if _backend() == "tensorflow" else require("train", "keras")
        from charlstm.training.config import PRESETS, TrainConfig, split_options
        from charlstm.training.train import train as run_training

        given = {k: v for k, v in dict(
            epochs=epochs, batch_size=batch_size, seq_length=seq_length, embedding_dim=embedding_dim,
            units=units, layers=layers, dropout=dropout, recurrent_dropout=recurrent_dropout,
            learning_rate=learning_rate, lr_decay=lr_decay, lr_decay_after=lr_decay_after, clip_norm=clip_norm,
            val_fraction=val_fraction, patience=patience, seed=seed, stateful=stateful,
            sample_every=sample_every).items() if v is not None}
        if resume:
            extra = sorted(set(given) - {"epochs"})
            if extra:
                raise UserError(f"--resume takes its settings from {out / 'config.json'}; drop "
                                + ", ".join("--" + k.replace("_", "-") for k in extra))
            summary = run_training(text, out, resume=True, epochs=epochs, verbose=0 if quiet else 1)
        else:
            options = {**PRESETS[preset.value], **given, "keep_newlines": keep_newlines,
                       "strategy": strategy.value}
            model_options, train_options = split_options(options)
            summary = run_training(text, out, model_options, TrainConfig(**train_options),
                                   verbose=0 if quiet else 1)
        typer.echo(f"best validation loss {summary['best_val_loss']:.4f} nats/char at epoch "
                   f"{summary['best_epoch']} of {summary['epochs']}; run folder {summary['run_dir']}"
                   if summary["best_epoch"] else f"no epoch finished; run folder {summary['run_dir']}", err=True)


def _backend() -> str:
    import os
    return os.environ.get("KERAS_BACKEND", "tensorflow")
