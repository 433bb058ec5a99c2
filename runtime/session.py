"""ONNX Runtime sessions for the stepwise model, and the steppers that carry the LSTM state between steps.

A step feeds one character id per batch row and returns logits [batch, vocab]; the state (h, c) stays inside
the stepper, in buffers bound once with IOBinding: two state buffer sets used alternately (ping-pong: step k
reads set k and writes set 1-k, because binding an output onto its own input corrupts results under CUDA
graphs); only logits come back. On CUDA that keeps h and c on the device; on the CPU it spares ONNX Runtime
allocating and numpy wrapping three outputs a step, which measured 284 against 362 µs a notebook-size step
(`python -m benchmarks.step_variants`, runtime BoundStepper against Stepper).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.errors import DeviceError, InputError, ModelError
from runtime.manifest import Manifest

DEVICES = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_FIX = ("run with --device cpu, or install the CUDA and cuDNN libraries this onnxruntime was built for "
            "(pip install 'onnxruntime-gpu[cuda,cudnn]') on a machine with an NVIDIA GPU")


@dataclass(frozen=True)
class SessionConfig:
    """How the ONNX session is built. The defaults come from measurements on a 2-core machine."""

    device: str = "auto"  # auto takes CUDA when it starts, else the CPU
    int8: bool = False  # model.int8.onnx: 8-bit MatMulNBits, a CPU-only speed-up
    threads: int = 0  # intra-op threads; 0 = one per core: 1.3-2.2x faster than 1 on an idle 2-core machine
    spinning: bool = False  # idle workers spinning between steps cost 2-3x when other work shares the cores
    log_severity: int = 4  # 4 = fatal only: a failed CUDA start must not spill ORT log lines onto stderr

    def __post_init__(self):
        if self.device not in DEVICES:
            raise InputError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}: use auto (CUDA if it "
                             "works, else the CPU), cuda or cpu")
        if self.int8 and self.device == "cuda":
            raise InputError("--int8 runs on the CPU only (8-bit MatMulNBits): drop --device cuda or drop --int8")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise InputError(f"threads {self.threads!r} is not an integer >= 0 (0 lets ONNX Runtime choose)")


def _options(config: SessionConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fuses the per-gate elementwise ops
    so.intra_op_num_threads = config.threads
    so.inter_op_num_threads = 1  # the step graph is one chain: nothing runs in parallel across ops
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = config.log_severity
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
    return so


def _preload_cuda() -> str:
    """Let ORT find pip-installed CUDA/cuDNN; returns what preload_dlls printed (it prints to stdout)."""
    if not hasattr(ort, "preload_dlls"):
        return ""
    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # stdout is for generated text only
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - a failed preload only means CUDA will not start below
            print(f"preload_dlls failed: {e}")
    return said.getvalue().strip()


def open_session(path: Path, config: SessionConfig) -> tuple[ort.InferenceSession, str, str]:
    """Load the ONNX file on the configured device; returns (session, "cuda" | "cpu", note for --verbose)."""
    note = ""
    want_cuda = config.device == "cuda" or (config.device == "auto" and not config.int8)
    if want_cuda and CUDA not in ort.get_available_providers():
        if config.device == "cuda":
            raise DeviceError(f"--device cuda: this onnxruntime ({ort.__version__}) has no CUDA support: "
                              "pip install onnxruntime-gpu, or run with --device cpu")
        want_cuda, note = False, "this onnxruntime has no CUDA support"
    if want_cuda:
        said = _preload_cuda()
        note = said.splitlines()[0] if said else ""
        ort.set_default_logger_severity(config.log_severity)  # a failed CUDA start logs on the default logger
    providers = [CUDA, CPU] if want_cuda else [CPU]
    try:
        session = ort.InferenceSession(str(path), _options(config), providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ModelError(f"ONNX Runtime cannot load {path} ({first[:200]}): the file is damaged or not a "
                         "charlstm step model; re-run `charlstm export`") from None
    if want_cuda and session.get_providers()[0] != CUDA:
        if config.device == "cuda":
            detail = f" ({note})" if note else ""
            raise DeviceError(f"--device cuda: ONNX Runtime could not start {CUDA} and fell back to the "
                              f"CPU{detail}: {CUDA_FIX}")
        note = f"CUDA did not start ({note or 'no GPU or CUDA libraries'}); using the CPU"
    device = "cuda" if session.get_providers()[0] == CUDA else "cpu"
    return session, device, note


class Stepper:
    """Runs one step at a time with numpy arrays; the state lives in host memory (used to probe a model)."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest):
        self.session, self.m = session, manifest
        self.feeds = (manifest.inputs["token"], manifest.inputs["h"], manifest.inputs["c"])
        self.fetches = [manifest.outputs["logits"], manifest.outputs["h"], manifest.outputs["c"]]
        self.batch = 0

    def reset(self, batch: int) -> None:
        """Zero state for `batch` rows: the state the model was trained to start from."""
        self.batch = batch
        self.h = np.zeros((self.m.layers, batch, self.m.units), np.float32)
        self.c = np.zeros_like(self.h)

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed one id per row; returns logits [batch, vocab] and keeps the new state."""
        token, h, c = self.feeds
        logits, self.h, self.c = self.session.run(self.fetches, {token: ids.astype(np.int64, copy=False),
                                                                 h: self.h, c: self.c})
        return logits


class BoundStepper(Stepper):
    """The generate path: IOBinding with ping-pong state buffers, so h and c never leave the device.

    Works on any ORT device: "cuda", or "cpu" (host buffers, still bound once).
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cuda"):
        super().__init__(session, manifest)
        self.device = device

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        """A buffer of its own on the device, filled with `array`. (ortvalue_from_numpy on the CPU would wrap
        the numpy memory instead of copying it: buffers made from one array would alias.)"""
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype, self.device, 0)
        value.update_inplace(array)
        return value

    def reset(self, batch: int) -> None:
        self.batch = batch
        zeros = np.zeros((self.m.layers, batch, self.m.units), np.float32)
        self.states = [(self._value(zeros), self._value(zeros)) for _ in range(2)]
        self.token = self._value(np.zeros(batch, np.int64))
        # logits land in host memory: the only copy back per step
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type([batch, len(self.m.vocab)], np.float32, "cpu", 0)
        self.bindings = [self._bind(k) for k in (0, 1)]
        self.k = 0  # which state set is read on the next step

    def _bind(self, k: int) -> ort.IOBinding:
        token, h, c = self.feeds
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(token, self.token)
        binding.bind_ortvalue_input(h, self.states[k][0])
        binding.bind_ortvalue_input(c, self.states[k][1])
        binding.bind_ortvalue_output(self.fetches[0], self.logits)
        binding.bind_ortvalue_output(self.fetches[1], self.states[1 - k][0])
        binding.bind_ortvalue_output(self.fetches[2], self.states[1 - k][1])
        return binding

    def step(self, ids: np.ndarray) -> np.ndarray:
        self.token.update_inplace(np.ascontiguousarray(ids, dtype=np.int64))
        self.session.run_with_iobinding(self.bindings[self.k])
        self.k = 1 - self.k
        return np.array(self.logits.numpy(), copy=True)  # the buffer is rewritten by the next step


