"""Picking the next character from logits: small pure numpy functions on [batch, vocab] arrays.

As in keras-hub, the temperature is applied once (`softmax(logits / temperature)`), then a strategy only picks:
greedy (temperature 0), top-k, top-p (nucleus), or a plain draw (by Gumbel-max, as the burst graph does).
Randomness comes in as explicit uniforms, so every function here is pure; `row_generators` makes one numpy
Generator per batch row from --seed, so a row's text depends only on the seed and its row index, not on how
many rows run beside it.
"""

from __future__ import annotations

from collections.abc import Iterator

import math
from dataclasses import dataclass

import numpy as np

from runtime.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """How the next character is chosen. Checked on construction: a bad value raises InputError."""

    temperature: float = 0.5  # below 1 sharpens the distribution: fewer misspellings, less variety; 0 is greedy
    top_k: int | None = None  # None keeps every character; k keeps the k likeliest
    top_p: float | None = None  # None keeps every character; p keeps the smallest set holding probability p

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InputError(f"--temperature {t!r} is not a finite number >= 0: use e.g. 0.5 "
                             "(0 always picks the likeliest character, 1 samples the model as trained)")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise InputError(f"--top-k {k!r} is not an integer >= 1: use e.g. 5, "
                             "or leave it out to keep all characters")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1)):
            raise InputError(f"--top-p {p!r} is outside (0, 1]: use e.g. 0.9, or leave it out to keep all characters")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

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


def noise_rows(rngs: list[np.random.Generator], vocab: int, temperature: float, count: int,
               block: int) -> Iterator[np.ndarray]:
    """`count` rows of gumbel_noise, [batch, vocab] each, one a step: drawn `block` steps at a time (fewer numpy
    calls), the very uniforms that one gumbel_uniforms call a step would draw."""
    while count > 0:
        size = min(block, count)
        yield from gumbel_noise(gumbel_uniforms(rngs, vocab, size), temperature)
        count -= size


def next_ids(logits: np.ndarray, params: SamplingParams, rngs: list[np.random.Generator]) -> np.ndarray:
    """The sampler: temperature once, then top-k, then top-p, then a draw. Returns int64 ids, shape [batch].

    Plain temperature sampling draws by Gumbel-max, as the burst graph does, so the step loop and the burst
    loop give the same text for a seed; top-k and top-p draw by the inverse CDF of the filtered softmax.
    """
    if params.greedy:
        return greedy(logits)
    if params.plain:
        return gumbel_max(logits, params.temperature, gumbel_uniforms(rngs, logits.shape[-1]))
    probs = softmax(logits, params.temperature)
    if params.top_k is not None:
        probs = top_k_filter(probs, int(params.top_k))
    if params.top_p is not None:
        probs = top_p_filter(probs, float(params.top_p))
    return draw(probs, uniforms(rngs))
