"""Reading a model folder's manifest (model.json), the only thing the runtime needs besides model.onnx.

A model folder describes itself (written by `charlstm export`): the vocabulary in id order, the model shape,
the ONNX input/output names, the sampling defaults and the sha256 of each ONNX file. Loading checks all of it
up front, so a bad folder fails with one line naming the problem rather than deep inside ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ModelError

FORMAT = "charlstm-model"
FORMAT_VERSION = 1
MANIFEST = "model.json"
DEFAULT_MODEL_ENV = "CHARLSTM_MODEL"
GRAPH_INPUTS = {"token": "token", "h": "h", "c": "c"}  # the graph contract's names, when the manifest omits them
GRAPH_OUTPUTS = {"logits": "logits", "h": "h_out", "c": "c_out"}
BURST_INPUTS = {**GRAPH_INPUTS, "noise": "noise"}  # the burst graph's (export/burst.py), when listed
BURST_OUTPUTS = {"tokens": "tokens", "h": "h_out", "c": "c_out"}


@dataclass(frozen=True)
class Burst:
    """The optional burst graph: `steps` characters per run, sampled in the graph (export/burst.py)."""

    file: str
    steps: int
    inputs: dict
    outputs: dict


@dataclass(frozen=True)
class Manifest:
    """What model.json says, checked. Field defaults apply only when the manifest leaves a section out."""

    dir: Path
    name: str
    vocab: tuple[str, ...]  # characters in id order: id = index
    layers: int
    units: int
    inputs: dict = field(default_factory=lambda: dict(GRAPH_INPUTS))  # role -> ONNX input name
    outputs: dict = field(default_factory=lambda: dict(GRAPH_OUTPUTS))  # role -> ONNX output name
    temperature: float = 0.5  # the notebook's default: confident but not looping
    length: int = 500  # characters to generate when the command line does not say
    files: dict = field(default_factory=dict)  # file name -> {"sha256", "bytes"}
    val_fraction: float | None = None  # the last fraction of the corpus held out in training, if recorded
    burst: Burst | None = None  # folders exported before the burst graph existed have none
    raw: dict = field(default_factory=dict, repr=False)  # the whole JSON, for free-form sections

    @property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.vocab)}

    def onnx_path(self, int8: bool = False) -> Path:
        """The ONNX file to load, checked for presence; --int8 needs the quantized file."""
        name = "model.int8.onnx" if int8 else "model.onnx"
        path = self.dir / name
        if not path.is_file():
            if int8:
                raise ModelError(f"--int8: {path} does not exist: this model was exported without an int8 "
                                 "file; drop --int8, or re-export with quantization")
            raise ModelError(f"{path} does not exist: the model folder is incomplete; re-run `charlstm export`")
        return path

    def verify(self, path: Path) -> str:
        """Check the file against the sha256 the manifest recorded; returns the digest."""
        entry = self.files.get(path.name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ModelError(f"{self.dir / MANIFEST} records no sha256 for {path.name} (files.{path.name}.sha256): "
                             "re-run `charlstm export`")
        digest = sha256_file(path)
        if digest != entry["sha256"].lower():
            raise ModelError(f"{path} has sha256 {digest[:12]}…, but {MANIFEST} records "
                             f"{entry['sha256'][:12]}…: the file was changed or truncated; re-run `charlstm export`")
        return digest


    def burst_path(self) -> Path:
        """The burst graph's file, checked for presence (only called when the manifest lists one)."""
        path = self.dir / self.burst.file
        if not path.is_file():
            raise ModelError(f"{path} does not exist but {MANIFEST} lists it (burst.file): the model folder is "
                             "incomplete; re-run `charlstm export`")
        return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_dir() -> Path:
    """$CHARLSTM_MODEL, else the repository's models/shakespeare, else ./models/shakespeare."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env)
    for candidate in (Path(__file__).resolve().parents[1] / "models" / "shakespeare",
                      Path.cwd() / "models" / "shakespeare"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ModelError("no default model found: pass --model DIR (a folder written by `charlstm export`) "
                     f"or set {DEFAULT_MODEL_ENV}")


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist: a model folder holds model.onnx and model.json "
                         "written by `charlstm export`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read {path} ({e.__class__.__name__}: {e}): check the file, "
                         "or re-run `charlstm export`") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): re-run `charlstm export`") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a JSON {type(data).__name__}, not an object: re-run `charlstm export`")
    return data


def _positive_int(value, where: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{path}: {where} is {value!r}, expected a positive integer: re-run `charlstm export`")
    return value


def _vocab(value, path: Path) -> tuple[str, ...]:
    ok = isinstance(value, list) and value and all(isinstance(ch, str) and len(ch) == 1 for ch in value)
    if not ok:
        raise ModelError(f"{path}: vocab must be a non-empty list of single characters, got "
                         f"{str(value)[:60]!r}: re-run `charlstm export`")
    if len(set(value)) != len(value):
        dupes = sorted({ch for ch in value if value.count(ch) > 1})
        raise ModelError(f"{path}: vocab repeats {dupes!r}: re-run `charlstm export`")
    return tuple(value)


def _names(section, defaults: dict, where: str, path: Path) -> dict:
    if section is None:
        return dict(defaults)
    if not isinstance(section, dict) or not all(isinstance(section.get(k), str) for k in defaults):
        raise ModelError(f"{path}: {where} must map {sorted(defaults)} to graph names, got {section!r}: "
                         "re-run `charlstm export`")
    return {k: section[k] for k in defaults}


def _burst(section, path: Path) -> Burst | None:
    if section is None:
        return None
    ok = isinstance(section, dict) and isinstance(section.get("file"), str) and "/" not in section["file"]
    if not ok:
        raise ModelError(f"{path}: burst must name its file in this folder (burst.file), got {section!r}: "
                         "re-run `charlstm export`")
    return Burst(file=section["file"], steps=_positive_int(section.get("steps"), "burst.steps", path),
                 inputs=_names(section.get("inputs"), BURST_INPUTS, "burst.inputs", path),
                 outputs=_names(section.get("outputs"), BURST_OUTPUTS, "burst.outputs", path))


def load_manifest(model_dir) -> Manifest:
    """Read and check DIR/model.json. Raises ModelError (a UserError) with one line naming the problem."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        what = "is a file, not a folder" if model_dir.exists() else "does not exist"
        raise ModelError(f"model folder {model_dir} {what}: pass --model DIR, a folder written by `charlstm export`")
    path = model_dir / MANIFEST
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise ModelError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}: "
                         "this is not a charlstm model folder")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {data.get('format_version')!r} is not supported (this charlstm "
                         f"reads version {FORMAT_VERSION}): upgrade charlstm or re-export the model")
    vocab = _vocab(data.get("vocab"), path)
    shape = data.get("model")
    if not isinstance(shape, dict):
        raise ModelError(f"{path}: the 'model' section is missing: re-run `charlstm export`")
    vocab_size = shape.get("vocab_size", len(vocab))
    if vocab_size != len(vocab):
        raise ModelError(f"{path}: model.vocab_size is {vocab_size!r} but vocab has {len(vocab)} characters: "
                         "re-run `charlstm export`")
    sampling = data.get("sampling") or {}
    temperature = sampling.get("temperature", Manifest.temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature >= 0):
        raise ModelError(f"{path}: sampling.temperature is {temperature!r}, expected a number >= 0")
    length = sampling.get("length", Manifest.length)
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ModelError(f"{path}: sampling.length is {length!r}, expected an integer >= 0")
    split = data.get("split") or {}
    val_fraction = split.get("val_fraction") if isinstance(split, dict) else None
    return Manifest(
        dir=model_dir,
        name=str(data.get("name") or model_dir.name),
        vocab=vocab,
        layers=_positive_int(shape.get("layers"), "model.layers", path),
        units=_positive_int(shape.get("units"), "model.units", path),
        inputs=_names(data.get("inputs"), GRAPH_INPUTS, "inputs", path),
        outputs=_names(data.get("outputs"), GRAPH_OUTPUTS, "outputs", path),
        temperature=float(temperature),
        length=length,
        files=data.get("files") if isinstance(data.get("files"), dict) else {},
        val_fraction=float(val_fraction) if isinstance(val_fraction, (int, float)) else None,
        burst=_burst(data.get("burst"), path),
        raw=data,
    )
