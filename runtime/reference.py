"""The LSTM in plain numpy: the reference every graph is checked against, and training's progress samples.

One definition of the cell (Keras' gate order i, f, c, o): the export folds these same weights into its graph,
the tests compare ONNX Runtime's step with this one, and the benchmarks time it as the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Weights:
    """The trained numbers, framework-free."""

    embedding: np.ndarray  # [vocab, embedding_dim]
    kernels: list[np.ndarray]  # per layer [input_width, 4 * units]
    recurrent_kernels: list[np.ndarray]  # per layer [units, 4 * units]
    biases: list[np.ndarray]  # per layer [4 * units]
    dense_kernel: np.ndarray  # [units, vocab]
    dense_bias: np.ndarray  # [vocab]

    @property
    def layers(self) -> int:
        return len(self.kernels)

    @property
    def units(self) -> int:
        return self.recurrent_kernels[0].shape[0]

    @property
    def vocab_size(self) -> int:
        return self.dense_bias.shape[0]

    def zero_state(self, batch: int = 1, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        h = np.zeros((self.layers, batch, self.units), dtype)
        return h, h.copy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free


def numpy_step(w: Weights, token: np.ndarray, h: np.ndarray, c: np.ndarray):
    """One character for a batch: token [batch], h and c [layers, batch, units] -> logits, h, c (new arrays)."""
    x = w.embedding[token]
    h_out, c_out = np.empty_like(h), np.empty_like(c)
    for i in range(w.layers):
        z = x @ w.kernels[i] + h[i] @ w.recurrent_kernels[i] + w.biases[i]
        zi, zf, zc, zo = np.split(z, 4, axis=-1)
        c_out[i] = sigmoid(zf) * c[i] + sigmoid(zi) * np.tanh(zc)
        h_out[i] = sigmoid(zo) * np.tanh(c_out[i])
        x = h_out[i]
    return x @ w.dense_kernel + w.dense_bias, h_out, c_out


def as_float64(w: Weights) -> Weights:
    """The same weights in float64: a reference free of float32 rounding, for parity checks."""
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    return Weights(f(w.embedding), [f(k) for k in w.kernels], [f(k) for k in w.recurrent_kernels],
                   [f(b) for b in w.biases], f(w.dense_kernel), f(w.dense_bias))
