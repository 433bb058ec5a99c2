"""The network: Embedding -> LSTM x layers (dropout between) -> Dense logits, in backend-agnostic Keras 3.

Also the weights as plain numpy arrays (charlstm.runtime.reference.Weights), for the export and for the samples
printed during training, which run the runtime's numpy LSTM cell.
"""

from __future__ import annotations

import keras
import numpy as np

from charlstm.errors import UserError
from charlstm.runtime.reference import Weights, numpy_step
from charlstm.training.config import ModelConfig


STATE_PREFIX = "carried_state_"  # the name of training.model.LSTM's state variables, which are not weights


class DropConnectCell(keras.layers.LSTMCell):
    """An LSTMCell that, while `dropped` holds a masked copy of its recurrent kernel, steps with that copy."""

    dropped = None

    def call(self, inputs, states, training=False):
        if self.dropped is None:
            return super().call(inputs, states, training)
        h_tm1, c_tm1 = states
        x_mask = self.get_dropout_mask(inputs) if training and 0.0 < self.dropout < 1.0 else None
        h_mask = self.get_recurrent_dropout_mask(h_tm1) if training and 0.0 < self.recurrent_dropout < 1.0 else None
        if x_mask is None and h_mask is None:
            z = keras.ops.split(keras.ops.matmul(inputs, self.kernel) + keras.ops.matmul(h_tm1, self.dropped)
                                + (self.bias if self.use_bias else 0.0), 4, axis=1)
        else:  # Keras' cells draw one mask per gate (i, f, c, o), as its own LSTMCell applies them
            xs, hs = _per_gate(inputs, x_mask), _per_gate(h_tm1, h_mask)
            kernels, recurrent = keras.ops.split(self.kernel, 4, axis=1), keras.ops.split(self.dropped, 4, axis=1)
            biases = keras.ops.split(self.bias, 4, axis=0) if self.use_bias else [0.0] * 4
            z = [keras.ops.matmul(xs[g], kernels[g]) + keras.ops.matmul(hs[g], recurrent[g]) + biases[g]
                 for g in range(4)]
        c, o = self._compute_carry_and_output_fused(z, c_tm1)
        h = o * self.activation(c)
        return h, [h, c]


def _per_gate(x, mask) -> list:
    if mask is None:
        return [x] * 4
    return [x * m for m in mask] if isinstance(mask, (list, tuple)) else [x * mask] * 4


@keras.saving.register_keras_serializable(package="charlstm")
class Embedding(keras.layers.Embedding):
    """keras.layers.Embedding with AWD-LSTM's embedding dropout (dropoute) while training: a character's row is
    zeroed for the whole batch, one mask per batch, and the kept rows are scaled by 1 / (1 - dropout). The table
    itself is unchanged, so inference (and the exported graph) looks characters up as trained."""

    def __init__(self, input_dim, output_dim, dropout: float = 0.0, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.dropout = dropout
        if dropout:
            self.seed_generator = keras.random.SeedGenerator()

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}

    def compute_output_spec(self, inputs, training=False):
        return super().compute_output_spec(inputs)

    def call(self, inputs, training=False):
        out = super().call(inputs)
        if not (training and self.dropout):
            return out
        keep = keras.random.dropout(keras.ops.ones((self.input_dim, 1), dtype=out.dtype), self.dropout,
                                    seed=self.seed_generator)
        return out * keras.ops.take(keep, inputs, axis=0)