def make_stepper(session: ort.InferenceSession, manifest: Manifest, device: str) -> Stepper:
    return BoundStepper(session, manifest, "cuda" if device == "cuda" else "cpu")


def check_contract(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    """The graph has the manifest's input/output names, and one probe step gives logits [1, len(vocab)]."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in manifest.inputs.values() if n not in have_in]
    missing += [n for n in manifest.outputs.values() if n not in have_out]
    if missing:
        raise ModelError(f"{path} lacks the graph names {missing} that model.json lists (inputs "
                         f"{sorted(have_in)}, outputs {sorted(have_out)}): re-run `charlstm export`")
    probe = Stepper(session, manifest)
    probe.reset(1)
    try:
        logits = probe.step(np.zeros(1, np.int64))
    except Exception as e:  # noqa: BLE001 - a shape mismatch surfaces as an ORT runtime error
        first = str(e).strip().splitlines()[0][:200]
        raise ModelError(f"{path} does not run with the state shape [layers={manifest.layers}, batch, "
                         f"units={manifest.units}] from model.json ({first}): re-run `charlstm export`") from None
    if logits.shape != (1, len(manifest.vocab)) or probe.h.shape != (manifest.layers, 1, manifest.units):
        raise ModelError(f"{path} gives logits of width {logits.shape[-1]} and state {list(probe.h.shape)}, but "
                         f"model.json has {len(manifest.vocab)} vocab characters and [{manifest.layers}, 1, "
                         f"{manifest.units}]: the files come from different models; re-run `charlstm export`")
