"""The run's own Keras callbacks: the run folder after each epoch, and a stop when the loss diverges."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from charlstm.runtime.files import ensure_space
from charlstm.runtime.manifest import SamplingDefaults
from charlstm.training import resume, run
from charlstm.training.config import ConfigError, TrainConfig
from charlstm.training.distributed import alone
from charlstm.training.model import get_weights, reset_states, sample_text

TEMPERATURE = SamplingDefaults.temperature  # the progress samples use generate's default


class Diverged(ConfigError):
    """The loss became NaN or infinite: the run stops, and its checkpoints so far stay as they are."""


class RunWriter(keras.callbacks.Callback):
    """After each epoch: checkpoints, history, a resume point, a sample, early stopping. Writes are atomic."""

    def __init__(self, run_dir: Path, tc: TrainConfig, vocab: list[str], history: list[dict], log,
                 resumed_seconds: float = 0.0, write: bool = True):
        super().__init__()
        self.run_dir, self.tc, self.vocab, self.history, self.log = run_dir, tc, vocab, history, log
        self.write = write  # False: a group's process other than 0 keeps the loop's state but writes nothing
        self.best = min((r["val_loss"] for r in history), default=math.inf)
        self.best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"] if history else 0
        self.started, self.carried = 0.0, resumed_seconds  # a resumed epoch's seconds before the kill

    def state(self) -> dict:
        """The loop's own state, for a resume point."""
        return {"history": self.history, "best_val_loss": self.best, "best_epoch": self.best_epoch,
                "stopped": False, "epoch_seconds": time.perf_counter() - self.started + self.carried}

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        # Dropout masks depend on (seed, epoch) only, so a resumed run draws the masks an uninterrupted one would;
        # each generator gets a stream of its own (the second number), or same-shaped masks would coincide.
        for i, sg in enumerate(seed_generators(self.model)):
            sg.state.assign(np.array([self.tc.seed + epoch, i << 20], dtype=sg.state.dtype))
        if self.tc.stateful:
            reset_states(self.model)

    def on_test_begin(self, logs=None):
        if self.tc.stateful:  # validation streams start from a zero state, not from training's last one
            reset_states(self.model)

    def on_epoch_end(self, epoch, logs=None):
        n = epoch + 1  # epochs are numbered from 1 in files
        row = {"epoch": n, "train_loss": float(logs["loss"]), "val_loss": float(logs["val_loss"]),
               "seconds": round(time.perf_counter() - self.started + self.carried, 2)}
        self.carried = 0.0
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
            raise diverged(self.run_dir, self.tc, n, None, self.best_epoch)
        row["train_bits"], row["val_bits"] = row["train_loss"] / run.LN2, row["val_loss"] / run.LN2
        self.history.append(row)
        better = row["val_loss"] < self.best
        if better:
            self.best, self.best_epoch = row["val_loss"], n
        stop = bool(self.tc.patience) and n - self.best_epoch >= self.tc.patience
        if self.write:
            self._write(n, better, stop)
        self.log(f"epoch {n}: train {row['train_loss']:.4f}, val {row['val_loss']:.4f} nats/char "
                 f"({row['val_bits']:.3f} bits), best {self.best:.4f} at epoch {self.best_epoch}, "
                 f"{row['seconds']:.1f} s")
        if self.write and self.tc.sample_every and n % self.tc.sample_every == 0:
            text = sample_text(get_weights(self.model), self.vocab, self.tc.sample_prompt, 200, TEMPERATURE,
                               np.random.default_rng([self.tc.seed, n]))
            self.log(f"--- sample after epoch {n} (temperature {TEMPERATURE}) ---\n{self.tc.sample_prompt}{text}\n---")
        if stop:
            self.log(f"early stopping: no better validation loss for {self.tc.patience} epochs")
            self.model.stop_training = True

    def _write(self, n: int, better: bool, stop: bool) -> None:
        # An epoch writes a checkpoint, maybe the best one, and a resume point of about three weights' sizes:
        # make sure of the room first, since HDF5 crashes the process rather than fail on a full disk.
        weights = sum(int(np.prod(v.shape)) * 4 for v in self.model.weights)
        ensure_space(run.epoch_checkpoint(self.run_dir, n), 6 * weights + (1 << 20))
        with alone():  # in a group, this process writes alone (training/distributed.py)
            with run.atomic_path(run.epoch_checkpoint(self.run_dir, n)) as tmp:
                self.model.save_weights(tmp)
            if better:
                with run.atomic_path(run.best_checkpoint(self.run_dir)) as tmp:
                    self.model.save_weights(tmp)
            run.write_history(self.run_dir / "history.csv", self.history)
            resume.save(self.run_dir, self.model, {**self.state(), "stopped": stop, "epoch": n, "batch": 0,
                                                   "epoch_seconds": 0.0})


def seed_generators(model: keras.Model) -> list:
    """Every layer's random seed generators, in layer order."""
    out = []
    for layer in model._flatten_layers():
        for name in ("seed_generator", "weight_drop_seed"):
            sg = getattr(layer, name, None)
            if isinstance(sg, keras.random.SeedGenerator) and sg not in out:
                out.append(sg)
    return out


class Divergence(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN or infinite, with one line naming the epoch and the last good
    checkpoint (which stays the best): continuing would only write NaN weights."""

    def __init__(self, run_dir: Path, tc: TrainConfig, best_epoch):
        super().__init__()
        self.run_dir, self.tc, self.best_epoch, self.epoch = run_dir, tc, best_epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise diverged(self.run_dir, self.tc, self.epoch + 1, batch + 1, self.best_epoch())


def diverged(run_dir: Path, tc: TrainConfig, epoch: int, batch: int | None, best_epoch: int) -> Diverged:
    where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
    kept = (f"the best checkpoint stays {run.best_checkpoint(run_dir)} (epoch {best_epoch})" if best_epoch
            else "no epoch had finished, so no checkpoint was written")
    return Diverged(f"the training loss became NaN or infinite at {where} (learning rate {tc.learning_rate:g}, "
                    f"clip norm {tc.clip_norm:g}): {kept}; lower --learning-rate or set --clip-norm, and start again "
                    "with --force", "learning_rate")
