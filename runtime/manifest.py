"""model.json: the one description of a model folder, written by `charlstm export` and read by the runtime.

A model folder describes itself: the vocabulary in id order, the model shape, the graph's input and output
names, the sampling defaults and the sha256 of each ONNX file. `Manifest` is both the writer's and the reader's
view: export builds one and calls `write`, the runtime calls `Manifest.load`, which checks every field's type
and bounds up front, so a damaged folder fails with one line naming the problem rather than deep inside ONNX
Runtime or numpy. Free-form sections (provenance, export facts, evaluation) are kept as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from charlstm.runtime.errors import ModelError
from charlstm.runtime.files import sha256_file, write_json

FORMAT = "charlstm-model"
FORMAT_VERSION = 1
MANIFEST = "model.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
BURST_FILE = "model.burst.onnx"
DEFAULT_MODEL_ENV = "CHARLSTM_MODEL"
# The graph contract's names (role -> ONNX name); export writes them, the runtime reads what the manifest lists.
GRAPH_INPUTS = {"token": "token", "h": "h", "c": "c"}
GRAPH_OUTPUTS = {"logits": "logits", "h": "h_out", "c": "c_out"}
BURST_INPUTS = {**GRAPH_INPUTS, "noise": "noise"}
BURST_OUTPUTS = {"tokens": "tokens", "h": "h_out", "c": "c_out"}
# Sanity bounds, far above any real model, so a damaged manifest cannot ask numpy for terabytes.
MAX_LAYERS, MAX_UNITS, MAX_VOCAB, MAX_BURST_STEPS = 64, 65_536, 1 << 20, 32
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class SamplingDefaults:
    """What `generate` does when not told otherwise; the manifest's `sampling` section."""

    temperature: float = 0.5  # the notebook's logits / 0.5: confident but not looping
    length: int = 500  # the notebook's 500 characters


@dataclass(frozen=True)
class Burst:
    """The optional burst graph: `steps` characters per run, sampled in the graph (export/burst.py)."""

    file: str
    steps: int
    inputs: dict = field(default_factory=lambda: dict(BURST_INPUTS))
    outputs: dict = field(default_factory=lambda: dict(BURST_OUTPUTS))


@dataclass(frozen=True)
class Manifest:
    """A model folder's model.json. `dir` is where it was loaded from (None for one not yet written)."""

    name: str
    vocab: tuple[str, ...]  # characters in id order: id = index
    layers: int
    units: int
    embedding_dim: int | None = None
    parameters: int | None = None
    inputs: dict = field(default_factory=lambda: dict(GRAPH_INPUTS))  # role -> ONNX input name
    outputs: dict = field(default_factory=lambda: dict(GRAPH_OUTPUTS))  # role -> ONNX output name
    sampling: SamplingDefaults = SamplingDefaults()
    files: dict = field(default_factory=dict)  # file name -> {"sha256", "bytes"}
    val_fraction: float | None = None  # the last fraction of the corpus held out in training, if recorded
    burst: Burst | None = None  # folders exported before the burst graph existed have none
    evaluation: dict | None = None  # the held-out figure the export measured
    provenance: dict = field(default_factory=dict)  # the run, checkpoint, corpus name and sha256, training time
    export: dict = field(default_factory=dict)  # opset, versions, parity figures
    dir: Path | None = field(default=None, compare=False)

    # -- the runtime's view ------------------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        return self.sampling.temperature

    @property
    def length(self) -> int:
        return self.sampling.length

    @property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.vocab)}

    def path(self, name: str) -> Path:
        """A file of this folder, checked: present and a regular file (not a FIFO, a device or a folder)."""
        path = self.dir / name
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            raise ModelError(f"{path} {what}: the model folder is incomplete; re-run `charlstm export`",
                             "model_dir")
        return path

    def onnx_path(self, int8: bool = False) -> Path:
        """The ONNX file to load, checked for presence; int8 needs the quantized file."""
        if int8 and not (self.dir / INT8_FILE).exists():
            raise ModelError(f"int8: {self.dir / INT8_FILE} does not exist: this model was exported without an "
                             "int8 file; use float32, or re-export with --int8", "int8")
        return self.path(INT8_FILE if int8 else MODEL_FILE)

    def burst_path(self) -> Path:
        return self.path(self.burst.file)

    def verify(self, path: Path) -> str:
        """Check the file against the size and sha256 the manifest recorded; returns the digest."""
        entry = self.files.get(path.name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ModelError(f"{self.dir / MANIFEST} records no sha256 for {path.name} (files.{path.name}.sha256): "
                             "re-run `charlstm export`", "model_dir")
        size = path.stat().st_size
        if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
            raise ModelError(f"{path} has {size:,} bytes, but {MANIFEST} records {entry['bytes']:,}: the file was "
                             "changed or truncated; re-run `charlstm export`", "model_dir")
        digest = sha256_file(path)
        if digest != entry["sha256"].lower():
            raise ModelError(f"{path} has sha256 {digest[:12]}…, but {MANIFEST} records {entry['sha256'][:12]}…: "
                             "the file was changed or truncated; re-run `charlstm export`", "model_dir")
        return digest

    def summary(self) -> dict:
        """The facts a client wants to see (the server's /v1/models, the browser page)."""
        ev = self.evaluation or {}
        return {"name": self.name, "vocab_size": len(self.vocab), "layers": self.layers, "units": self.units,
                "embedding_dim": self.embedding_dim, "parameters": self.parameters,
                "temperature": self.temperature, "length": self.length,
                "val_nats_per_char": ev.get("nats_per_char"), "val_corpus": ev.get("corpus")}

    # -- the writer's view -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "vocab": list(self.vocab),
            "model": {"layers": self.layers, "units": self.units, "embedding_dim": self.embedding_dim,
                      "vocab_size": len(self.vocab), "parameters": self.parameters},
            "inputs": dict(self.inputs), "outputs": dict(self.outputs),
            "sampling": dataclasses.asdict(self.sampling), "files": dict(self.files),
            "split": {"val_fraction": self.val_fraction}, "provenance": self.provenance, "export": self.export,
        }
        if self.burst is not None:
            data["burst"] = dataclasses.asdict(self.burst)
        if self.evaluation is not None:
            data["evaluation"] = self.evaluation
        return data

    def write(self, folder) -> None:
        write_json(Path(folder) / MANIFEST, self.to_json())

    def replace(self, **changes) -> Manifest:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, model_dir) -> Manifest:
        return load_manifest(model_dir)


