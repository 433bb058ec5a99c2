"""Scoring text with a model folder: cross-entropy per character, the state carried across the whole text.

Starting from the zero state, the model reads character t and is scored on character t+1, as in training,
but without ever resetting: the number a reader of the generated text would care about.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from charlstm.runtime.errors import InputError
from charlstm.runtime.generator import Generator
from charlstm.runtime.sampling import log_softmax
from charlstm.runtime.session import SessionConfig

PROGRESS_EVERY = 512  # steps between progress callbacks: often enough for a bar, rare enough to cost nothing


def score_ids(generator: Generator, ids: np.ndarray,
              progress: Callable[[int, int], None] | None = None) -> float:
    """Summed negative log-likelihood (nats) of ids[1:], each given the ids before it, batch 1."""
    total = len(ids) - 1
    stepper = generator.stepper
    stepper.reset(1)
    nll = 0.0
    for t in range(total):
        logits = stepper.step(ids[t:t + 1])
        nll -= float(log_softmax(logits)[0, ids[t + 1]])
        if progress is not None and ((t + 1) % PROGRESS_EVERY == 0 or t + 1 == total):
            progress(t + 1, total)
    return nll


def evaluate_text(model_dir, text: str, int8: bool = False,
                  progress: Callable[[int, int], None] | None = None,
                  device: str = "auto", unknown: str = "error") -> dict:
    """Cross-entropy of `text` under the model: nats and bits per character, perplexity, and what ran it.

    progress(done, total) is called every few hundred characters. Characters outside the vocabulary raise
    InputError, or are dropped with unknown="skip" (their count is reported as "skipped").
    """
    generator = Generator(model_dir, SessionConfig(device=device, int8=int8))
    ids = generator.encode(text, unknown, param="text")
    if len(ids) < 2:
        raise InputError(f"the text to evaluate has {len(ids)} usable character(s): it needs at least 2 "
                         "(one to read, one to score); pass a longer text", "text")
    start = time.perf_counter()
    nll = score_ids(generator, ids, progress)
    seconds = time.perf_counter() - start
    n = len(ids) - 1
    nats = nll / n
    return {
        "characters": n,  # scored characters: all but the first
        "skipped": len(text) - len(ids),
        "nats_per_char": nats,
        "bits_per_char": nats / math.log(2),
        "perplexity": math.exp(nats),
        "seconds": seconds,
        "chars_per_second": n / seconds if seconds > 0 else float("inf"),
        "device": generator.device,
        "int8": int8,
        "model": str(generator.manifest.dir),
        "model_file": generator.path.name,
        "model_sha256": generator.sha256,
    }
