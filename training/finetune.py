"""`--init-from RUN`: a new run that starts from another run's weights (fine-tuning on a new text).

The model keeps its source's shape. The vocabulary is the source's, in its order, with the new text's unseen
characters appended (sorted): every old character keeps its id and its trained embedding row and output
column; a new character's row and column start as a fresh model's would, and its output bias at the mean of the
old ones. Characters the new text does not use keep their rows (the model can still write them).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from charlstm.runtime.files import sha256_file
from charlstm.training import run
from charlstm.training.config import ModelConfig, from_dict
from charlstm.training.model import build_model, load_checkpoints


def merged_vocab(source_vocab: list[str], text: str) -> tuple[list[str], list[str]]:
    """(the fine-tune's vocabulary, the characters it adds)."""
    have = set(source_vocab)
    added = sorted(set(text) - have)
    return list(source_vocab) + added, added


def source(run_dir: Path, checkpoint: str) -> tuple[dict, list[str], Path, int | None]:
    """The source run's config, vocabulary, checkpoint file and epoch."""
    cfg, vocab = run.read_config(run_dir), run.read_vocab(run_dir)
    path, epoch = run.resolve_checkpoint(run_dir, checkpoint)
    return cfg, vocab, path, epoch


def initialise(model: keras.Model, run_dir: Path, checkpoint: str, vocab: list[str]) -> dict:
    """Load the source run's weights into `model` (whose vocabulary extends the source's); returns the record
    config.json keeps of where the run started."""
    cfg, old_vocab, path, epoch = source(run_dir, checkpoint)
    old = build_model(from_dict(ModelConfig, cfg["model"]))
    load_checkpoints(old, [path])
    n = len(old_vocab)
    (emb,) = old.get_layer("embedding").get_weights()
    (fresh_emb,) = model.get_layer("embedding").get_weights()
    model.get_layer("embedding").set_weights([np.concatenate([emb, fresh_emb[n:]])])
    kernel, bias = old.get_layer("logits").get_weights()
    fresh_kernel, _ = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([np.concatenate([kernel, fresh_kernel[:, n:]], axis=1),
                                           np.concatenate([bias, np.full(len(vocab) - n, bias.mean(), bias.dtype)])])
    for layer in model.layers:
        if layer.name.startswith("lstm_"):
            layer.cell.set_weights(old.get_layer(layer.name).cell.get_weights())
    return {"run": Path(run_dir).resolve().name, "checkpoint": Path(path).name, "epoch": epoch,
            "checkpoint_sha256": sha256_file(path), "config": run.portable_config(cfg),
            "added_characters": vocab[n:]}


def new_characters_note(added: list[str]) -> str:
    shown = ", ".join(repr(ch) for ch in added[:20]) + (f" and {len(added) - 20} more" if len(added) > 20 else "")
    return f"{len(added)} character(s) new to the source vocabulary, given fresh rows: {shown}" if added else \
        "no characters new to the source vocabulary"

