"""The original notebook's generation, as a script: the baseline every generation speed-up is measured against.

It is the notebook's `generate_text` loop unchanged in substance: TensorFlow eager, a stateful batch-1
Embedding -> LSTM -> Dense model fed one character per call, `tf.random.categorical` on the logits, one
`.numpy()` per character. The notebook ran tf.keras 2; that is `tf_keras` today (TF_USE_LEGACY_KERAS=1), used
when installed, else Keras 3.

    python benchmarks/notebook.py WEIGHTS.npz --length 500        # the text, like the notebook
    python benchmarks/notebook.py WEIGHTS.npz --serve             # for bench.py: stdin N -> µs/char

WEIGHTS.npz (written by benchmarks/bench.py) holds vocab, embedding, kernel_i, recurrent_kernel_i, bias_i,
dense_kernel, dense_bias: the same numbers as the ONNX model folder it sits beside.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:  # the notebook's Keras 2, if installed; must be decided before TensorFlow is imported
    import tf_keras  # noqa: F401
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
except ImportError:
    pass

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def keras_name() -> str:
    return "tf.keras 2" if os.environ.get("TF_USE_LEGACY_KERAS") == "1" else "keras 3"


def build_model(weights: dict):
    """The notebook's build_model(vocab_size, embedding_dim, rnn_units, batch_size=1), with the given weights."""
    layers = sum(1 for k in weights if k.startswith("recurrent_kernel_"))
    vocab_size, embedding_dim = weights["embedding"].shape
    units = weights["recurrent_kernel_0"].shape[0]
    model = tf.keras.Sequential([tf.keras.Input(batch_shape=(1, None), dtype="int32"),
                                 tf.keras.layers.Embedding(vocab_size, embedding_dim)]
                                + [tf.keras.layers.LSTM(units, return_sequences=True, stateful=True,
                                                        recurrent_initializer="glorot_uniform")
                                   for _ in range(layers)]
                                + [tf.keras.layers.Dense(vocab_size)])
    values = [weights["embedding"]]
    for i in range(layers):
        values += [weights[f"kernel_{i}"], weights[f"recurrent_kernel_{i}"], weights[f"bias_{i}"]]
    model.set_weights(values + [weights["dense_kernel"], weights["dense_bias"]])
    return model


def reset_states(model) -> None:
    """model.reset_states() in tf.keras 2; Keras 3 resets each stateful layer."""
    if hasattr(model, "reset_states"):
        model.reset_states()
    else:
        for layer in model.layers:
            if getattr(layer, "stateful", False):
                layer.reset_state()


def generate_text(model, start_ids: list[int], num_generate: int, temperature: float = 1.0) -> list[int]:
    """The notebook's loop: the model sees the prompt, then each sampled character, one call per character."""
    input_eval = tf.expand_dims(start_ids, 0)
    out = []
    reset_states(model)
    for _ in range(num_generate):
        predictions = model(input_eval)
        predictions = tf.squeeze(predictions, 0)
        predictions = predictions / temperature
        predicted_id = tf.random.categorical(predictions, num_samples=1)[-1, 0].numpy()
        input_eval = tf.expand_dims([predicted_id], 0)
        out.append(int(predicted_id))
    return out


def serve(model) -> None:
    """bench.py Child protocol: one JSON line, then each line N on stdin gets the µs per character
    of one generate_text call of N characters."""
    print(json.dumps({"keras": keras_name(), "tensorflow": tf.__version__}), flush=True)
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter()
        generate_text(model, [0], n)
        print((time.perf_counter() - start) / n * 1e6, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", help="the .npz written beside the model folder")
    p.add_argument("--length", type=int, default=500, help="characters to generate (the notebook: 1000)")
    p.add_argument("--prompt", default="", help="start string (default: the first vocabulary character)")
    p.add_argument("--serve", action="store_true", help="time generation on request (used by benchmarks/bench.py)")
    args = p.parse_args()
    weights = dict(np.load(args.weights))
    vocab = [str(ch) for ch in weights.pop("vocab")]
    model = build_model(weights)
    if args.serve:
        return serve(model)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    prompt = args.prompt or vocab[0]
    ids = generate_text(model, [stoi[ch] for ch in prompt], args.length)
    sys.stdout.write(prompt + "".join(vocab[i] for i in ids) + "\n")


if __name__ == "__main__":
    main()
