"""Training speed per Keras backend: the default preset's model (Embedding 256, LSTM 512 x 2, stateful batches
of 32 x 100) trained for a few batches under each backend, in child processes run in turns.

    python -m benchmarks.training_backends --steps 10 --repeats 2

Prints ms per batch, characters per second and the time of one tinyshakespeare epoch (1,003,854 training
characters, validation not counted) per backend; a backend that is not installed is skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax")
EPOCH_CHARS = 1_003_854

CHILD = """
import json, sys, time
import numpy as np, keras
from training.config import PRESETS, ModelConfig, TrainConfig, split_options
from training.model import build_model
model_opts, train_opts = split_options(PRESETS["default"])
mc, tc = ModelConfig(vocab_size=65, **model_opts), TrainConfig(**train_opts)
model = build_model(mc, batch_size=tc.batch_size, stateful=True)
model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate, clipnorm=tc.clip_norm),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x, y = (rng.integers(0, 65, (tc.batch_size, tc.seq_length)).astype("int32") for _ in range(2))
for _ in range(3):
    model.train_on_batch(x, y)  # compile and warm up
steps = int(sys.argv[1])
start = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(x, y)
seconds = (time.perf_counter() - start) / steps
print(json.dumps({"backend": keras.backend.backend(), "ms_per_batch": seconds * 1e3,
                  "chars_per_s": tc.batch_size * tc.seq_length / seconds}))
"""


def measure(steps: int, repeats: int, log=print) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for backend in BACKENDS:
            if importlib.util.find_spec(backend) is None:
                results.setdefault(backend, [])
                continue
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], capture_output=True, text=True,
                                 cwd=ROOT, env=env, check=True).stdout
            results.setdefault(backend, []).append(json.loads(out.strip().splitlines()[-1]))
            log(f"{backend}: {results[backend][-1]['ms_per_batch']:.0f} ms per batch")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per backend, in turns")
    args = parser.parse_args(argv)
    results = measure(args.steps, args.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
    best = {b: min(r["ms_per_batch"] for r in rs) for b, rs in results.items() if rs}
    print(f"{'backend':<12}{'ms/batch':>10}{'chars/s':>10}{'epoch min':>11}{'vs tensorflow':>15}")
    for backend in BACKENDS:
        if backend not in best:
            print(f"{backend:<12}  skipped: not installed (pip install {backend})")
            continue
        ms = best[backend]
        cps = max(r["chars_per_s"] for r in results[backend])
        ratio = best["tensorflow"] / ms if "tensorflow" in best else float("nan")
        print(f"{backend:<12}{ms:>10.0f}{cps:>10.0f}{EPOCH_CHARS / cps / 60:>11.1f}{ratio:>14.2f}x")


if __name__ == "__main__":
    main()
