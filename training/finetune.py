"""`--init-from SOURCE`: a new run that starts from another run's weights (fine-tuning on a new text).

SOURCE is a run folder (its best, last or a named checkpoint) or a model folder written by `charlstm export`, such
as the shipped models/shakespeare, whose run folder a user does not have: its weights are read back from
model.onnx (`model_weights`). The export folds layer 0's embedding, input kernel and bias into one table;
`unfold` factors the table back exactly (an SVD: the table minus its mean row has rank at most embedding_dim), so
the Keras model starts computing what the ONNX graph computes, checked before training starts.

The model keeps its source's shape. The vocabulary is the source's, in its order, with the new text's unseen
characters appended (sorted): every old character keeps its id and its trained embedding row and output
column; a new character's row and column start as a fresh model's would, and its output bias at the mean of the
old ones. Characters the new text does not use keep their rows (the model can still write them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charlstm.runtime.files import sha256_file
from charlstm.runtime.manifest import MANIFEST, MODEL_FILE, Manifest, load_manifest
from charlstm.runtime.reference import Weights
from charlstm.training import run
from charlstm.training.config import ConfigError, ModelConfig, from_dict


def merged_vocab(source_vocab: list[str], text: str) -> tuple[list[str], list[str]]:
    """(the fine-tune's vocabulary, the characters it adds)."""
    have = set(source_vocab)
    added = sorted(set(text) - have)
    return list(source_vocab) + added, added


def is_model_folder(path: Path) -> bool:
    """A folder written by `charlstm export` (model.json) rather than a run folder (config.json)."""
    return (Path(path) / MANIFEST).is_file() and not (Path(path) / "config.json").is_file()


def source_config(path: Path) -> dict:
    """The source's config: a run's config.json, or for a model folder its shape from model.json."""
    if not is_model_folder(path):
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--init-from {path} is neither a run folder (config.json) nor a model folder "
                              "(model.json): pass the --out of `charlstm train` or of `charlstm export`", "init_from")
        return run.read_config(path)
    m = load_manifest(path)
    if m.embedding_dim is None:
        raise ConfigError(f"--init-from {path}: {path / MANIFEST} records no model.embedding_dim: re-export the "
                          "model, or fine-tune from its run folder", "init_from")
    return {"model": {"vocab_size": len(m.vocab), "embedding_dim": m.embedding_dim, "units": m.units,
                      "layers": m.layers}}


def source(path: Path, checkpoint: str) -> tuple[dict, list[str], Path, int | None]:
    """The source's config, vocabulary, weights file and epoch."""
    if is_model_folder(path):
        if checkpoint not in ("best", "last"):
            raise ConfigError(f"--checkpoint {checkpoint}: {path} is a model folder, which holds one set of weights "
                              "(model.onnx): drop --checkpoint, or pass the run folder", "checkpoint")
        m = load_manifest(path)
        onnx_path = m.path(MODEL_FILE)
        m.verify(onnx_path)
        return source_config(path), list(m.vocab), onnx_path, m.provenance.get("epoch")
    cfg, vocab = run.read_config(path), run.read_vocab(path)
    weights, epoch = run.resolve_checkpoint(path, checkpoint)
    return cfg, vocab, weights, epoch


def initialise(model, source_dir: Path, checkpoint: str, vocab: list[str]) -> dict:
    """Load the source's weights into `model` (whose vocabulary extends the source's); returns the record
    config.json keeps of where the run started."""
    from charlstm.training.model import build_model, load_checkpoints  # Keras: not needed by plan's checks

    cfg, old_vocab, path, epoch = source(source_dir, checkpoint)
    n = len(old_vocab)
    if is_model_folder(source_dir):
        m = load_manifest(source_dir)
        w = unfold(model_weights(path, m), m.embedding_dim, seed=0)
        check_against_graph(w, path, m)
        emb, cells = w.embedding, [[w.kernels[i], w.recurrent_kernels[i], w.biases[i]] for i in range(w.layers)]
        kernel, bias = w.dense_kernel, w.dense_bias
        config = {"model": m.name, **({"run_config": m.provenance["run_config"]}
                                      if isinstance(m.provenance.get("run_config"), dict) else {})}
        name = m.provenance.get("run") or Path(source_dir).resolve().name
    else:
        old = build_model(from_dict(ModelConfig, cfg["model"]))
        load_checkpoints(old, [path])
        (emb,) = old.get_layer("embedding").get_weights()
        cells = [old.get_layer(f"lstm_{i}").cell.get_weights() for i in range(cfg["model"]["layers"])]
        kernel, bias = old.get_layer("logits").get_weights()
        config, name = run.portable_config(cfg), Path(source_dir).resolve().name
    (fresh_emb,) = model.get_layer("embedding").get_weights()
    model.get_layer("embedding").set_weights([np.concatenate([emb, fresh_emb[n:]]).astype(fresh_emb.dtype)])
    fresh_kernel, _ = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([np.concatenate([kernel, fresh_kernel[:, n:]], axis=1),
                                           np.concatenate([bias, np.full(len(vocab) - n, bias.mean(), bias.dtype)])])
    for i, values in enumerate(cells):
        model.get_layer(f"lstm_{i}").cell.set_weights(values)
    return {"run": name, "path": str(Path(source_dir).resolve()), "checkpoint_arg": checkpoint,
            "checkpoint": Path(path).name, "epoch": epoch, "checkpoint_sha256": sha256_file(path), "config": config,
            "added_characters": vocab[n:]}


