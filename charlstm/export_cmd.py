"""`charlstm export`: options -> export.export. Needs the `export` extra (TensorFlow, tf2onnx, onnx)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.errors import UserError, user_errors


def export(
    run_dir: Annotated[Optional[Path], typer.Argument(help="Run folder written by `charlstm train`.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write, e.g. models/NAME.")] = ...,
    checkpoint: Annotated[str, typer.Option(help="best (lowest validation loss), last, or the path of a .weights.h5 file.")] = "best",
    average: Annotated[int, typer.Option(min=1, help="Export the mean weights of this many epochs ending at --checkpoint (Polyak averaging; 1 = the checkpoint alone).")] = 1,
    name: Annotated[Optional[str], typer.Option(help="Model name in the manifest (default: the folder's name).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx (8-bit weights, for the CPU) and measure its validation loss.")] = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    from_notebook: Annotated[Optional[Path], typer.Option(help="Import a checkpoint written by the original notebook (folder or prefix) instead of a run folder.")] = None,
    corpus: Annotated[Optional[Path], typer.Option(help="With --from-notebook: the text the notebook trained on (its vocabulary is rebuilt from it).")] = None,
    triton: Annotated[Optional[Path], typer.Option(help="Also write a Triton Inference Server model repository here.")] = None,
) -> None:
    """Export a trained network to a verified stepwise ONNX model folder (model.onnx + model.json)."""
    with user_errors():
        from charlstm.extras import require
        require("export", "tensorflow", "keras", "tf2onnx", "onnx")
        from export.export import export_model, load_run, parity_ids
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if triton is not None and (triton / (name or out.name)).exists() and not force:
            # Checked first, so a refused Triton folder does not leave a fresh model folder behind.
            raise UserError(f"{triton / (name or out.name)} already exists: pass --force to replace it, "
                            f"or another --triton folder")
        if from_notebook is not None:
            if corpus is None:
                raise UserError("--from-notebook needs --corpus TEXT: the vocabulary is rebuilt from the corpus")
            from export.notebook import load_notebook
            model, mc, vocab, source, ids, eval_text = load_notebook(from_notebook, corpus)
        else:
            if run_dir is None:
                raise UserError("pass a RUN_DIR (the --out of `charlstm train`) or --from-notebook CKPT")
            model, mc, vocab, cfg, source = load_run(run_dir, checkpoint, average)
            ids = parity_ids(cfg, vocab)
            eval_text = _val_text(cfg, required=int8)
        manifest = export_model(model, mc, vocab, out, name=name, provenance=source, parity_text=ids,
                                force=force, int8=int8, val_text=eval_text, log=log)
        if triton is not None:
            from export.triton import write_repository
            write_repository(out, triton, force=force)
            log(f"Triton model repository: {triton}")
        p = manifest["export"]["parity"]
        typer.echo(f"wrote {out} (parity with Keras: {p['max_abs_logit_diff']:.2e} over {p['steps']} steps)",
                   err=True)


def _val_text(cfg: dict, required: bool) -> str | None:
    """The run's held-out text, to score the export; None if the corpus is gone (an error for --int8)."""
    from training import corpus as corpus_lib
    from training.config import TrainConfig, from_dict
    path = Path(cfg["corpus"]["path"])
    if not path.is_file():
        if not required:
            return None
        raise UserError(f"--int8 measures validation loss on the training corpus, which is gone: {path}")
    tc = from_dict(TrainConfig, cfg["train"])
    text = corpus_lib.read_text(path, keep_newlines=tc.keep_newlines)
    return text[int(len(text) * (1.0 - tc.val_fraction)):]
