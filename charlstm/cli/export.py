"""`charlstm export`: options -> export.export. Needs the `export` extra (TensorFlow, tf2onnx, onnx)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import log, user_errors
from charlstm.errors import UserError


class TritonKind(str, Enum):
    auto = "auto"
    gpu = "gpu"
    cpu = "cpu"


def export(
    run_dir: Annotated[Optional[Path], typer.Argument(help="Run folder written by `charlstm train`.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write, e.g. models/NAME.")] = ...,
    checkpoint: Annotated[str, typer.Option(help="best (lowest validation loss), last, or the path of a .weights.h5 file.")] = "best",
    average: Annotated[int, typer.Option(min=1, help="Export the mean weights of this many epochs ending at --checkpoint (Polyak averaging; 1 = the checkpoint alone).")] = 1,
    name: Annotated[Optional[str], typer.Option(help="Model name in the manifest (default: the folder's name).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx (8-bit weights, for the CPU) and measure its validation loss.")] = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    from_notebook: Annotated[Optional[Path], typer.Option(help="Import a checkpoint written by the original notebook (folder or prefix) instead of a run folder.")] = None,
    corpus: Annotated[Optional[Path], typer.Option(help="The text the run trained on, if it is no longer where the run recorded it (checked by sha256); with --from-notebook, the notebook's text (its vocabulary is rebuilt from it).")] = None,
    triton: Annotated[Optional[Path], typer.Option(help="Also write a Triton Inference Server model repository here.")] = None,
    triton_kind: Annotated[TritonKind, typer.Option(help="The Triton instance group: auto lets Triton choose (a GPU when it has one, else the CPU); gpu or cpu insists.")] = "auto",
) -> None:
    """Export a trained network to a verified stepwise ONNX model folder (model.onnx + model.json)."""
    with user_errors({"run_dir": "RUN_DIR"}):
        from charlstm.runtime.files import prepare_folder
        prepare_folder(out, force)  # before the imports and the minute of tracing: an existing or unwritable --out
        from charlstm.cli.extras import require
        require("export", "tensorflow", "keras", "tf2onnx", "onnx")
        from charlstm.export.export import export_model, held_out, load_run, parity_ids
        if triton is not None and (triton / (name or out.name)).exists() and not force:
            # Checked first, so a refused Triton folder does not leave a fresh model folder behind.
            raise UserError(f"{triton / (name or out.name)} already exists: pass --force to replace it, "
                            f"or another --triton folder")
        if from_notebook is not None:
            if corpus is None:
                raise UserError("--from-notebook needs --corpus TEXT: the vocabulary is rebuilt from the corpus")
            from charlstm.export.notebook import load_notebook
            model, mc, vocab, source, ids, eval_text = load_notebook(from_notebook, corpus)
        else:
            if run_dir is None:
                raise UserError("pass a RUN_DIR (the --out of `charlstm train`) or --from-notebook CKPT")
            model, mc, vocab, cfg, source = load_run(run_dir, checkpoint, average)
            eval_text = _held_out(run_dir, cfg, corpus) if corpus is not None else held_out(cfg, run_dir)
            ids = parity_ids(vocab, eval_text)
        manifest = export_model(model, mc, vocab, out, name=name, provenance=source, parity_text=ids,
                                force=force, int8=int8, val_text=eval_text, log=log)
        if triton is not None:
            from charlstm.export.triton import write_repository
            write_repository(out, triton, force=force, kind=TritonKind(triton_kind).value)
            log(f"Triton model repository: {triton}")
        p = manifest.export["parity"]
        log(f"wrote {out} (parity with Keras: {p['max_abs_logit_diff']:.2e} over {p['steps']} steps)")


def _held_out(run_dir: Path, cfg: dict, corpus: Path) -> str:
    """The held-out part of --corpus, which must be the run's own text (same sha256)."""
    from charlstm.runtime import text as text_io
    from charlstm.runtime.files import sha256_file
    if not corpus.is_file() or sha256_file(corpus) != cfg["corpus"].get("sha256"):
        raise UserError(f"--corpus {corpus} is missing or not the text {run_dir} was trained on (its sha256 differs "
                        "from config.json): pass the original file")
    keep = cfg["train"].get("keep_newlines", False)
    return text_io.split(text_io.read_text(corpus, keep_newlines=keep), cfg["train"].get("val_fraction",
                                                                                         text_io.VAL_FRACTION))[1]
