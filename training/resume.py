"""Resume points: everything a killed run needs to go on exactly where it stopped, at an epoch's end or mid-epoch.

A point is every variable of the model (weights, the stateful streams' carried LSTM state, the dropout seed
generators' state), of the optimizer (Adam's moments, its step count) and of the loss metric (the epoch's
running mean so far), plus the loop's position (epoch, next batch) and its own state (history, best epoch), as

    RUN/resume/NNNNNN.npz    the variables, by path
    RUN/resume/NNNNNN.json   the position and loop state, naming the .npz and its sha256

each written under a temporary name and renamed, the .json last: a point exists once its .json does. The two
newest points are kept, so a point damaged on disk (a full disk, a crash mid-write) falls back to the one before.
Keras' BackupAndRestore restarts an interrupted epoch from its first batch and keeps no optimizer state; this
resumes the batch after the last one saved, with the same batches (their order is a function of seed and epoch),
the same dropout masks and the same state, so the run ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np

from charlstm.runtime.files import atomic_path, ensure_space, sha256_file, write_json
from charlstm.training.config import ConfigError
from charlstm.training.distributed import alone

KEEP = 2  # resume points kept: the newest, and the one before in case the newest is damaged
POINT = re.compile(r"(\d{6})\.json")


def _variables(model: keras.Model) -> dict[str, list]:
    groups = {"model": list(model.variables), "metrics": list(model.metrics_variables)}
    if model.optimizer is not None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        groups["optimizer"] = list(model.optimizer.variables)
    return groups


def sync(model: keras.Model) -> None:
    """The JAX trainer keeps the variables outside the model during an epoch: bring them back before reading."""
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def points(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / "resume"
    found = [int(m.group(1)) for p in folder.iterdir() if (m := POINT.fullmatch(p.name))] if folder.is_dir() else []
    return sorted(found)


def save(run_dir: Path, model: keras.Model, state: dict) -> Path:
    """Write a new point with `state` (position and loop state); keep the two newest. Returns its .json."""
    with alone():  # in a group, only process 0 writes
        return _save(run_dir, model, state)


def _save(run_dir: Path, model: keras.Model, state: dict) -> Path:
    sync(model)
    folder = Path(run_dir) / "resume"
    number = (points(run_dir) or [0])[-1] + 1
    arrays = {f"{group}/{i}": keras.ops.convert_to_numpy(v)
              for group, variables in _variables(model).items() for i, v in enumerate(variables)}
    npz = folder / f"{number:06d}.npz"
    ensure_space(npz, sum(a.nbytes for a in arrays.values()) + (1 << 20))
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    meta = folder / f"{number:06d}.json"
    write_json(meta, {**state, "variables": npz.name, "sha256": sha256_file(npz),
                      "shapes": {g: [list(v.shape) for v in vs] for g, vs in _variables(model).items()}})
    for old in points(run_dir)[:-KEEP]:
        for suffix in (".json", ".npz"):
            (folder / f"{old:06d}{suffix}").unlink(missing_ok=True)
    for stray in folder.glob("*.npz"):  # a .npz whose .json was never written
        if not (folder / stray.name.replace(".npz", ".json")).exists():
            stray.unlink(missing_ok=True)
    return meta


def latest(run_dir: Path, log=lambda m: None) -> tuple[dict, dict] | None:
    """(loop state, arrays) of the newest point that reads back whole, or None when there is none. A damaged
    point is reported and the one before it used."""
    folder = Path(run_dir) / "resume"
    for number in reversed(points(run_dir)):
        meta = folder / f"{number:06d}.json"
        try:
            state = json.loads(meta.read_text(encoding="utf-8"))
            npz = folder / state["variables"]
            if sha256_file(npz) != state["sha256"]:
                raise ValueError(f"{npz.name} does not match its recorded sha256")
            with np.load(npz) as data:
                arrays = {k: data[k] for k in data.files}
            return state, arrays
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            log(f"resume point {meta} is damaged ({e.__class__.__name__}: {str(e)[:100]}): trying the one before it")
    if points(run_dir):
        raise ConfigError(f"every resume point in {folder} is damaged: start the run again with --force", "run_dir")
    return None


def restore(model: keras.Model, state: dict, arrays: dict, groups=("model", "optimizer")) -> None:
    """Assign a point's variables to a built, compiled model of the same shape."""
    variables = _variables(model)
    for group in groups:
        # by shape, in order: Keras numbers some names per process (seed_generator_4), so paths would differ
        shapes = state["shapes"].get(group, [])
        have = variables.get(group, [])
        if [list(v.shape) for v in have] != shapes:
            raise ConfigError(f"the resume point's {group} variables do not fit this model (a different shape or "
                              "Keras version): start the run again with --force", "run_dir")
        for i, v in enumerate(have):
            v.assign(arrays[f"{group}/{i}"])


class MidEpoch(keras.callbacks.Callback):
    """Every `every` batches, a resume point at the next batch. `offset` is where this fit's first epoch starts
    (a resumed epoch runs from its saved batch on)."""

    def __init__(self, run_dir: Path, every: int, batches: int, loop_state, offset: tuple[int, int] = (0, 0)):
        super().__init__()
        self.run_dir, self.every, self.batches, self.loop_state = Path(run_dir), every, batches, loop_state
        self.offset, self.epoch = offset, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        start = self.offset[1] if self.epoch == self.offset[0] else 0
        done = start + batch + 1
        if self.every and done % self.every == 0 and done < self.batches:
            save(self.run_dir, self.model, {**self.loop_state(), "epoch": self.epoch, "batch": done})


class Restore(keras.callbacks.Callback):
    """At the start of the resumed epoch, after the run's own callbacks have set it up as a fresh epoch: the saved
    loss metric, carried state and seed generators, so the epoch goes on exactly where it stopped."""

    def __init__(self, state: dict, arrays: dict):
        super().__init__()
        self.state, self.arrays, self.done = state, arrays, False

    def on_epoch_begin(self, epoch, logs=None):
        if not self.done:
            restore(self.model, self.state, self.arrays, groups=("model", "metrics"))
            self.done = True
