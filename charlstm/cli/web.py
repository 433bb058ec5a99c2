"""`charlstm web MODEL_DIR OUT_DIR`: write a static site that generates in the browser (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import log, user_errors


def web(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by `charlstm export`.", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the site into.", show_default=False)],
    ort: Annotated[Optional[Path], typer.Option(metavar="DIR", help="onnxruntime-web's dist folder. Default: "
                                                                   "web/node_modules/onnxruntime-web/dist of the "
                                                                   "checkout (npm ci --prefix web).")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """Write a static site (page, Web Worker, model, onnxruntime-web) that generates in the browser. Host it
    anywhere static: python -m http.server --directory OUT_DIR, then open http://localhost:8000/."""
    with user_errors({"model_dir": "MODEL_DIR", "out": "OUT_DIR", "ort_dir": "--ort"}):
        from charlstm.web.site import build
        site = build(model_dir, out_dir, ort, force)
        log(f"wrote {site['site']}: {site['bytes'] / 1e6:.1f} MB ({site['gzipped_bytes'] / 1e6:.1f} MB gzipped), "
            f"onnxruntime-web {site['onnxruntime_web']}; try: python -m http.server --directory {site['site']}")