def model_weights(onnx_path: Path, m: Manifest) -> Weights:
    """The numbers of an exported step graph (export/step_graph.py), found by walking it, not by name: layer 0's
    folded table feeds the Gather of the token; the float MatMuls, in graph order, are layer 0's recurrent
    kernel, each deeper layer's stacked [kernel; recurrent kernel], then the Dense. The returned Weights hold the
    table as layer 0's kernel over a one-hot embedding (`unfold` gives them their Keras shape)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ConfigError("--init-from a model folder reads its model.onnx with the onnx package: pip install "
                          "'charlstm[export]' (or onnx), or fine-tune from the run folder", "init_from") from None
    graph = onnx.load(str(onnx_path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    token = m.inputs["token"]

    def fail(why: str) -> ConfigError:
        return ConfigError(f"--init-from {m.dir}: {onnx_path.name} is not the step graph `charlstm export` writes "
                           f"({why}): re-export it, or fine-tune from the run folder", "init_from")

    def added(output: str):  # the constant that an Add node adds to `output`
        for node in graph.node:
            if node.op_type == "Add" and output in node.input:
                other = [x for x in node.input if x != output]
                if other and other[0] in consts:
                    return consts[other[0]]
        raise fail(f"no bias is added to {output}")

    tables = [consts[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[1] == token
              and n.input[0] in consts]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in consts]
    L, U, V = m.layers, m.units, len(m.vocab)
    if len(tables) != 1 or len(matmuls) != L + 1:
        raise fail(f"{len(tables)} token table(s) and {len(matmuls)} weight MatMul(s) for {L} layer(s)")
    table, u0 = tables[0], consts[matmuls[0].input[1]]
    stacked = [consts[n.input[1]] for n in matmuls[1:L]]
    dense = consts[matmuls[L].input[1]]
    shapes_ok = table.shape == (V, 4 * U) and u0.shape == (U, 4 * U) and dense.shape == (U, V) and \
        all(s.shape == (2 * U, 4 * U) for s in stacked)
    if not shapes_ok:
        raise fail("its weights' shapes do not match model.json's layers, units and vocabulary")
    return Weights(embedding=np.eye(V, dtype=np.float32),
                   kernels=[table] + [s[:U] for s in stacked],
                   recurrent_kernels=[u0] + [s[U:] for s in stacked],
                   biases=[np.zeros(4 * U, np.float32)] + [added(n.output[0]) for n in matmuls[1:L]],
                   dense_kernel=dense, dense_bias=added(matmuls[L].output[0]))


def check_against_graph(w: Weights, onnx_path: Path, m: Manifest, steps: int = 32) -> float:
    """ONNX Runtime's step on model.onnx and the numpy reference on `w` agree on `steps` characters, state
    carried (the walk found each number its right place); returns the largest logit difference."""
    import onnxruntime as ort

    from charlstm.runtime.reference import numpy_step

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h = np.zeros((w.layers, 1, w.units), np.float32)
    c, (rh, rc) = h.copy(), w.zero_state()
    worst = 0.0
    for token in np.random.default_rng(0).integers(0, w.vocab_size, steps):
        ids = np.array([token], np.int64)
        logits, h, c = session.run([m.outputs["logits"], m.outputs["h"], m.outputs["c"]],
                                   {m.inputs["token"]: ids, m.inputs["h"]: h, m.inputs["c"]: c})
        ref, rh, rc = numpy_step(w, ids, rh, rc)
        worst = max(worst, float(np.abs(ref - logits).max()))
    if not worst <= 1e-3:
        raise ConfigError(f"--init-from {m.dir}: the weights read from {onnx_path.name} compute logits up to {worst:.3g} "
                          "away from the graph's: re-export the model, or fine-tune from the run folder", "init_from")
    return worst


def unfold(w: Weights, embedding_dim: int, seed: int = 0) -> Weights:
    """Weights whose embedding is embedding_dim wide and whose layer 0 computes the same pre-activations as `w`'s.

    table = E @ W + b, so table - mean row = (E - mean E) @ W has rank at most embedding_dim: its SVD gives E and
    W exactly, and b is the mean row. Columns of E past the rank get small random values over zero rows of W, so
    the function is unchanged and those dimensions can still learn."""
    table = (w.embedding.astype(np.float64) @ w.kernels[0]) + w.biases[0]
    bias = table.mean(axis=0)
    u, s, vt = np.linalg.svd(table - bias, full_matrices=False)
    k = min(embedding_dim, len(s))
    root = np.sqrt(s[:k])
    emb = np.random.default_rng(seed).normal(0.0, 0.01, (table.shape[0], embedding_dim))
    emb[:, :k] = u[:, :k] * root
    kernel = np.zeros((embedding_dim, table.shape[1]))
    kernel[:k] = root[:, None] * vt[:k]
    error = np.abs(emb @ kernel + bias - table).max()
    if error > 1e-4 * max(1.0, np.abs(table).max()):
        raise ConfigError(f"--init-from: layer 0's table does not factor through {embedding_dim} embedding "
                          f"dimensions (max error {error:.2g}): fine-tune from the run folder", "init_from")
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Weights(embedding=f32(emb), kernels=[f32(kernel)] + list(w.kernels[1:]),
                   recurrent_kernels=list(w.recurrent_kernels), biases=[f32(bias)] + list(w.biases[1:]),
                   dense_kernel=w.dense_kernel, dense_bias=w.dense_bias)


def new_characters_note(added: list[str]) -> str:
    shown = ", ".join(repr(ch) for ch in added[:20]) + (f" and {len(added) - 20} more" if len(added) > 20 else "")
    return f"{len(added)} character(s) new to the source vocabulary, given fresh rows: {shown}" if added else \
        "no characters new to the source vocabulary"