def default_model_dir() -> Path:
    """$CHARLSTM_MODEL, else the default model that ships inside the package (models/shakespeare)."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env)
    import importlib.util
    spec = importlib.util.find_spec("charlstm.models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "shakespeare" / MANIFEST).is_file():
            return Path(root) / "shakespeare"
    raise ModelError("no default model found (this install lacks charlstm/models/shakespeare): pass --model DIR "
                     f"(a folder written by `charlstm export`) or set {DEFAULT_MODEL_ENV}", "model_dir")


# -- reading and checking ----------------------------------------------------------------------------------------
def _show(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fail(path: Path, message: str) -> ModelError:
    return ModelError(f"{path}: {message}: re-run `charlstm export`", "model_dir")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ModelError(f"{path} {what}: a model folder holds model.onnx and model.json written by "
                         "`charlstm export`", "model_dir")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise _fail(path, f"{path.stat().st_size:,} bytes is far too large for a manifest")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read {path} ({e.__class__.__name__}: {e}): check the file, or re-run "
                         "`charlstm export`", "model_dir") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise _fail(path, f"holds a JSON {type(data).__name__}, not an object")
    return data


def _int(value, where: str, path: Path, low: int = 1, high: int | None = None) -> int:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"an integer from {low} to {high:,}" if high is not None else f"an integer >= {low}"
        raise _fail(path, f"{where} is {_show(value, 40)}, expected {bound}")
    return value


def _section(data: dict, key: str, path: Path, required: bool = False) -> dict | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise _fail(path, f"the {key!r} section is {_show(value, 40)}, expected an object")
    return value


def _vocab(value, path: Path) -> tuple[str, ...]:
    ok = isinstance(value, list) and value and all(isinstance(ch, str) and len(ch) == 1 for ch in value)
    if not ok:
        raise _fail(path, f"vocab must be a non-empty list of single characters, got {_show(value, 60)}")
    if len(value) > MAX_VOCAB:
        raise _fail(path, f"vocab has {len(value):,} characters, more than {MAX_VOCAB:,}")
    if len(set(value)) != len(value):
        raise _fail(path, f"vocab repeats {sorted({ch for ch in value if value.count(ch) > 1})!r}")
    return tuple(value)


def _names(section, defaults: dict, where: str, path: Path) -> dict:
    if section is None:
        return dict(defaults)
    if not isinstance(section, dict) or not all(isinstance(section.get(k), str) for k in defaults):
        raise _fail(path, f"{where} must map {sorted(defaults)} to graph names, got {_show(section, 80)}")
    return {k: section[k] for k in defaults}


def _plain_name(value, where: str, path: Path) -> str:
    """A file name inside the folder: one plain path component (no folders, no '..')."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise _fail(path, f"{where} is {_show(value, 40)}, expected a file name in this folder")
    return value


