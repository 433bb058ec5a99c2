"""The model folder a benchmark measures, and the notebook's weights beside it.

By default a random-weight model of the notebook's shape (Embedding 256, LSTM 1024, 92 characters) is built
with the project's own Keras model and `charlstm export` code, then cached: speed depends on the shapes only.
The same weights go into notebook.npz, so the notebook's loop runs the very same numbers.

    cache/random-v92-e256-u1024-l1/model/         a model folder (model.json and the three .onnx files)
    cache/random-v92-e256-u1024-l1/notebook.npz   vocab + Keras weights for benchmarks/notebook_loop.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUIJOTE = ROOT.parent / "shared" / "data" / "quijote.txt"
QUIJOTE_BOOK = slice(734, 2111460)  # the book without Project Gutenberg's header and licence: 92 characters
SYNTHETIC = ("\n !\"'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
             "¡«»¿ÁÉÍÑÓÚàáéíïñóúü—‘’“”#$%&*+/<=>@[]_{|}~")


@dataclass(frozen=True)
class Shape:
    vocab_size: int = 92  # the notebook's Quijote text
    embedding_dim: int = 256  # the notebook's embedding
    units: int = 1024  # the notebook's LSTM width
    layers: int = 1  # the notebook stacks one LSTM

    @property
    def key(self) -> str:
        return f"random-v{self.vocab_size}-e{self.embedding_dim}-u{self.units}-l{self.layers}"


FILES = ("model.json", "model.onnx", "model.int8.onnx", "model.burst.onnx")  # what an export writes today


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charlstm" / "bench"


def vocab_and_text(vocab_size: int) -> tuple[list[str], str]:
    """The Quijote's characters when ../shared/data is at hand and the size fits, else made-up ones;
    plus some text of those characters (int8 export measures its loss on it; for random weights it means nothing)."""
    if QUIJOTE.is_file():
        book = QUIJOTE.read_text(encoding="utf-8")[QUIJOTE_BOOK]
        vocab = sorted(set(book))
        if len(vocab) == vocab_size:
            return vocab, book[-4000:]
    if vocab_size > len(SYNTHETIC):
        from charlstm.errors import UserError
        raise UserError(f"--vocab-size {vocab_size}: at most {len(SYNTHETIC)} made-up characters; use a smaller "
                        "size, or --model DIR with a model of a larger vocabulary")
    vocab = sorted(SYNTHETIC[:vocab_size])
    rng = np.random.default_rng(0)
    return vocab, "".join(rng.choice(vocab, 4000))


def notebook_weights(w, vocab: list[str]) -> dict[str, np.ndarray]:
    """training.model.Weights as the arrays benchmarks/notebook_loop.py loads."""
    out = {"vocab": np.array(vocab), "embedding": w.embedding,
           "dense_kernel": w.dense_kernel, "dense_bias": w.dense_bias}
    for i in range(w.layers):
        out[f"kernel_{i}"], out[f"recurrent_kernel_{i}"], out[f"bias_{i}"] = \
            w.kernels[i], w.recurrent_kernels[i], w.biases[i]
    return out


def random_model(shape: Shape, cache: Path | None = None, log=lambda m: None) -> tuple[Path, Path]:
    """(model folder, notebook.npz) of a random-weight model of `shape`, exported once and reused."""
    folder = Path(cache or default_cache()) / shape.key
    model_dir, npz = folder / "model", folder / "notebook.npz"
    missing = [name for name in FILES if not (model_dir / name).is_file()]
    if not missing and npz.is_file():
        return model_dir, npz
    if (model_dir / "model.json").is_file():  # built by an older export: its rows would be missing, not slower
        log(f"{model_dir} lacks {', '.join(missing)} (an older export wrote it): building it again")
    from charlstm.extras import require
    require("export", "tensorflow", "keras", "tf2onnx", "onnx")  # building needs them; --model DIR does not
    from export.export import export_model
    from training.config import ModelConfig
    from training.model import build_model, get_weights

    log(f"building a random-weight {shape.key} model folder in {folder} (once; it is reused)")
    vocab, text = vocab_and_text(shape.vocab_size)
    mc = ModelConfig(vocab_size=shape.vocab_size, embedding_dim=shape.embedding_dim, units=shape.units,
                     layers=shape.layers)
    model = build_model(mc)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "notebook.tmp.npz", **notebook_weights(get_weights(model), vocab))
    export_model(model, mc, vocab, model_dir, name=shape.key, force=True,
                 provenance={"source": "benchmarks/models.py", "weights": "random (keras initializers)",
                             "shape": shape.__dict__},
                 parity_text=np.array([stoi[ch] for ch in text[:128]], np.int64),
                 int8=True, val_text=text, log=log)
    os.replace(folder / "notebook.tmp.npz", npz)  # last: a finished pair or a rebuild next time
    return model_dir, npz


def shape_of(model_dir: Path) -> Shape:
    """The shape a model folder's manifest records (embedding_dim: 256 if it does not say)."""
    from runtime.manifest import load_manifest
    m = load_manifest(model_dir)
    return Shape(vocab_size=len(m.vocab), units=m.units, layers=m.layers,
                 embedding_dim=int(m.raw.get("model", {}).get("embedding_dim") or 256))


def random_notebook_weights(shape: Shape, path: Path, vocab: list[str]) -> Path:
    """Weights of the right shapes for a model folder that came without Keras weights (timing only)."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.uniform(-0.05, 0.05, s).astype(np.float32)  # noqa: E731
    arrays = {"vocab": np.array(vocab), "embedding": f32(shape.vocab_size, shape.embedding_dim),
              "dense_kernel": f32(shape.units, shape.vocab_size), "dense_bias": f32(shape.vocab_size)}
    width = shape.embedding_dim
    for i in range(shape.layers):
        arrays[f"kernel_{i}"], arrays[f"recurrent_kernel_{i}"] = f32(width, 4 * shape.units), \
            f32(shape.units, 4 * shape.units)
        arrays[f"bias_{i}"], width = f32(4 * shape.units), shape.units
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def main() -> None:
    """`python -m benchmarks.models --cache DIR`: build the seed-size folder (e.g. to carry to a GPU machine)."""
    import argparse
    import sys
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--cache", type=Path, default=None, help="where to build it (default: ~/.cache/charlstm/bench)")
    args = p.parse_args()
    model_dir, _ = random_model(Shape(), args.cache, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(model_dir)


if __name__ == "__main__":
    main()
