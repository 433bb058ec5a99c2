"""Sampling on fixed logits, no model at all (keras-hub style)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charlstm.errors import UserError
from charlstm.runtime.sampling import (Sampler, SamplingParams, draw, greedy, gumbel_max, log_softmax, row_generators,
                              gumbel_uniforms, softmax, top_k_filter, top_p_filter, uniforms)

LOGITS = np.log(np.array([[0.1, 0.2, 0.3, 0.4],
                          [0.4, 0.3, 0.2, 0.1]]))  # rows are each other's mirror: easy to check by hand


def test_softmax_recovers_probabilities_at_temperature_1():
    np.testing.assert_allclose(softmax(LOGITS), np.exp(LOGITS), rtol=1e-12)


def test_temperature_is_applied_once_and_sharpens():
    probs = softmax(LOGITS, temperature=0.5)  # p^(1/T) renormalised: p^2 / sum p^2
    expected = np.array([0.1, 0.2, 0.3, 0.4]) ** 2 / 0.3
    np.testing.assert_allclose(probs[0], expected, rtol=1e-12)
    assert probs[0, 3] > softmax(LOGITS)[0, 3]


def test_softmax_is_stable_at_tiny_temperatures():
    probs = softmax(np.array([[1000.0, 999.0, -1000.0]]), temperature=1e-3)
    assert np.isfinite(probs).all() and probs[0, 0] == pytest.approx(1.0)


def test_log_softmax_matches_log_of_softmax():
    np.testing.assert_allclose(log_softmax(LOGITS), np.log(softmax(LOGITS)), rtol=1e-12)


def test_greedy_at_temperature_0_takes_the_likeliest_per_row():
    rngs = row_generators(0, 2)
    assert greedy(LOGITS).tolist() == [3, 0]
    assert Sampler(SamplingParams(temperature=0), rngs, 4).pick(LOGITS).tolist() == [3, 0]
    assert Sampler(SamplingParams(temperature=0, top_k=1, top_p=0.1), rngs, 4).pick(LOGITS).tolist() == [3, 0]
    assert Sampler(SamplingParams(temperature=1e-30), rngs, 4).pick(LOGITS).tolist() == [3, 0]  # below float32


def test_top_k_keeps_k_and_renormalises():
    kept = top_k_filter(softmax(LOGITS), 2)
    np.testing.assert_allclose(kept[0], [0, 0, 0.3 / 0.7, 0.4 / 0.7])
    np.testing.assert_allclose(kept[1], [0.4 / 0.7, 0.3 / 0.7, 0, 0])
    assert (top_k_filter(softmax(LOGITS), 10) == softmax(LOGITS)).all()  # k >= vocab keeps everything


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = softmax(LOGITS)
    np.testing.assert_allclose(top_p_filter(probs, 0.7)[0], [0, 0, 0.3 / 0.7, 0.4 / 0.7])  # 0.4 + 0.3 reaches 0.7
    np.testing.assert_allclose(top_p_filter(probs, 0.71)[0], [0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9])
    np.testing.assert_allclose(top_p_filter(probs, 0.05)[1], [1, 0, 0, 0])  # the likeliest always stays
    np.testing.assert_allclose(top_p_filter(probs, 1.0), probs)


def test_draw_is_the_inverse_cdf():
    probs = np.array([[0.1, 0.2, 0.3, 0.4]] * 5)
    u = np.array([0.05, 0.1, 0.25, 0.61, 1.0])
    assert draw(probs, u).tolist() == [0, 0, 1, 3, 3]
    zero_first = np.array([[0.0, 0.5, 0.5]])
    assert draw(zero_first, np.array([np.finfo(float).tiny])).tolist() == [1]  # never an id of probability 0


def test_sampling_matches_the_distribution():
    params = SamplingParams(temperature=1.0)
    sampler = Sampler(params, row_generators(123, 2), 4)
    counts = np.zeros((2, 4))
    for _ in range(20_000):
        for row, i in enumerate(sampler.pick(LOGITS)):
            counts[row, i] += 1
    np.testing.assert_allclose(counts / 20_000, np.exp(LOGITS), atol=0.015)


def test_a_seed_reproduces_and_rows_are_independent():
    params = SamplingParams(temperature=1.0, top_k=3)
    logits = np.zeros((3, 50))

    def run(seed, rows):
        sampler = Sampler(params, row_generators(seed, rows), 50)
        return np.stack([sampler.pick(logits[:rows]) for _ in range(40)], axis=1)

    a, b = run(7, 3), run(7, 3)
    assert (a == b).all()
    assert not (a[0] == a[1]).all() and not (a[1] == a[2]).all()  # same logits, different draws per row
    assert (run(7, 1)[0] == a[0]).all()  # row 0 of a batch draws what a single run draws
    assert not (run(8, 1)[0] == a[0]).all()


def test_uniforms_are_in_the_half_open_intervals():
    u = uniforms(row_generators(0, 4))  # the inverse-CDF draw's: (0, 1]
    assert u.shape == (4,) and (u > 0).all() and (u <= 1).all()
    g = gumbel_uniforms(row_generators(0, 4), 1000)  # gumbel_noise's: [0, 1), float32
    assert g.shape == (4, 1000) and g.dtype == np.float32 and (g >= 0).all() and (g < 1).all()


def test_gumbel_max_is_a_draw_from_the_softmax():
    logits = np.log(np.array([[0.05, 0.15, 0.3, 0.5]]))
    rng = np.random.default_rng(2024)
    n, temperature = 40_000, 0.7
    u = rng.random((n, 4))
    ids = gumbel_max(np.repeat(logits, n, axis=0), temperature, u)
    observed = np.bincount(ids, minlength=4)
    expected = softmax(logits, temperature)[0] * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    assert gumbel_max(LOGITS, 0, rng.random((2, 4))).tolist() == [3, 0]


@pytest.mark.parametrize("kwargs, quoted", [
    ({"temperature": -0.1}, "-0.1"),
    ({"temperature": math.nan}, "nan"),
    ({"temperature": math.inf}, "inf"),
    ({"temperature": 1e39}, "1e+39"),
    ({"top_k": 0}, "top_k 0"),
    ({"top_p": 0.0}, "top_p 0.0"),
    ({"top_p": 1.5}, "top_p 1.5"),
])
def test_bad_sampling_params_are_user_errors(kwargs, quoted):
    with pytest.raises(UserError, match=None) as e:
        SamplingParams(**kwargs)
    assert quoted in str(e.value) and "\n" not in str(e.value)


def test_tiny_and_huge_temperatures_stay_finite():
    """Below float32's resolution a temperature is greedy; up to the bound the filtered draw stays finite."""
    logits = np.array([[2.0, 1.0, 0.5, -1.0]])
    for t in (1e-320, 1e-9):
        for params in (SamplingParams(temperature=t), SamplingParams(temperature=t, top_k=2)):
            assert Sampler(params, row_generators(0, 1), 4).pick(logits).tolist() == [0]
    wide = Sampler(SamplingParams(temperature=100, top_k=3), row_generators(0, 1), 4)
    assert all(0 <= wide.pick(logits)[0] < 3 for _ in range(50))
