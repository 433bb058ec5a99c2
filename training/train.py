"""`charlstm train`: corpus -> batches -> model.fit with callbacks that keep the run folder whole.

The loop is Keras' own `fit`; what this file adds is the run folder (see training/run.py): per-epoch and best
checkpoints, a resume point with optimizer state, history, samples, and early stopping that survives a resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

from charlstm.runtime import machine as machine_info
from charlstm.runtime import text as text_io
from charlstm.runtime.files import sha256_file
from charlstm.runtime.manifest import SamplingDefaults
from charlstm.training import corpus, run
from charlstm.training.config import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from charlstm.training.data import CharBatches, SetEpoch
from charlstm.training.model import build_model, get_weights, reset_states, sample_text

TEMPERATURE = SamplingDefaults.temperature  # the progress samples use generate's default
RUN_FORMAT = "charlstm-run"
RUN_FORMAT_VERSION = 1


def versions() -> dict:
    import keras as k
    return {**machine_info.versions("keras", "numpy", "tensorflow", "jax"), "backend": k.backend.backend()}


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


class RunWriter(keras.callbacks.Callback):
    """After each epoch: checkpoints, history, resume point, sample, early stopping. Writes are atomic."""

    def __init__(self, run_dir: Path, tc: TrainConfig, vocab: list[str], history: list[dict], log):
        super().__init__()
        self.run_dir, self.tc, self.vocab, self.history, self.log = run_dir, tc, vocab, history, log
        self.best = min((r["val_loss"] for r in history), default=math.inf)
        self.best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"] if history else 0
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        # Dropout masks depend on (seed, epoch) only, so a resumed run draws the masks an uninterrupted one would.
        for layer in self.model._flatten_layers():
            sg = getattr(layer, "seed_generator", None)
            if sg is not None:
                sg.state.assign(np.array([self.tc.seed + epoch, 0], dtype=sg.state.dtype))
        if self.tc.stateful:
            reset_states(self.model)

    def on_test_begin(self, logs=None):
        if self.tc.stateful:  # validation streams start from a zero state, not from training's last one
            reset_states(self.model)

    def on_epoch_end(self, epoch, logs=None):
        n = epoch + 1  # epochs are numbered from 1 in files
        row = {"epoch": n, "train_loss": float(logs["loss"]), "val_loss": float(logs["val_loss"]),
               "seconds": round(time.perf_counter() - self.started, 2)}
        row["train_bits"], row["val_bits"] = row["train_loss"] / run.LN2, row["val_loss"] / run.LN2
        self.history.append(row)
        with run.atomic_path(run.epoch_checkpoint(self.run_dir, n)) as tmp:
            self.model.save_weights(tmp)
        if row["val_loss"] < self.best:
            self.best, self.best_epoch = row["val_loss"], n
            with run.atomic_path(run.best_checkpoint(self.run_dir)) as tmp:
                self.model.save_weights(tmp)
        run.write_history(self.run_dir / "history.csv", self.history)
        stop = bool(self.tc.patience) and n - self.best_epoch >= self.tc.patience
        # The resume point: loop state first, then the model; the .keras rename is the commit.
        state = {"epoch": n, "best_val_loss": self.best, "best_epoch": self.best_epoch, "stopped": stop,
                 "history": self.history}
        resume = self.run_dir / "resume" / f"epoch-{n:03d}"
        run.write_json(resume.with_suffix(".json"), state)
        with run.atomic_path(resume.with_suffix(".keras")) as tmp:
            self.model.save(tmp)
        run.prune_resume(self.run_dir, n)
        self.log(f"epoch {n}: train {row['train_loss']:.4f}, val {row['val_loss']:.4f} nats/char "
                 f"({row['val_bits']:.3f} bits), best {self.best:.4f} at epoch {self.best_epoch}, "
                 f"{row['seconds']:.1f} s")
        if self.tc.sample_every and n % self.tc.sample_every == 0:
            text = sample_text(get_weights(self.model), self.vocab, self.tc.sample_prompt, 200, TEMPERATURE,
                               np.random.default_rng([self.tc.seed, n]))
            self.log(f"--- sample after epoch {n} (temperature {TEMPERATURE}) ---\n{self.tc.sample_prompt}{text}\n---")
        if stop:
            self.log(f"early stopping: no better validation loss for {self.tc.patience} epochs")
            self.model.stop_training = True


def _prepare(text_path: Path, tc: TrainConfig, vocab: list[str] | None):
    text = text_io.read_text(text_path, keep_newlines=tc.keep_newlines)
    vocab = vocab or corpus.build_vocab(text)
    ids = corpus.encode(text, vocab)
    train_ids, val_ids = text_io.split(ids, tc.val_fraction)
    train_ds = CharBatches(train_ids, tc.batch_size, tc.seq_length, tc.stateful, tc.seed, True, "training")
    val_ds = CharBatches(val_ids, tc.batch_size, tc.seq_length, tc.stateful, tc.seed, False, "validation")
    return text, vocab, train_ds, val_ds


def train(text_path: str | Path | None, run_dir: str | Path, mc_options: dict | None = None,
          tc: TrainConfig | None = None, resume: bool = False, epochs: int | None = None,
          verbose: int = 1, log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    """Train (or resume) a run; returns a summary with the best epoch and validation loss."""
    run_dir = Path(run_dir)
    text_path, mc, tc, vocab = _settings(text_path, run_dir, mc_options, tc, resume, epochs)
    text, vocab, train_ds, val_ds = _prepare(Path(text_path), tc, vocab)
    mc = mc or ModelConfig(vocab_size=len(vocab), **(mc_options or {}))
    mc.validate()

    keras.utils.set_random_seed(tc.seed)
    scope, replicas = _strategy(tc.strategy)
    history: list[dict] = []
    with scope:
        point = run.latest_resume(run_dir) if resume else None
        if point:
            keras_path, state = point
            model = keras.models.load_model(keras_path)
            history = state["history"]
            if state["stopped"] and epochs is None:
                log(f"run {run_dir} already stopped early at epoch {state['epoch']}: nothing to do")
                return _summary(run_dir, history)
        else:
            model = build_model(mc, batch_size=tc.batch_size if tc.stateful else None, stateful=tc.stateful)
            model.compile(
                optimizer=keras.optimizers.Adam(tc.learning_rate, global_clipnorm=tc.clip_norm or None),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if not resume:
        _write_run(run_dir, mc, tc, vocab, text, text_path, train_ds, val_ds, replicas)
    initial_epoch = history[-1]["epoch"] if history else 0
    if initial_epoch >= tc.epochs:
        log(f"run {run_dir} already has {initial_epoch} epochs (--epochs {tc.epochs}): nothing to do")
        return _summary(run_dir, history)
    log(f"training {mc.parameters():,} parameters on {len(train_ds.ids):,} characters "
        f"({len(train_ds)} batches of {tc.batch_size} x {tc.seq_length}), validating on {len(val_ds.ids):,}; "
        f"epochs {initial_epoch + 1}..{tc.epochs}, backend {keras.backend.backend()}")
    callbacks = [SetEpoch(train_ds, val_ds), RunWriter(run_dir, tc, vocab, history, log)]
    if tc.lr_decay < 1.0:  # a pure function of the epoch, so a resumed run follows the same schedule
        callbacks.insert(0, keras.callbacks.LearningRateScheduler(
            lambda epoch: tc.learning_rate * tc.lr_decay ** max(0, epoch - tc.lr_decay_after)))
    if keras.backend.backend() == "tensorflow" and _has("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False))
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bar goes to stderr, like all progress
        model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
    return _summary(run_dir, history)


def _settings(text_path, run_dir: Path, mc_options, tc, resume: bool, epochs):
    """(corpus path, model config or None for a new run, train config, vocabulary or None), validated."""
    if resume:
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"nothing to resume: {cfg_path} does not exist (start the run without --resume)")
        cfg = run.read_json(cfg_path)
        mc, tc = from_dict(ModelConfig, cfg["model"]), from_dict(TrainConfig, cfg["train"])
        if epochs is not None:
            tc = dataclasses.replace(tc, epochs=epochs)
        text_path = Path(text_path) if text_path else run_dir / cfg["corpus"]["path"]
        if not text_path.is_file() or sha256_file(text_path) != cfg["corpus"]["sha256"]:
            raise ConfigError(f"{text_path} is missing or not the text this run was trained on (sha256 differs "
                              f"from {cfg_path}): pass the original file with --text")
        vocab = run.read_json(run_dir / "vocab.json")
        run.remove_run_temps(run_dir)
    else:
        if text_path is None:
            raise ConfigError("--text is required: the UTF-8 file to train on")
        if (run_dir / "config.json").exists():
            raise ConfigError(f"run folder {run_dir} already holds a run: pass --resume to continue it, "
                              f"or choose another --out")
        mc, tc, vocab = None, tc or TrainConfig(), None
    tc.validate()
    if tc.stateful and tc.strategy != "none":
        raise ConfigError("--stateful cannot be combined with --strategy mirrored: drop one of them")
    return text_path, mc, tc, vocab


def _write_run(run_dir: Path, mc, tc, vocab, text, text_path, train_ds, val_ds, replicas) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    run.write_json(run_dir / "vocab.json", vocab)
    run.write_json(run_dir / "config.json", {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
        "model": to_dict(mc), "train": to_dict(tc), "parameters": mc.parameters(), "replicas": replicas,
        # The corpus by name and digest; its path relative to the run folder, never a machine's absolute path.
        "corpus": {"name": Path(text_path).name, "path": os.path.relpath(Path(text_path).resolve(), run_dir.resolve()),
                   "sha256": sha256_file(text_path),
                   "characters": len(text), "train_characters": len(train_ds.ids),
                   "val_characters": len(val_ds.ids)},
        "versions": versions(), "machine": machine(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    })


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _summary(run_dir: Path, history: list[dict]) -> dict:
    best = min(history, key=lambda r: r["val_loss"]) if history else None
    return {"run_dir": str(run_dir), "epochs": len(history),
            "best_epoch": best["epoch"] if best else None, "best_val_loss": best["val_loss"] if best else None}
