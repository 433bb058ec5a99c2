"""Picking the next character from logits: small pure numpy functions on [batch, vocab] arrays, and `Sampler`.

As in keras-hub, the temperature is applied once (`softmax(logits / temperature)`), then a strategy only picks:
greedy (temperature 0), top-k, top-p (nucleus), or a plain draw (by Gumbel-max, as the burst graph does).
Randomness comes in as explicit uniforms, so every function here is pure; `row_generators` makes one numpy
Generator per batch row from a seed, so a row's text depends only on the seed and its row index, not on how
many rows run beside it. `Sampler` is the one entry point the generate loop and the serving engine call for
every character, the first one included, on any device and graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charlstm.runtime.errors import InputError
from charlstm.runtime.manifest import SamplingDefaults

MAX_TEMPERATURE = 100.0  # logits / 100 is all but uniform already; above it float32 noise would overflow
GREEDY_BELOW = float(np.finfo(np.float32).eps)  # a temperature under float32's resolution picks the likeliest
NOISE_BLOCK = 64  # steps of Gumbel noise a Sampler draws at once: fewer numpy calls, the same numbers


@dataclass(frozen=True)
class SamplingParams:
    """How the next character is chosen. Checked on construction: a bad value raises InputError."""

    temperature: float = SamplingDefaults.temperature  # below 1 sharpens: fewer misspellings, less variety
    top_k: int | None = None  # None keeps every character; k keeps the k likeliest
    top_p: float | None = None  # None keeps every character; p keeps the smallest set holding probability p

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or \
                not 0 <= t <= MAX_TEMPERATURE:
            raise InputError(f"temperature {t!r} is not a number from 0 to {MAX_TEMPERATURE:g}: use e.g. 0.5 "
                             "(0 always picks the likeliest character, 1 samples the model as trained)",
                             "temperature")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise InputError(f"top_k {k!r} is not an integer >= 1: use e.g. 5, or leave it out to keep all "
                             "characters", "top_k")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1)):
            raise InputError(f"top_p {p!r} is outside (0, 1]: use e.g. 0.9, or leave it out to keep all characters",
                             "top_p")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def plain(self) -> bool:
        """Temperature alone (or greedy): what the burst graph samples in the graph."""
        return self.top_k is None and self.top_p is None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of softmax(logits / temperature) per row, in float64 (temperature > 0)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)  # exp of the largest is 1: no overflow at small temperatures
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax(logits) per row, in float64; used to score text (cross-entropy)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def greedy(logits: np.ndarray) -> np.ndarray:
    """The likeliest id per row (ties go to the lowest id)."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def top_k_filter(probs: np.ndarray, k: int) -> np.ndarray:
    """Zero all but the k largest probabilities per row and renormalise (ties at the cut may keep a few more)."""
    if k >= probs.shape[-1]:
        return probs
    kth = np.partition(probs, -k, axis=-1)[:, -k][:, None]
    kept = np.where(probs >= kth, probs, 0.0)
    return kept / kept.sum(axis=-1, keepdims=True)


def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of likeliest ids per row whose probability reaches p, renormalised."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # probability of the ids ranked above this one
    keep_sorted = before < p  # the first id always stays: before == 0 < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(axis=-1, keepdims=True)