def _sampling(section, path: Path) -> SamplingDefaults:
    if section is None:
        return SamplingDefaults()
    t = section.get("temperature", SamplingDefaults.temperature)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and 0 <= t <= 100):
        raise _fail(path, f"sampling.temperature is {_show(t, 40)}, expected a number from 0 to 100")
    length = _int(section.get("length", SamplingDefaults.length), "sampling.length", path, 0, 10_000_000)
    return SamplingDefaults(float(t), length)


def _files(section, path: Path) -> dict:
    if section is None:
        return {}
    for name, entry in section.items():
        _plain_name(name, "a files entry", path)
        if not isinstance(entry, dict):
            raise _fail(path, f"files.{name} is {_show(entry, 40)}, expected an object with sha256 and bytes")
    return dict(section)


def _burst(section, path: Path) -> Burst | None:
    if section is None:
        return None
    return Burst(file=_plain_name(section.get("file"), "burst.file", path),
                 steps=_int(section.get("steps"), "burst.steps", path, 1, MAX_BURST_STEPS),
                 inputs=_names(section.get("inputs"), BURST_INPUTS, "burst.inputs", path),
                 outputs=_names(section.get("outputs"), BURST_OUTPUTS, "burst.outputs", path))


def load_manifest(model_dir) -> Manifest:
    """Read and check DIR/model.json. Raises ModelError (a UserError) with one line naming the problem."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        what = "is not a folder" if model_dir.exists() else "does not exist"
        raise ModelError(f"model_dir {model_dir} {what}: pass a folder written by `charlstm export`", "model_dir")
    path = model_dir / MANIFEST
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise ModelError(f"{path}: format is {_show(data.get('format'), 40)}, expected {FORMAT!r}: this is not a "
                         "charlstm model folder", "model_dir")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {_show(data.get('format_version'), 20)} is not supported (this "
                         f"charlstm reads version {FORMAT_VERSION}): upgrade charlstm or re-export the model",
                         "model_dir")
    vocab = _vocab(data.get("vocab"), path)
    shape = _section(data, "model", path, required=True)
    if shape.get("vocab_size", len(vocab)) != len(vocab):
        raise _fail(path, f"model.vocab_size is {_show(shape.get('vocab_size'), 20)} but vocab has {len(vocab)} "
                          "characters")
    optional = lambda key, high: None if shape.get(key) is None else _int(shape[key], f"model.{key}", path, 1, high)  # noqa: E731
    split = _section(data, "split", path) or {}
    val_fraction = split.get("val_fraction")
    if val_fraction is not None and (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
                                     or not 0 < val_fraction < 1):
        raise _fail(path, f"split.val_fraction is {_show(val_fraction, 20)}, expected a number in (0, 1)")
    name = data.get("name")
    return Manifest(
        name=name if isinstance(name, str) and name else model_dir.name,
        vocab=vocab,
        layers=_int(shape.get("layers"), "model.layers", path, 1, MAX_LAYERS),
        units=_int(shape.get("units"), "model.units", path, 1, MAX_UNITS),
        embedding_dim=optional("embedding_dim", MAX_UNITS),
        parameters=optional("parameters", None),
        inputs=_names(data.get("inputs"), GRAPH_INPUTS, "inputs", path),
        outputs=_names(data.get("outputs"), GRAPH_OUTPUTS, "outputs", path),
        sampling=_sampling(_section(data, "sampling", path), path),
        files=_files(_section(data, "files", path), path),
        val_fraction=None if val_fraction is None else float(val_fraction),
        burst=_burst(_section(data, "burst", path), path),
        evaluation=_section(data, "evaluation", path),
        provenance=_section(data, "provenance", path) or {},
        export=_section(data, "export", path) or {},
        dir=model_dir,
    )
