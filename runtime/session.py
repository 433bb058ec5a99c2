"""ONNX Runtime sessions for a model folder's graphs: the options, and the device policy (CUDA, else the CPU).

`SessionConfig` is the one place a caller says how to run: which device, float32 or int8, threads, worker
spinning (runtime/spinning.py decides when not told), CUDA graphs, the burst graph. `open_session` loads a graph
on the configured device and says what it fell back to and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from charlstm.runtime import spinning as spinning_policy
from charlstm.runtime.errors import DeviceError, InputError, ModelError

DEVICES = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_FIX = ("use `device=cpu`, or install the CUDA and cuDNN libraries this onnxruntime was built for "
            "(pip install 'onnxruntime-gpu[cuda,cudnn]') on a machine with an NVIDIA GPU")
MAX_THREADS = 1024


@dataclass(frozen=True)
class SessionConfig:
    """How the ONNX sessions are built."""

    device: str = "auto"  # auto takes CUDA when it starts, else the CPU
    int8: bool = False  # model.int8.onnx: 8-bit MatMulNBits weights, a CPU-only speed-up
    threads: int = 0  # intra-op threads; 0 = one per usable core (a step's products split across cores)
    spinning: bool | None = None  # CPU workers busy-wait between steps; None = decided as the model loads
    cuda_graph: bool = True  # CUDA only: replay each run as a captured CUDA graph (runtime/stepper.py)
    burst: bool | None = None  # the burst graph for plain sampling; None = on CUDA only (its load costs more
    # than it saves on the CPU's default 500 characters)
    log_severity: int = 4  # 4 = fatal only: a failed CUDA start must not spill ORT log lines onto stderr

    def __post_init__(self):
        if self.device not in DEVICES:
            raise InputError(f"device {self.device!r} is not one of {', '.join(DEVICES)}: use auto (CUDA if it "
                             "works, else the CPU), cuda or cpu", "device")
        if not isinstance(self.int8, bool):
            raise InputError(f"int8 {self.int8!r} is not True or False", "int8")
        if self.int8 and self.device == "cuda":
            raise InputError("int8 runs on the CPU only (8-bit MatMulNBits): use `device=cpu` or `device=auto`, "
                             "or float32", "int8")
        t = self.threads
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_THREADS:
            raise InputError(f"threads {t!r} is not an integer from 0 to {MAX_THREADS} (0: one per core)", "threads")
        for name in ("spinning", "burst"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} {getattr(self, name)!r} is not True, False or None (None: decided "
                                 "as the model loads)", name)

    def resolved(self) -> tuple[SessionConfig, str]:
        """This config with spinning decided (runtime/spinning.py), and why, for --verbose."""
        spin, why = spinning_policy.resolve(self.spinning, self.threads)
        return dataclasses.replace(self, spinning=spin), why


def _options(config: SessionConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fuses the per-gate elementwise ops
    so.intra_op_num_threads = config.threads
    so.inter_op_num_threads = 1  # the step graph is one chain: nothing runs in parallel across ops
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = config.log_severity
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if config.spinning is False else "1")
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
    """Load the ONNX file on the configured device; returns (session, "cuda" | "cpu", note for --verbose).

    auto falls back to the CPU, saying why; cuda fails with one line rather than silently running on the CPU."""
    note = ""
    want_cuda = config.device == "cuda" or (config.device == "auto" and not config.int8)
    if want_cuda and CUDA not in ort.get_available_providers():
        if config.device == "cuda":
            raise DeviceError(f"device cuda: this onnxruntime ({ort.__version__}) has no CUDA support: "
                              "pip install onnxruntime-gpu, or use `device=cpu`", "device")
        want_cuda, note = False, "this onnxruntime has no CUDA support"
    if want_cuda:
        said = _preload_cuda()
        note = said.splitlines()[0] if said else ""
        ort.set_default_logger_severity(config.log_severity)  # a failed CUDA start logs on the default logger
    session = load_session(path, config, "cuda" if want_cuda else "cpu")
    if want_cuda and session.get_providers()[0] != CUDA:
        if config.device == "cuda":
            detail = f" ({note})" if note else ""
            raise DeviceError(f"device cuda: ONNX Runtime could not start {CUDA} and fell back to the "
                              f"CPU{detail}: {CUDA_FIX}", "device")
        note = f"CUDA did not start ({note or 'no GPU or CUDA libraries'}); using the CPU"
    device = "cuda" if session.get_providers()[0] == CUDA else "cpu"
    return session, device, note


def load_session(path: Path, config: SessionConfig, device: str) -> ort.InferenceSession:
    """An InferenceSession on CUDA (with the CPU as ONNX Runtime's fallback) or on the CPU alone."""
    cuda = (CUDA, {"enable_cuda_graph": "1"}) if config.cuda_graph else CUDA
    providers = [cuda, CPU] if device == "cuda" else [CPU]
    try:
        return ort.InferenceSession(str(path), _options(config), providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ModelError(f"ONNX Runtime cannot load {path} ({first[:200]}): the file is damaged or not a "
                         "charlstm model graph; re-run `charlstm export`", "model_dir") from None


def no_graph() -> ort.RunOptions:
    """Run options for a plain run on a session that captures CUDA graphs: this run is neither captured nor
    replayed (a probe with host arrays must not become a graph)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "-1")
    return options
