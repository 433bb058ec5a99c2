"""`charlstm train`: options -> training.train.train. Needs the `train` extra (TensorFlow and Keras)."""

from __future__ import annotations

import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import message, user_errors
from charlstm.errors import UserError

FLAGS = {"out": "--out", "text": "--text", "init_from": "--init-from", "resume": "--resume"}


class Preset(str, Enum):
    seed = "seed"
    default = "default"
    finetune = "finetune"


class Strategy(str, Enum):
    none = "none"
    mirrored = "mirrored"


def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write (config, vocabulary, checkpoints, history).")],
    text: Annotated[Optional[Path], typer.Option("--text", help="UTF-8 text to train on. When --out holds a run: optional, and must be that run's text.")] = None,
    preset: Annotated[Optional[Preset], typer.Option(help="default = the best measured recipe; seed = the notebook's recipe exactly; finetune = for --init-from (lower learning rate, 10 epochs). Default: finetune with --init-from, else default.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs to train in all (continuing a run: may raise its total).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch (global, over all replicas).")] = None,
    seq_length: Annotated[Optional[int], typer.Option(help="Characters per training sequence (BPTT length).")] = None,
    embedding_dim: Annotated[Optional[int], typer.Option(help="Size of the character embedding.")] = None,
    units: Annotated[Optional[int], typer.Option(help="LSTM units per layer.")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Number of stacked LSTM layers.")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout after each LSTM layer, in [0, 1).")] = None,
    recurrent_dropout: Annotated[Optional[float], typer.Option(help="Dropout on each LSTM's recurrent input h, one mask per sequence, in [0, 1).")] = None,
    weight_drop: Annotated[Optional[float], typer.Option(help="DropConnect on each LSTM's recurrent weights, one mask per batch (AWD-LSTM's weight drop), in [0, 1); the exported graph is unchanged.")] = None,
    embedding_dropout: Annotated[Optional[float], typer.Option(help="Drop whole characters from the embedding, one mask per batch (AWD-LSTM's dropoute), in [0, 1); the exported graph is unchanged.")] = None,
    input_dropout: Annotated[Optional[float], typer.Option(help="Dropout on the first LSTM's input (the embedding), one mask per sequence (AWD-LSTM's dropouti), in [0, 1).")] = None,
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
    resume: Annotated[bool, typer.Option(help="Continue the run in --out, taking every setting from its config.json (the same command continues it too, without this flag).")] = False,
    force: Annotated[bool, typer.Option(help="Start a new run in --out even though it holds another run, which is replaced.")] = False,
    save_every: Annotated[int, typer.Option(min=0, help="Batches between mid-epoch resume points (each epoch's end has one too); 0 = at epoch ends only.")] = 200,
    init_from: Annotated[Optional[Path], typer.Option(metavar="SOURCE", help="Fine-tune: start from the weights and model shape of a run folder or of a model folder (e.g. models/shakespeare); the new text's unseen characters get new rows.")] = None,
    checkpoint: Annotated[str, typer.Option(help="With --init-from a run folder: best, last, or a .weights.h5 file of that run.")] = "best",
    quiet: Annotated[bool, typer.Option(help="No progress bar (epoch summaries still go to stderr).")] = False,
    coordinator: Annotated[Optional[str], typer.Option(metavar="HOST:PORT", help="Train as one process of a group, one per machine (KERAS_BACKEND=jax): process 0's address and a free port, the same on every process. Default: $JAX_COORDINATOR_ADDRESS.", show_default=False)] = None,
    num_processes: Annotated[Optional[int], typer.Option(help="With --coordinator: processes in the group; --batch-size is split among them. Default: $JAX_NUM_PROCESSES.", show_default=False)] = None,
    process_id: Annotated[Optional[int], typer.Option(help="With --coordinator: this process, 0 to N-1; process 0 alone writes --out, which must be on a filesystem every machine shares. Default: $JAX_PROCESS_ID.", show_default=False)] = None,
) -> None:
    """Train a character-level LSTM on a UTF-8 text and write a self-describing run folder.

    Run again, the same command continues the run in --out from its last resume point (at most --save-every
    batches back), as a preemptible job's scheduler reruns it: a flag that differs from the run's settings is
    refused, naming both values; --force starts a new run there instead. With --coordinator, the same command on
    every machine (but --process-id) trains one run as a group (docs/training.md).
    """
    with user_errors(FLAGS):
        from charlstm.training import distributed
        from charlstm.training import run as run_folder
        from charlstm.training.config import PRESETS, TrainConfig, split_options
        from charlstm.training.plan import plan

        given = {k: v for k, v in dict(
            epochs=epochs, batch_size=batch_size, seq_length=seq_length, embedding_dim=embedding_dim,
            units=units, layers=layers, dropout=dropout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
            embedding_dropout=embedding_dropout, input_dropout=input_dropout,
            learning_rate=learning_rate, lr_decay=lr_decay, lr_decay_after=lr_decay_after, clip_norm=clip_norm,
            val_fraction=val_fraction, patience=patience, seed=seed, stateful=stateful,
            sample_every=sample_every).items() if v is not None}
        if keep_newlines:
            given["keep_newlines"] = True
        if strategy != Strategy.none:
            given["strategy"] = strategy.value
        name = (preset or (Preset.finetune if init_from else Preset.default)).value
        if preset is not None:  # an explicit preset's values count as given: a continued run checks them too
            given = {**PRESETS[name], **given}
        options = {**PRESETS[name], **given}
        model_options, train_options = split_options(options)
        settings = dict(given=given, resume=resume, force=force, init_from=init_from, init_checkpoint=checkpoint)
        # Checked before importing Keras (seconds): a refused flag or a held folder is told at once.
        group = distributed.parse(coordinator, num_processes, process_id)
        p = plan(text, out, model_options, TrainConfig(**train_options), writer=group.is_writer, **settings)
        distributed.check_plan(group, p.tc)
        if group.is_writer:
            run_folder.check_unlocked(out)
        distributed.check_address(group)
        distributed.watch_stderr(group)
        from charlstm.cli.extras import require_keras
        require_keras("train")
        from charlstm.training.train import train as run_training
        try:
            summary = run_training(text, out, model_options, TrainConfig(**train_options), save_every=save_every,
                                   verbose=0 if quiet else 1, group=group, **settings)
        except BaseException as e:
            if group.active:
                _leave(e)
            raise
        if not group.is_writer:
            typer.echo(f"process {group.process_id}: ", err=True, nl=False)
        typer.echo(f"best validation loss {summary['best_val_loss']:.4f} nats/char at epoch "
                   f"{summary['best_epoch']} of {summary['epochs']}; run folder {summary['run_dir']}"
                   if summary["best_epoch"] else f"no epoch finished; run folder {summary['run_dir']}", err=True)


def _leave(e: BaseException) -> None:
    """A process of a group that fails leaves at once: JAX's exit handler would wait minutes at its shutdown
    barrier for processes that are gone, or stuck in a collective that waits for this one."""
    if isinstance(e, UserError):
        print(f"error: {message(e, FLAGS)}", file=sys.stderr)
        code = e.exit_code
    elif isinstance(e, KeyboardInterrupt):
        code = 130
    else:  # a bug: its traceback
        traceback.print_exception(e)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
