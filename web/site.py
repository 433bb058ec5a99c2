"""`charlstm web MODEL_DIR OUT_DIR`: a static site that generates in the browser with onnxruntime-web.

The site is the page (index.html, app.js), its Web Worker (worker.js: the session, the state carried from step to
step, the sampler), the model folder's model.onnx and model.json, and onnxruntime-web's three files for its WASM
backend, pinned by web/package.json and its lockfile. It runs from any static host (python -m http.server,
GitHub Pages) with no server code and works offline once loaded. The page uses the float32 step graph: the int8
graph's MatMulNBits ran far slower in WASM, and the burst graph reads its weights from model.onnx as
external data, which the step graph does not need (docs/browser.md has the measurements).

TensorFlow-free: the folder is checked by the runtime's own manifest and contract checks.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from charlstm.errors import UserError
from charlstm.runtime.contract import check_contract
from charlstm.runtime.files import new_tmp_dir, publish_dir, remove_stale_temps, write_failure
from charlstm.runtime.manifest import MANIFEST, MODEL_FILE, load_manifest
from charlstm.runtime.session import SessionConfig, load_session

STATIC = Path(__file__).parent / "static"
PAGE = ("index.html", "app.js", "worker.js")
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CHECKOUT_ORT = Path(__file__).parent / "node_modules" / "onnxruntime-web" / "dist"  # npm ci --prefix web


class WebError(UserError):
    pass


def ort_files(ort_dir: Path | None) -> tuple[Path, str]:
    """onnxruntime-web's dist folder and its version; one line saying how to get it when it is missing."""
    folder = Path(ort_dir) if ort_dir is not None else CHECKOUT_ORT
    missing = [name for name in ORT_FILES if not (folder / name).is_file()]
    if missing:
        raise WebError(f"onnxruntime-web's files are missing from {folder} ({', '.join(missing)}): run `npm ci "
                       "--prefix web` in a checkout of charlstm, or pass --ort DIR (the dist folder of an npm-"
                       "installed onnxruntime-web)", "ort_dir")
    package = folder.parent / "package.json"
    try:
        version = json.loads(package.read_text(encoding="utf-8")).get("version", "unknown")
    except (OSError, ValueError):
        version = "unknown"
    return folder, version


def build(model_dir, out_dir, ort_dir=None, force: bool = False) -> dict:
    """Write the site; returns what it holds: each file's size, raw and gzipped, and onnxruntime-web's version."""
    manifest = load_manifest(model_dir)
    path = manifest.onnx_path(int8=False)
    digest = manifest.verify(path)
    session = load_session(path, SessionConfig(device="cpu", int8=False, threads=1, spinning=False), "cpu")
    check_contract(session, manifest, path)  # a graph the runtime cannot run, the page cannot either
    ort_folder, version = ort_files(ort_dir)
    out = Path(out_dir)
    if (out.exists() or out.is_symlink()) and not force:
        raise WebError(f"output folder {out} already exists: pass --force to replace it, or choose another", "out")
    remove_stale_temps(out.parent if str(out.parent) else Path("."), out.name)
    tmp = new_tmp_dir(out)
    try:
        for name in PAGE:
            shutil.copyfile(STATIC / name, tmp / name)
        shutil.copyfile(path, tmp / MODEL_FILE)
        shutil.copyfile(manifest.dir / MANIFEST, tmp / MANIFEST)
        (tmp / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(ort_folder / name, tmp / "ort" / name)
        (tmp / "site.json").write_text(json.dumps({"onnxruntime_web": version, "model": manifest.name,
                                                   "model_file": MODEL_FILE, "model_sha256": digest}, indent=2) + "\n")
        sizes = {str(p.relative_to(tmp)): (p.stat().st_size, len(gzip.compress(p.read_bytes(), 9)))
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        publish_dir(tmp, out, force, "output folder")
    except OSError as e:
        raise write_failure(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"site": str(out), "onnxruntime_web": version, "files": sizes,
            "bytes": sum(raw for raw, _ in sizes.values()), "gzipped_bytes": sum(gz for _, gz in sizes.values())}
