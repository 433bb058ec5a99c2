"""`charlstm export`: run folder (or the notebook's checkpoint) -> verified model folder.

Stages: load the Keras model and its vocabulary -> trace the step -> verify against Keras -> (int8) ->
write model.onnx, model.json into a temporary folder -> rename it into place. A failed stage leaves nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from charlstm.errors import UserError
from export import burst, step_graph, verify
from training import corpus, run
from training.config import ModelConfig, TrainConfig, from_dict
from training.model import build_model, get_weights, load_checkpoints

MODEL_FORMAT = "charlstm-model"
MODEL_FORMAT_VERSION = 1


class ExportError(UserError):
    pass


def load_run(run_dir: Path, checkpoint: str, average: int = 1):
    """The Keras model with the checkpoint's weights (or the mean of the `average` epochs ending there)."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{run_dir} is not a run folder (no config.json): pass the --out of `charlstm train`")
    cfg = run.read_json(cfg_path)
    mc, vocab = from_dict(ModelConfig, cfg["model"]), run.read_json(run_dir / "vocab.json")
    if mc.vocab_size != len(vocab):
        raise ExportError(f"{cfg_path} says vocab_size {mc.vocab_size} but vocab.json holds {len(vocab)} characters")
    paths, epochs = run.checkpoint_window(run_dir, checkpoint, average)
    epoch = epochs[-1] if epochs else None
    model = build_model(mc)
    load_checkpoints(model, paths)  # a file that does not fit is a one-line CheckpointError
    history = run.read_history(run_dir / "history.csv") if (run_dir / "history.csv").exists() else []
    row = next((r for r in history if r["epoch"] == epoch), None)
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": str(paths[-1]), "epoch": epoch,
              "val_loss": row["val_loss"] if row and average == 1 else None,  # as Keras measured it in training
              "corpus_sha256": cfg.get("corpus", {}).get("sha256"),
              "training": {"epochs": len(history), "seconds": round(sum(r["seconds"] for r in history), 1),
                           "machine": cfg.get("machine")},
              "run_config": cfg}
    if average > 1:
        source["averaged_epochs"] = epochs
        source["averaged_checkpoints"] = [str(p) for p in paths]
    return model, mc, vocab, cfg, source


def parity_ids(cfg: dict, vocab: list[str], steps: int = 256) -> np.ndarray:
    """Real held-out text when the corpus is at hand, else a fixed pseudo-random sequence."""
    path = Path(cfg.get("corpus", {}).get("path", ""))
    if path.is_file():
        tc = from_dict(TrainConfig, cfg.get("train", {}))
        text = corpus.read_text(path, keep_newlines=tc.keep_newlines)
        _, val = corpus.split(corpus.encode(text, vocab), tc.val_fraction)
        if len(val) >= steps:
            return val[:steps].astype(np.int64)
    return np.random.default_rng(0).integers(0, len(vocab), steps).astype(np.int64)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_model(model, mc: ModelConfig, vocab: list[str], out: Path, *, name: str | None = None,
                 provenance: dict, parity_text: np.ndarray, force: bool = False, int8: bool = False,
                 val_text: str | None = None, log=lambda m: None) -> dict:
    """Trace, verify and write a model folder atomically; returns the manifest.

    val_text (the held-out text, when at hand) is scored through the runtime and stored in the manifest;
    --int8 needs it to measure what quantization costs.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"output folder {out} already exists: pass --force to replace it, or another --out")
    log("tracing the step graph with tf2onnx")
    onnx_model = step_graph.trace(get_weights(model))
    log(f"verifying against Keras on {len(parity_text)} steps")
    parity = verify.check(model, mc, onnx_model, parity_text)
    log(f"parity: largest logit difference {parity['max_abs_logit_diff']:.2e}, greedy text identical")
    data = onnx_model.SerializeToString()
    manifest = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "name": name or out.name,
        "vocab": vocab,
        "model": {"layers": mc.layers, "units": mc.units, "embedding_dim": mc.embedding_dim,
                  "vocab_size": mc.vocab_size, "parameters": mc.parameters()},
        "inputs": step_graph.INPUTS, "outputs": step_graph.OUTPUTS,
        "sampling": {"temperature": 0.5, "length": 500},  # the notebook's
        "files": {"model.onnx": {"sha256": sha256_bytes(data), "bytes": len(data)}},
        "split": {"val_fraction": provenance.get("run_config", {}).get("train", {}).get("val_fraction", 0.1)},
        "provenance": provenance,
        "export": {"opset": step_graph.OPSET, "ir_version": step_graph.IR_VERSION, "versions": versions(),
                   "parity": parity, "exported": datetime.datetime.now(datetime.timezone.utc).isoformat()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a model folder is as readable as any other
    try:
        (tmp / "model.onnx").write_bytes(data)
        log(f"writing the burst graph ({burst.STEPS} steps a run, sampled in the graph) and checking it")
        burst_data = burst.write(tmp)
        manifest["files"][burst.FILE] = {"sha256": sha256_bytes(burst_data), "bytes": len(burst_data)}
        manifest["burst"] = {"file": burst.FILE, "steps": burst.STEPS, "inputs": burst.BURST_INPUTS,
                             "outputs": burst.BURST_OUTPUTS}
        manifest["export"]["burst_parity"] = burst.check(tmp)
        run.write_json(tmp / "model.json", manifest)  # the runtime reads a folder: score this one as it is
        if val_text:
            manifest["evaluation"] = evaluate(tmp, val_text, provenance, log)
        if int8:
            from export.int8 import quantize
            manifest["files"]["model.int8.onnx"], manifest["export"]["int8"] = quantize(
                tmp, manifest, val_text, log)
        run.write_json(tmp / "model.json", manifest)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def evaluate(folder: Path, val_text: str, provenance: dict, log) -> dict:
    """Validation cross-entropy of the exported graph, state carried: the figure `charlstm evaluate` prints."""
    from runtime.evaluate import evaluate_text
    log(f"scoring {len(val_text):,} held-out characters through ONNX Runtime")
    r = evaluate_text(folder, val_text, device="cpu", unknown="skip")
    cfg = provenance.get("run_config", {})
    log(f"validation: {r['nats_per_char']:.4f} nats/char ({r['bits_per_char']:.4f} bits/char)")
    return {"corpus": Path(cfg.get("corpus", {}).get("path", provenance.get("corpus", ""))).name,
            "corpus_sha256": cfg.get("corpus", {}).get("sha256", provenance.get("corpus_sha256")),
            "split": "val", "val_fraction": cfg.get("train", {}).get("val_fraction", 0.1),
            "characters": r["characters"], "nats_per_char": r["nats_per_char"], "bits_per_char": r["bits_per_char"]}


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` (--force) is moved aside first and removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
