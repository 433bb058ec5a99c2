"""Training input pipeline benchmark: what training.data.CharBatches adds to model.fit, in characters per second.

The same compiled seed-size model (Embedding 256, LSTM 1024, batches of 64 x 100) is fit for a few steps from
CharBatches (as `charlstm train` does) and from the same batches held as in-memory numpy arrays (the bare
fit), in turns, so background load hits both alike. The pipeline should add at most 10%.

    python -m benchmarks.training_pipeline --steps 3 --repeats 3      # or: charlstm bench --training
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/training_pipeline.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.models import Shape  # noqa: E402
from benchmarks.timing import Row, median  # noqa: E402


def measure(shape: Shape = Shape(), batch_size: int = 64, seq_length: int = 100, steps: int = 3,
            repeats: int = 3, log=lambda m: None) -> list[Row]:
    """Rows for the pipeline and the bare fit, timed over `steps` batches per run, median of `repeats`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from training.config import ModelConfig
    from training.data import CharBatches
    from training.model import build_model

    mc = ModelConfig(vocab_size=shape.vocab_size, embedding_dim=shape.embedding_dim, units=shape.units,
                     layers=shape.layers)
    model = build_model(mc)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),  # as training/train.py compiles it
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Enough text for `steps` shuffled windows batches, with room for CharBatches' random start offset.
    n_chars = (steps + 1) * batch_size * (seq_length + 1) + seq_length
    ids = np.random.default_rng(0).integers(0, shape.vocab_size, n_chars).astype(np.int32)
    batches = CharBatches(ids, batch_size, seq_length, stateful=False, seed=0, shuffle=True, name="benchmark")
    pairs = [batches[i] for i in range(steps)]
    x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def pipeline():
        model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)

    def bare():
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    log("compiling the training step (first fit of each kind)")
    for fit in (bare, pipeline):
        fit()
    runs: dict[str, list[float]] = {"pipeline": [], "bare": []}
    for r in range(repeats):
        for name, fit in (("pipeline", pipeline), ("bare", bare)):
            log(f"round {r + 1} of {repeats}: {name}, {steps} batches of {batch_size} x {seq_length}")
            start = time.perf_counter()
            fit()
            runs[name].append(time.perf_counter() - start)
    chars = steps * batch_size * seq_length
    pipe_s, bare_s = median(runs["pipeline"]), median(runs["bare"])
    label = f"{batch_size} x {seq_length}, LSTM {shape.units}, {steps} steps per run"
    return [Row("cpu", f"train: CharBatches + model.fit ({label})", us_per_char=pipe_s / chars * 1e6,
                note=f"{(pipe_s / bare_s - 1) * 100:+.1f}% time vs the bare fit (target: at most +10%)",
                extra={"seconds": runs["pipeline"]}),
            Row("cpu", f"train: bare model.fit on numpy arrays ({label})", us_per_char=bare_s / chars * 1e6,
                note=f"median of {repeats}: {bare_s:.2f} s per run", extra={"seconds": runs["bare"]})]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="batches per timed run (a seed-size batch takes seconds)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each kind; the median is reported")
    p.add_argument("--units", type=int, default=Shape.units, help="LSTM width (the notebook: 1024)")
    args = p.parse_args()
    rows = measure(Shape(units=args.units), steps=args.steps, repeats=args.repeats,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    for r in rows:
        print(f"{r.variant}: {r.chars_per_s:,.0f} characters/s; {r.note}")


if __name__ == "__main__":
    main()
