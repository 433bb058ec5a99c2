"""`charlstm export`: run folder (or the notebook's checkpoint) -> verified model folder.

Stages: check the output folder -> load the Keras model and its vocabulary -> trace the step -> verify against
Keras -> burst graph -> score -> (int8) -> write model.onnx and model.json into a temporary folder -> rename it
into place. A failed stage leaves nothing; an existing folder is replaced only with force.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import numpy as np

from charlstm.errors import UserError
from charlstm.export import burst, step_graph, verify
from charlstm.runtime import text as text_io
from charlstm.runtime.files import new_tmp_dir, prepare_folder, publish_dir, sha256_bytes, write_failure
from charlstm.runtime.machine import versions
from charlstm.runtime.manifest import BURST_FILE, MODEL_FILE, Burst, Manifest
from charlstm.training import run
from charlstm.training.config import ModelConfig, TrainConfig, from_dict
from charlstm.training.model import build_model, get_weights, load_checkpoints


class ExportError(UserError):
    pass


def load_run(run_dir: Path, checkpoint: str, average: int = 1):
    """The Keras model with the checkpoint's weights (or the mean of the `average` epochs ending there)."""
    run_dir = Path(run_dir)
    cfg = run.read_config(run_dir)
    vocab = run.read_vocab(run_dir)
    mc = from_dict(ModelConfig, cfg["model"])
    if mc.vocab_size != len(vocab):
        raise ExportError(f"{run_dir / 'config.json'} says vocab_size {mc.vocab_size} but vocab.json holds "
                          f"{len(vocab)} characters: the run folder is damaged", "run_dir")
    paths, epochs = run.checkpoint_window(run_dir, checkpoint, average)
    epoch = epochs[-1] if epochs else None
    model = build_model(mc)
    load_checkpoints(model, paths)  # a file that does not fit is a one-line CheckpointError
    history = run.read_history(run_dir / "history.csv") if (run_dir / "history.csv").exists() else []
    row = next((r for r in history if r["epoch"] == epoch), None)
    source = {"run": run_dir.resolve().name, "checkpoints": [_relative(p, run_dir) for p in paths], "epoch": epoch,
              "val_loss": row["val_loss"] if row and average == 1 else None,  # as Keras measured it in training
              "corpus": run.corpus_record(cfg),
              "training": {"epochs": len(history), "seconds": round(sum(r["seconds"] for r in history), 1),
                           "machine": cfg.get("machine")},
              "run_config": run.portable_config(cfg)}
    if average > 1:
        source["averaged_epochs"] = epochs
    return model, mc, vocab, cfg, source


def _relative(path: Path, run_dir: Path) -> str:
    """A checkpoint's path inside the run folder (never a machine's absolute path)."""
    try:
        return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def held_out(cfg: dict, run_dir: Path) -> str | None:
    """The run's held-out text, or None if its corpus is not where the run recorded it."""
    path = run.corpus_path(Path(run_dir), cfg)
    if path is None:
        return None
    tc = from_dict(TrainConfig, cfg["train"])
    _, val = text_io.split(text_io.read_text(path, keep_newlines=tc.keep_newlines), tc.val_fraction)
    return val


def parity_ids(vocab: list[str], val_text: str | None, steps: int = 256) -> np.ndarray:
    """Real held-out text when the corpus is at hand, else a fixed pseudo-random sequence."""
    stoi = {ch: i for i, ch in enumerate(vocab)}
    ids = [stoi[ch] for ch in (val_text or "")[:steps * 2] if ch in stoi]
    if len(ids) >= steps:
        return np.array(ids[:steps], np.int64)
    return np.random.default_rng(0).integers(0, len(vocab), steps).astype(np.int64)


def export_model(model, mc: ModelConfig, vocab: list[str], out: Path, *, name: str | None = None,
                 provenance: dict, parity_text: np.ndarray, force: bool = False, int8: bool = False,
                 val_text: str | None = None, log=lambda m: None) -> Manifest:
    """Trace, verify and write a model folder atomically; returns its manifest.

    val_text (the held-out text, when at hand) is scored through the runtime and stored in the manifest;
    int8 needs it to measure what quantization costs.
    """
    out = Path(out)
    prepare_output(out, force)
    if int8 and not val_text:
        raise ExportError("int8 measures the validation loss it costs on the run's held-out text, and the "
                          "training corpus is not where the run recorded it: pass the corpus again, or drop --int8",
                          "int8")
    log("tracing the step graph with tf2onnx")
    onnx_model = step_graph.trace(get_weights(model))
    log(f"verifying against Keras on {len(parity_text)} steps")
    parity = verify.check(model, mc, onnx_model, parity_text)
    log(f"parity: largest logit difference {parity['max_abs_logit_diff']:.2e}, greedy text identical")
    data = onnx_model.SerializeToString()
    manifest = Manifest(
        name=name or out.name, vocab=tuple(vocab), layers=mc.layers, units=mc.units,
        embedding_dim=mc.embedding_dim, parameters=mc.parameters(),
        files={MODEL_FILE: {"sha256": sha256_bytes(data), "bytes": len(data)}},
        val_fraction=provenance.get("run_config", {}).get("train", {}).get("val_fraction", text_io.VAL_FRACTION),
        provenance=provenance,
        export={"opset": step_graph.OPSET, "ir_version": step_graph.IR_VERSION,
                "versions": versions("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"), "parity": parity,
                "exported": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    tmp = new_tmp_dir(out)
    try:
        (tmp / MODEL_FILE).write_bytes(data)
        log(f"writing the burst graph ({burst.STEPS} steps a run, sampled in the graph) and checking it")
        burst_data = burst.write(tmp)
        manifest = manifest.replace(
            files={**manifest.files, BURST_FILE: {"sha256": sha256_bytes(burst_data), "bytes": len(burst_data)}},
            burst=Burst(file=BURST_FILE, steps=burst.STEPS),
            export={**manifest.export, "burst_parity": burst.check(tmp)})
        manifest.write(tmp)  # the runtime reads a folder: score this one as it is
        if val_text:
            manifest = manifest.replace(evaluation=evaluate(tmp, val_text, provenance, log))
        if int8:
            from charlstm.export.int8 import quantize
            entry, figures = quantize(tmp, manifest, val_text, log)
            manifest = manifest.replace(files={**manifest.files, "model.int8.onnx": entry},
                                        export={**manifest.export, "int8": figures})
        manifest.write(tmp)
        publish_dir(tmp, out, force, "output folder")
    except OSError as e:  # a full disk while writing or scoring
        raise write_failure(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def prepare_output(out: Path, force: bool) -> None:
    prepare_folder(out, force)


def evaluate(folder: Path, val_text: str, provenance: dict, log) -> dict:
    """Validation cross-entropy of the exported graph, state carried: the figure `charlstm evaluate` prints."""
    from charlstm.runtime.evaluate import evaluate_text
    log(f"scoring {len(val_text):,} held-out characters through ONNX Runtime")
    r = evaluate_text(folder, val_text, device="cpu", unknown="skip")
    corpus_info = provenance.get("corpus") or {}
    log(f"validation: {r['nats_per_char']:.4f} nats/char ({r['bits_per_char']:.4f} bits/char)")
    return {"corpus": corpus_info.get("name"), "corpus_sha256": corpus_info.get("sha256"), "split": "val",
            "val_fraction": provenance.get("run_config", {}).get("train", {}).get("val_fraction",
                                                                                 text_io.VAL_FRACTION),
            "characters": r["characters"], "nats_per_char": r["nats_per_char"], "bits_per_char": r["bits_per_char"]}

