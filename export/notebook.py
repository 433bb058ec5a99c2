"""`--from-notebook`: bring the original notebook's checkpoints to ONNX.

The notebook saved tf.keras 2 weights in TensorFlow's checkpoint format every epoch
(training_checkpoints/ckpt_N.index + .data-00000-of-00001, and a `checkpoint` file naming the latest).
Its model was Embedding -> LSTM -> Dense, whose variables are read here by name. Its vocabulary was never
saved: it is rebuilt from the corpus exactly as the notebook built it, the sorted set of all characters of
the raw UTF-8 text, \\r included, nothing normalised.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from charlstm.errors import UserError
from charlstm.runtime.files import sha256_file
from charlstm.runtime.text import VAL_FRACTION, split
from charlstm.training import corpus
from charlstm.training.config import ModelConfig
from charlstm.training.model import build_model

VARIABLES = {
    "embedding": "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE",
    "kernel": "layer_with_weights-1/cell/kernel/.ATTRIBUTES/VARIABLE_VALUE",
    "recurrent_kernel": "layer_with_weights-1/cell/recurrent_kernel/.ATTRIBUTES/VARIABLE_VALUE",
    "bias": "layer_with_weights-1/cell/bias/.ATTRIBUTES/VARIABLE_VALUE",
    "dense_kernel": "layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE",
    "dense_bias": "layer_with_weights-2/bias/.ATTRIBUTES/VARIABLE_VALUE",
}


class NotebookError(UserError):
    pass


def resolve_prefix(ckpt: Path) -> str:
    """A folder (its `checkpoint` file names the latest) or a prefix such as training_checkpoints/ckpt_50."""
    import tensorflow as tf
    if ckpt.is_dir():
        prefix = tf.train.latest_checkpoint(str(ckpt))
        if prefix is None:
            raise NotebookError(f"no TensorFlow checkpoint in {ckpt} (expected a `checkpoint` file and ckpt_N.index)")
        return prefix
    if Path(str(ckpt) + ".index").is_file():
        return str(ckpt)
    raise NotebookError(f"checkpoint not found: {ckpt} (pass the training_checkpoints folder or a prefix "
                        f"such as training_checkpoints/ckpt_50, without .index)")


def read_weights(prefix: str) -> dict[str, np.ndarray]:
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = set(reader.get_variable_to_shape_map())
        missing = [v for v in VARIABLES.values() if v not in names]
        if missing:
            raise NotebookError(f"{prefix} is not the notebook's Embedding -> LSTM -> Dense checkpoint: "
                                f"missing {missing[0].split('/.ATTRIBUTES')[0]}")
        return {k: np.asarray(reader.get_tensor(v), np.float32) for k, v in VARIABLES.items()}
    except NotebookError:
        raise
    except Exception as e:  # a truncated .data or .index file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NotebookError(f"checkpoint {prefix} is unreadable (truncated or corrupt?): {first}") from None


def load_notebook(ckpt: Path, corpus_path: Path):
    """The notebook's network as this project's Keras model, with what export needs beside it."""
    prefix = resolve_prefix(Path(ckpt))
    w = read_weights(prefix)
    if not Path(corpus_path).is_file():
        raise NotebookError(f"corpus not found: {corpus_path} (pass the text the notebook trained on)")
    raw = Path(corpus_path).read_bytes()
    try:
        text = raw.decode("utf-8")  # as the notebook: open(path, 'rb').read().decode(encoding='utf-8')
    except UnicodeDecodeError as e:
        raise NotebookError(f"{corpus_path} is not UTF-8 (byte offset {e.start}); the notebook could not "
                            f"have read it either") from None
    vocab = corpus.build_vocab(text)
    vocab_size, embedding_dim = w["embedding"].shape
    units = w["recurrent_kernel"].shape[0]
    if vocab_size != len(vocab) or w["dense_kernel"].shape != (units, len(vocab)):
        raise NotebookError(f"the checkpoint's vocabulary has {vocab_size} characters but {corpus_path} has "
                            f"{len(vocab)}: pass the exact file the notebook trained on")
    expected = {"kernel": (embedding_dim, 4 * units), "recurrent_kernel": (units, 4 * units), "bias": (4 * units,)}
    for k, shape in expected.items():
        if w[k].shape != shape:
            raise NotebookError(f"checkpoint variable {k} has shape {w[k].shape}, expected {shape}")
    mc = ModelConfig(vocab_size=len(vocab), embedding_dim=int(embedding_dim), units=int(units), layers=1,
                     dropout=0.0, recurrent_dropout=0.0)  # the notebook's network had no dropout
    model = build_model(mc)
    model.get_layer("embedding").set_weights([w["embedding"]])
    model.get_layer("lstm_0").set_weights([w["kernel"], w["recurrent_kernel"], w["bias"]])
    model.get_layer("logits").set_weights([w["dense_kernel"], w["dense_bias"]])
    ids = corpus.encode(text, vocab)
    steps = min(256, len(ids))
    source = {"notebook_checkpoint": Path(prefix).name, "epoch": _epoch(prefix), "val_loss": None,
              "corpus": {"name": Path(corpus_path).name, "sha256": sha256_file(corpus_path), "characters": len(text)},
              "run_config": {"model": dataclasses.asdict(mc), "train": {"val_fraction": VAL_FRACTION}}}
    _, eval_text = split(text, VAL_FRACTION)
    return model, mc, vocab, source, ids[-steps:].astype(np.int64), eval_text


def _epoch(prefix: str) -> int | None:
    tail = Path(prefix).name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None