def draw(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row: the first id whose cumulative probability reaches u (u in (0, 1], shape [batch])."""
    cdf = np.cumsum(probs, axis=-1)
    target = np.asarray(u, dtype=np.float64)[:, None] * cdf[:, -1:]  # scaled by the total: rounding-proof
    ids = (cdf < target).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


GUMBEL_FLOOR = np.float32(2.0**-25)  # -log(1 - u) for the smallest u > 0 is ~2^-24: half that stands in for u = 0


def gumbel_noise(u: np.ndarray, temperature: float) -> np.ndarray:
    """temperature * g with g = -log(-log(1 - u)), in float32: what the burst graph adds to the logits.

    u holds uniforms in [0, 1) of any shape (Generator.random's float32 grid, steps of 2^-24), so 1 - u is in
    (0, 1]; u = 0 would make g infinite and is taken as the middle of its grid cell. argmax(logits + noise) =
    argmax(logits / T + g) is a draw from softmax(logits / T), exact up to that grid; temperature 0 gives zeros,
    so the argmax is greedy.
    """
    if temperature == 0:
        return np.zeros(np.shape(u), np.float32)
    e = np.log1p(-np.asarray(u, dtype=np.float32))  # log(1 - u) <= 0, computed in place from here on
    np.negative(e, out=e)
    np.maximum(e, GUMBEL_FLOOR, out=e)
    np.log(e, out=e)
    e *= np.float32(-temperature)
    return e


def gumbel_max(logits: np.ndarray, temperature: float, u: np.ndarray) -> np.ndarray:
    """argmax(logits / T + g) with g = -log(-log(1 - u)): a draw from softmax(logits / T).

    u holds uniforms in [0, 1), shape [batch, vocab]. Needs no cumulative sum or sort, only an elementwise
    op and an argmax, which is why it suits sampling inside the graph. Computed as the burst graph does
    (float32 logits + gumbel_noise), so a seed picks the same text on the host as in the graph. T 0 is greedy.
    """
    scored = np.asarray(logits, dtype=np.float32) + gumbel_noise(u, temperature)
    return np.argmax(scored, axis=-1).astype(np.int64)


def row_generators(seed: int | None, rows: int) -> list[np.random.Generator]:
    """One numpy Generator per batch row: row i of a batch draws what row i would draw alone (same seed).

    seed None draws fresh entropy, so every run differs.
    """
    children = np.random.SeedSequence(seed).spawn(rows)
    return [np.random.default_rng(child) for child in children]


def uniforms(rngs: list[np.random.Generator]) -> np.ndarray:
    """One uniform in (0, 1] per row ([batch]), row i from rngs[i], for the inverse-CDF draw."""
    return np.array([1.0 - r.random() for r in rngs])  # random() is in [0, 1): flip to exclude 0


def gumbel_uniforms(rngs: list[np.random.Generator], vocab: int, steps: int | None = None) -> np.ndarray:
    """float32 uniforms in [0, 1) for gumbel_noise, row i from rngs[i]: [batch, vocab], or [steps, batch, vocab]
    for a burst run, the very numbers that `steps` single calls would draw."""
    if steps is None:
        return np.stack([r.random(vocab, dtype=np.float32) for r in rngs])
    return np.stack([r.random((steps, vocab), dtype=np.float32) for r in rngs], axis=1)


class Sampler:
    """Picks the next id of every row of a batch: the sampling entry point for every character.

    Greedy rows take the argmax; plain temperature sampling adds Gumbel noise (temperature applied) and takes the
    argmax, exactly what the burst graph computes, so `noise(k)` hands the burst graph the very draws that k
    `pick` calls would use; top-k and top-p draw by the inverse CDF of the filtered softmax. Plain noise is drawn
    NOISE_BLOCK steps ahead: the same uniforms in the same order, so the same text, with fewer numpy calls.
    """

    def __init__(self, params: SamplingParams, rngs: list[np.random.Generator], vocab: int,
                 block: int = NOISE_BLOCK):
        self.params, self.rngs, self.vocab, self.block = params, rngs, vocab, block
        self._noise = np.zeros((0, len(rngs), vocab), np.float32)  # drawn, not yet used: [steps, batch, vocab]

    def noise(self, steps: int) -> np.ndarray:
        """The next `steps` rows of Gumbel noise, [steps, batch, vocab] (zeros when greedy)."""
        if self.params.greedy:
            return np.zeros((steps, len(self.rngs), self.vocab), np.float32)
        if len(self._noise) < steps:
            fresh = gumbel_noise(gumbel_uniforms(self.rngs, self.vocab, max(self.block, steps - len(self._noise))),
                                 self.params.temperature)
            self._noise = np.concatenate([self._noise, fresh]) if len(self._noise) else fresh
        out, self._noise = self._noise[:steps], self._noise[steps:]
        return out

    def pick(self, logits: np.ndarray) -> np.ndarray:
        """The next id per row, int64 [batch], from logits [batch, vocab]."""
        p = self.params
        if p.greedy:
            return greedy(logits)
        if p.plain:
            scored = np.asarray(logits, dtype=np.float32) + self.noise(1)[0]
            return np.argmax(scored, axis=-1).astype(np.int64)
        probs = softmax(logits, p.temperature)
        if p.top_k is not None:
            probs = top_k_filter(probs, int(p.top_k))
        if p.top_p is not None:
            probs = top_p_filter(probs, float(p.top_p))
        return draw(probs, uniforms(self.rngs))
