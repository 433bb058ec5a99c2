"""`charlstm train`: corpus -> batches -> model.fit with callbacks that keep the run folder whole.

The loop is Keras' own `fit`; what this file adds is the run folder (see training/run.py): per-epoch and best
checkpoints, resume points at each epoch's end and every few hundred batches (training/resume.py), history,
samples, early stopping that survives a resume, a stop on divergence, a lock against a second trainer, and
fine-tuning from another run (training/finetune.py). Whether a command starts a run or continues the folder's
is training/plan.py's decision. With `group`, one process of several trains on its rows of every batch and only
process 0 writes (training/distributed.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sys
from pathlib import Path

import keras

from charlstm.runtime import machine as machine_info
from charlstm.runtime import text as text_io
from charlstm.runtime.files import sha256_file
from charlstm.training import corpus, distributed, finetune, resume, run
from charlstm.training.callbacks import Divergence, RunWriter
from charlstm.training.config import ConfigError, ModelConfig, TrainConfig, to_dict
from charlstm.training.data import CharBatches, Rows, SetEpoch, Tail
from charlstm.training.distributed import Group
from charlstm.training.model import build_model, learned_weights
from charlstm.training.plan import Plan, plan

RUN_FORMAT = "charlstm-run"
RUN_FORMAT_VERSION = 1
SAVE_EVERY = 200  # batches between mid-epoch resume points: about 3 minutes of the default model on a 2-core CPU


def versions() -> dict:
    return {**machine_info.versions("keras", "numpy", "tensorflow", "jax"), "backend": keras.backend.backend()}


def machine() -> dict:
    """Where the run trained, for the record (figures are only comparable on the same machine)."""
    gpus = []
    with contextlib.suppress(Exception):
        gpus = [str(d) for d in keras.distribution.list_devices("gpu")]
    return machine_info.machine(gpus)


def _strategy(name: str):
    """A tf.distribute strategy scope, or a no-op one."""
    if name == "none":
        return contextlib.nullcontext(), 1
    if keras.backend.backend() != "tensorflow":
        raise ConfigError("--strategy mirrored needs the TensorFlow backend (unset KERAS_BACKEND); "
                          "with JAX use keras.distribution instead")
    import tensorflow as tf
    # Every local GPU; on a machine without one, every logical CPU device (how the tests run it).
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
              [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return strategy.scope(), strategy.num_replicas_in_sync


def _prepare(text_path: Path, tc: TrainConfig, vocab: list[str] | None):
    text = text_io.read_text(text_path, keep_newlines=tc.keep_newlines)
    vocab = vocab or corpus.build_vocab(text)
    ids = corpus.encode(text, vocab)
    train_ids, val_ids = text_io.split(ids, tc.val_fraction)
    train_ds = CharBatches(train_ids, tc.batch_size, tc.seq_length, tc.stateful, tc.seed, True, "training")
    val_ds = CharBatches(val_ids, tc.batch_size, tc.seq_length, tc.stateful, tc.seed, False, "validation")
    return text, vocab, train_ds, val_ds


def train(text_path: str | Path | None, run_dir: str | Path, mc_options: dict | None = None,
          tc: TrainConfig | None = None, *, given: dict | None = None, resume: bool = False, force: bool = False,
          epochs: int | None = None, save_every: int = SAVE_EVERY, init_from=None, init_checkpoint: str = "best",
          verbose: int = 1, log=lambda msg: print(msg, file=sys.stderr, flush=True), group: Group | None = None) -> dict:
    """Train a new run, or continue the one in `run_dir` (training/plan.py decides which); returns a summary with
    the best epoch and validation loss. `given` holds the options the user gave explicitly (the CLI's flags):
    a continued run checks them against its stored settings. `group`: this process's place in a group (JAX)."""
    run_dir, group = Path(run_dir), group or Group()
    p = plan(text_path, run_dir, mc_options, tc, given, resume, force, epochs, init_from, init_checkpoint,
             writer=group.is_writer)
    distributed.check_plan(group, p.tc)
    if not group.is_writer:
        log = (lambda say: lambda msg: say(f"process {group.process_id}: {msg}"))(log)
    # process 0 takes the lock before it joins: a second group on the folder is refused before it starts
    with run.lock(run_dir) if group.is_writer else contextlib.nullcontext(), distributed.lost_as_error(group):
        distributed.join(group)
        return _train(p, save_every, verbose, log, group)


def _train(p: Plan, save_every: int, verbose: int, log, group: Group) -> dict:
    run_dir, tc = p.run_dir, p.tc
    text = text_io.read_text(p.text_path, keep_newlines=tc.keep_newlines)
    vocab = p.vocab
    if p.init_from is not None and not p.continuing:
        vocab, _ = finetune.merged_vocab(finetune.source(p.init_from, p.init_checkpoint)[1], text)
    text, vocab, train_ds, val_ds = _prepare(p.text_path, tc, vocab)
    mc = p.mc or ModelConfig(vocab_size=len(vocab), **{k: v for k, v in p.mc_options.items() if k != "vocab_size"})
    mc.validate()
    keras.utils.set_random_seed(tc.seed)
    scope, replicas = _strategy(tc.strategy)
    rows = distributed.local_rows(group, tc.batch_size)
    feed = (lambda ds: Rows(ds, rows)) if group.active else (lambda ds: ds)  # each process its rows of a batch
    if group.active:
        replicas = keras.distribution.distribution().device_mesh.devices.size
    history, position, point = [], (0, 0), None
    with scope:
        model = build_model(mc, batch_size=tc.batch_size if tc.stateful else None, stateful=tc.stateful)
        model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate, global_clipnorm=tc.clip_norm or None),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if p.continuing:
            if group.is_writer:
                run.remove_run_temps(run_dir)
            point = resume.latest(run_dir, log)
        distributed.agree(group, run_dir, {  # every process of a group, resumed or not, before any restore
            "parameters": mc.parameters(), "training characters": len(train_ds.ids),
            "resumed epoch": point[0]["epoch"] if point else 0, "resumed batch": point[0]["batch"] if point else 0,
            "resume point": int(point[0]["sha256"][:8], 16) if point else 0})
        if point is not None:
            state, arrays = point
            resume.restore(model, state, arrays)
            history, position = state["history"], (state["epoch"], state["batch"])
            if state["stopped"] and tc.epochs <= len(history):
                log(f"run {run_dir} already stopped early at epoch {len(history)}: nothing to do")
                return _summary(run_dir, history)
        init = None
        if p.fine_tuned and point is None and p.init_from is None:
            raise ConfigError(f"{run_dir} is a fine-tune with no resume point yet, and its source is not where "
                              "config.json records it: pass --init-from SOURCE again", "init_from")
        if p.init_from is not None and point is None:  # a fine-tune killed before its first resume point, too
            init = finetune.initialise(model, p.init_from, p.init_checkpoint, vocab)
            log(f"fine-tuning from {p.init_from} ({init['checkpoint']}, epoch {init['epoch']}); "
                + finetune.new_characters_note(init["added_characters"]))  # restarted too: vocab.json's
    if group.is_writer and not p.continuing:  # in a group the run folder is process 0's alone
        if p.replace:
            _clear(run_dir)
        _write_run(run_dir, mc, tc, vocab, text, p.text_path, train_ds, val_ds, replicas, init)
    elif group.is_writer and point is None:  # killed before its first resume point: it starts over, same seed
        _clear(run_dir, keep=("config.json", "vocab.json", ".lock"))
    epoch, batch = position
    if epoch >= tc.epochs:
        log(f"run {run_dir} already has {epoch} epochs (--epochs {tc.epochs}): nothing to do")
        return _summary(run_dir, history)
    log(f"training {mc.parameters():,} parameters on {len(train_ds.ids):,} characters "
        f"({len(train_ds)} batches of {tc.batch_size} x {tc.seq_length}), validating on {len(val_ds.ids):,}; "
        f"epochs {epoch + 1}..{tc.epochs}" + (f" from batch {batch + 1} of epoch {epoch + 1}" if batch else "")
        + f", backend {keras.backend.backend()}; a resume point every {save_every or 'no'} batches")
    writer = RunWriter(run_dir, tc, vocab, history, log, point[0].get("epoch_seconds", 0.0) if point else 0.0,
                       write=group.is_writer)
    callbacks = [SetEpoch(train_ds, val_ds), writer, Divergence(run_dir, tc, lambda: writer.best_epoch)]
    if tc.lr_decay < 1.0:  # a pure function of the epoch, so a resumed run follows the same schedule
        callbacks.insert(0, keras.callbacks.LearningRateScheduler(
            lambda e: tc.learning_rate * tc.lr_decay ** max(0, e - tc.lr_decay_after)))
    if keras.backend.backend() == "tensorflow" and _has("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False))
    mid = [resume.MidEpoch(run_dir, save_every, len(train_ds), writer.state, offset=(epoch, batch))
           ] if group.is_writer else []
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bar goes to stderr, like all progress
        if batch:  # the rest of the epoch the kill interrupted, then the epochs after it
            model.fit(feed(Tail(train_ds, batch)), validation_data=feed(val_ds), epochs=epoch + 1,
                      initial_epoch=epoch, callbacks=[*callbacks, resume.Restore(*point), *mid], verbose=verbose,
                      shuffle=False)
            epoch += 1
        if epoch < tc.epochs and not model.stop_training:
            model.fit(feed(train_ds), validation_data=feed(val_ds), epochs=tc.epochs, initial_epoch=epoch,
                      callbacks=[*callbacks, *mid], verbose=verbose, shuffle=False)
    distributed.dump_weights(group, learned_weights(model))
    return _summary(run_dir, history)


def _clear(run_dir: Path, keep: tuple[str, ...] = (".lock",)) -> None:
    """Empty a run folder for a new run (--force), keeping `keep`."""
    for p in run_dir.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _write_run(run_dir: Path, mc, tc, vocab, text, text_path, train_ds, val_ds, replicas, init=None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    run.write_json(run_dir / "vocab.json", vocab)
    extra = {"init_from": init} if init else {}
    run.write_json(run_dir / "config.json", {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
        "model": to_dict(mc), "train": to_dict(tc), "parameters": mc.parameters(), "replicas": replicas,
        # The corpus by name and digest; its path relative to the run folder, never a machine's absolute path.
        "corpus": {"name": Path(text_path).name, "path": os.path.relpath(Path(text_path).resolve(), run_dir.resolve()),
                   "sha256": sha256_file(text_path),
                   "characters": len(text), "train_characters": len(train_ds.ids),
                   "val_characters": len(val_ds.ids)},
        "versions": versions(), "machine": machine(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), **extra,
    })


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _summary(run_dir: Path, history: list[dict]) -> dict:
    best = min(history, key=lambda r: r["val_loss"]) if history else None
    return {"run_dir": str(run_dir), "epochs": len(history),
            "best_epoch": best["epoch"] if best else None, "best_val_loss": best["val_loss"] if best else None}
