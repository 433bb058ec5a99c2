"""Cross-entropy of a text under a run's Keras model, state carried across the whole text.

The TensorFlow-side twin of runtime.evaluate.evaluate_text: the same characters scored the same way (read
character t, score character t + 1, never reset), so the two figures must agree; they are the check that
the exported model is the trained one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from charlstm.training import corpus, run
from charlstm.training.config import ConfigError, ModelConfig, from_dict
from charlstm.training.model import build_model, load_checkpoints, reset_states

CHUNK = 1000  # characters per Keras call; the state is carried between calls


def evaluate_run(run_dir: Path, text: str, checkpoint: str = "best", progress=None, average: int = 1) -> dict:
    cfg = run.read_config(Path(run_dir))
    vocab = run.read_vocab(Path(run_dir))
    mc = from_dict(ModelConfig, cfg["model"])
    paths, epochs = run.checkpoint_window(Path(run_dir), checkpoint, average)
    model = build_model(mc, batch_size=1, stateful=True)
    load_checkpoints(model, paths)
    ids = corpus.encode(text, vocab)
    if len(ids) < 2:
        raise ConfigError(f"the text to evaluate has {len(ids)} character(s): it needs at least 2")
    reset_states(model)
    nll, start, n = 0.0, time.perf_counter(), len(ids) - 1
    for lo in range(0, n, CHUNK):
        x, y = ids[lo: min(lo + CHUNK, n)], ids[lo + 1: min(lo + CHUNK, n) + 1]
        # predict_on_batch runs the compiled predict function (an eager call steps the LSTM op by op, ~50x
        # slower); the last chunk is padded to the same shape, so nothing is compiled twice. The state carries.
        padded = np.zeros(CHUNK, np.int32)
        padded[:len(x)] = x
        logits = np.asarray(model.predict_on_batch(padded[None, :]))[0, :len(x)].astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(y)), y].sum())
        if progress:
            progress(lo + len(x), n)
    nats = nll / n
    return {"characters": n, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats), "seconds": time.perf_counter() - start, "checkpoint": str(paths[-1]),
            "epoch": epochs[-1] if epochs else None, "averaged_epochs": epochs if average > 1 else None,
            "backend": keras.backend.backend()}
