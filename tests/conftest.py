"""Shared fixtures: a small made-up corpus, tiny real trained runs and their exported model folders.

Everything is real (Keras on TensorFlow, tf2onnx, ONNX Runtime) and tiny (units 16-32, a few KB of text), so the
whole suite stays in minutes on two cores. The Keras fixtures skip, with a message, where the `train`/`export`
extras are not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY = dict(embedding_dim=8, units=32, layers=1, dropout=0.0, recurrent_dropout=0.0)
# The tiny runs' recipe: the default preset's clipping, decay and early stopping off, so three epochs learn fast.
TINY_TRAIN = dict(epochs=3, batch_size=8, seq_length=32, learning_rate=1e-2, sample_every=0, seed=7,
                  clip_norm=0.0, lr_decay=1.0, patience=0, stateful=False)

WORDS = ("the king queen lord lady sword crown night day love death heart blood fair foul speak hear come go "
         "my thy thou art doth hath not with upon and but or so now then here there").split()


def make_text(n_chars: int = 12_000, seed: int = 0) -> str:
    """Play-like lines: a speaker, then short sentences of common words. Enough structure to learn in seconds."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_chars:
        speaker = rng.choice(["KING", "QUEEN", "LORD", "FOOL"])
        words = [rng.choice(WORDS) for _ in range(rng.integers(4, 12))]
        line = f"{speaker}:\n{' '.join(words).capitalize()}{rng.choice(['.', '!', '?', ','])}\n\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (it lives in ../shared/data beside the checkout, not in the repository)")
    return path


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


def _train(out: Path, corpus: Path, **overrides) -> Path:
    pytest.importorskip("keras", reason="the `train` extra is not installed")
    from charlstm.training.config import TrainConfig, split_options
    from charlstm.training.train import train
    model_options, train_options = split_options({**TINY, **TINY_TRAIN, **overrides})
    train(corpus, out, model_options, TrainConfig(**train_options), verbose=0, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus_path) -> Path:
    """One layer of 32 units, stateless windows, 3 epochs."""
    return _train(tmp_path_factory.mktemp("runs") / "one", corpus_path)


@pytest.fixture(scope="session")
def tiny_run2(tmp_path_factory, corpus_path) -> Path:
    """Two layers of 16 units with dropout, stateful streams."""
    return _train(tmp_path_factory.mktemp("runs") / "two", corpus_path, units=16, layers=2, dropout=0.1,
                  stateful=True, epochs=2)


def _export(run_dir: Path, out: Path, **kwargs) -> Path:
    pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")
    from charlstm.export.export import export_model, held_out, load_run, parity_ids
    model, mc, vocab, cfg, source = load_run(run_dir, "best")
    export_model(model, mc, vocab, out, provenance=source, parity_text=parity_ids(vocab, held_out(cfg, run_dir)),
                 **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_run, corpus_path) -> Path:
    text = corpus_path.read_text(encoding="utf-8")
    return _export(tiny_run, tmp_path_factory.mktemp("models") / "tiny", val_text=text[int(len(text) * 0.9):])


@pytest.fixture(scope="session")
def tiny_model2(tmp_path_factory, tiny_run2, corpus_path) -> Path:
    text = corpus_path.read_text(encoding="utf-8")
    return _export(tiny_run2, tmp_path_factory.mktemp("models") / "tiny2", int8=True,
                   val_text=text[int(len(text) * 0.9):])


SLOW_MACHINE_TIMEOUT = 1800  # seconds: a subprocess's limit, generous enough for a loaded 2-core machine


def run_cli(*args: str, env: dict | None = None, timeout: int = SLOW_MACHINE_TIMEOUT):
    """`charlstm ARGS` as a real subprocess (python -m charlstm), the way a user runs it."""
    import subprocess
    return subprocess.run([sys.executable, "-m", "charlstm", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def copy_project(dst: Path) -> Path:
    """The files `pip install` reads, copied, so that a build does not write build/ or *.egg-info into the
    checkout: pyproject.toml, README.md, the package folders and models/."""
    import shutil
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dst / name)
    for folder in ("charlstm", "runtime", "training", "export", "models", "web"):
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                                   "node_modules"))
    return dst