@keras.saving.register_keras_serializable(package="charlstm")
class LSTM(keras.layers.LSTM):
    """keras.layers.LSTM whose carried state (stateful=True) is a tracked variable, so every backend carries it.

    Keras 3.15 creates the state variables untracked. TensorFlow assigns them in place, but the JAX trainer runs
    the model as a pure function and keeps only the tracked variables it returns: under KERAS_BACKEND=jax
    stateful=True silently trained and validated zero-state windows (the state was all zeros after fit).
    Tracked like BatchNormalization's moving statistics, the state survives every backend's fit and evaluate.
    It is not a weight: checkpoints neither save nor expect it, so they load into stateless models unchanged.
    """

    def __init__(self, units, weight_drop: float = 0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.weight_drop = weight_drop
        if weight_drop:  # AWD-LSTM's weight drop: DropConnect on the recurrent kernel, one mask per batch
            self.cell.__class__ = DropConnectCell
            self.weight_drop_seed = keras.random.SeedGenerator(kwargs.get("seed"))

    def get_config(self):
        return {**super().get_config(), "weight_drop": self.weight_drop}

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not (training and self.weight_drop):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        # One mask for the whole batch of sequences, as AWD-LSTM draws it; the kernel itself is unchanged, so
        # inference (and the exported graph) uses the trained weights as they are.
        dropped = keras.random.dropout(keras.ops.convert_to_tensor(self.cell.recurrent_kernel), self.weight_drop,
                                       seed=self.weight_drop_seed)  # a tensor: JAX cannot take the Variable
        if self.use_cudnn in ("auto", True) and not self.recurrent_dropout:
            try:  # the backend's fused kernel (cuDNN on a GPU), given the masked recurrent kernel
                if self.dropout:
                    dp = self.cell.get_dropout_mask(sequences[:, 0, :])
                    sequences = sequences * keras.ops.broadcast_to(keras.ops.expand_dims(dp, 1),
                                                                   keras.ops.shape(sequences))
                return keras.src.backend.lstm(
                    sequences, initial_state[0], initial_state[1], mask[0] if isinstance(mask, (list, tuple))
                    else mask, kernel=self.cell.kernel, recurrent_kernel=dropped, bias=self.cell.bias,
                    activation=self.cell.activation, recurrent_activation=self.cell.recurrent_activation,
                    return_sequences=self.return_sequences, go_backwards=self.go_backwards, unroll=self.unroll)
            except NotImplementedError:  # no fused kernel here (the CPU): the generic loop below
                pass
        self.cell.dropped = dropped
        try:
            return keras.layers.RNN.inner_loop(self, sequences, initial_state, mask, training=training)
        finally:
            self.cell.dropped = None

    def _create_state_variables(self, batch_size):
        self.states = [self.add_weight(shape=tuple(s.shape), initializer="zeros", trainable=False,
                                       dtype=self.variable_dtype, name=f"{STATE_PREFIX}{i}")
                       for i, s in enumerate(self.get_initial_state(batch_size))]

    def save_own_variables(self, store):
        pass  # the carried state belongs to a stream, not to the model

    def load_own_variables(self, store):
        pass


def build_model(mc: ModelConfig, batch_size: int | None = None, stateful: bool = False) -> keras.Model:
    """A sequence model: ids [batch, time] -> logits [batch, time, vocab].

    stateful=True keeps each LSTM's last state between calls (truncated BPTT across consecutive batches);
    Keras then needs a fixed batch size.
    """
    inputs = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="ids")
    x = Embedding(mc.vocab_size, mc.embedding_dim, dropout=mc.embedding_dropout, name="embedding")(inputs)
    for i in range(mc.layers):
        x = LSTM(mc.units, weight_drop=mc.weight_drop, return_sequences=True, stateful=stateful,
                 dropout=mc.input_dropout if i == 0 else 0.0, recurrent_dropout=mc.recurrent_dropout,
                 name=f"lstm_{i}")(x)
        if mc.dropout > 0:
            x = keras.layers.Dropout(mc.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(mc.vocab_size, name="logits")(x)
    return keras.Model(inputs, logits, name="charlstm")


def learned_weights(model: keras.Model) -> list[np.ndarray]:
    """model.get_weights() without the carried LSTM state, so it fits stateful and stateless twins alike."""
    return [keras.ops.convert_to_numpy(v) for v in _learned(model)]


def set_learned_weights(model: keras.Model, values: list[np.ndarray]) -> None:
    variables = _learned(model)
    if len(variables) != len(values):
        raise ValueError(f"{len(values)} weights given for a model of {len(variables)}")
    for v, value in zip(variables, values):
        v.assign(value)


def _learned(model: keras.Model) -> list:
    return [v for v in model.weights if not v.name.startswith(STATE_PREFIX)]


def load_checkpoints(model: keras.Model, paths: list) -> None:
    """Load one weights file, or the element-wise mean of several (averaged in float64)."""
    if len(paths) == 1:
        _load(model, paths[0])
        return
    total = None
    for path in paths:
        _load(model, path)
        weights = learned_weights(model)
        total = [w.astype(np.float64) for w in weights] if total is None else [t + w for t, w in zip(total, weights)]
    set_learned_weights(model, [(t / len(paths)).astype(w.dtype) for t, w in zip(total, weights)])


class CheckpointError(UserError):
    pass


def _load(model: keras.Model, path) -> None:
    try:
        model.load_weights(path)
    except Exception as e:  # h5py and Keras raise many types for a truncated or mismatched file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded into the run's model "
                              f"(truncated, corrupt, or shapes differ from config.json): {first}") from None


def reset_states(model: keras.Model) -> None:
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()


def get_weights(model: keras.Model) -> Weights:
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    f32 = lambda v: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float32)  # noqa: E731
    return Weights(
        embedding=f32(model.get_layer("embedding").embeddings),
        kernels=[f32(layer.cell.kernel) for layer in lstms],
        recurrent_kernels=[f32(layer.cell.recurrent_kernel) for layer in lstms],
        biases=[f32(layer.cell.bias) for layer in lstms],
        dense_kernel=f32(model.get_layer("logits").kernel),
        dense_bias=f32(model.get_layer("logits").bias),
    )


def sample_text(w: Weights, vocab: list[str], prompt: str, length: int, temperature: float,
                rng: np.random.Generator) -> str:
    """char-rnn's progress sample: prime the state on the prompt, then draw `length` characters."""
    stoi = {ch: i for i, ch in enumerate(vocab)}
    ids = [stoi[ch] for ch in prompt if ch in stoi] or [0]
    h, c = w.zero_state(1)
    for t in ids:
        logits, h, c = numpy_step(w, np.array([t]), h, c)
    out = []
    for _ in range(length):
        z = logits[0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        t = int(rng.choice(len(p), p=p / p.sum()))
        out.append(vocab[t])
        logits, h, c = numpy_step(w, np.array([t]), h, c)
    return "".join(out)
