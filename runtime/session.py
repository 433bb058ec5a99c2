"""ONNX Runtime sessions for a model folder's graphs: the options, and the device policy (CUDA, else the CPU).

`SessionConfig` is the one place a caller says how to run: which device, float32 or int8, threads, worker
spinning (runtime/spinning.py decides when not told), CUDA graphs, the burst graph. `resolve_device` decides the
device (a one-node probe tells whether CUDA starts) and says what it fell back to and why; `open_session` loads
a graph there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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
    int8: bool | None = None  # model.int8.onnx, 8-bit MatMulNBits weights, a CPU-only speed-up; None: on the CPU
    # when the folder has it (2-3x faster a character at batch 1, validation loss within 0.001: docs/performance.md)
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
        if self.int8 is not None and not isinstance(self.int8, bool):
            raise InputError(f"int8 {self.int8!r} is not True, False or None (None: on the CPU when the model "
                             "folder has model.int8.onnx)", "int8")
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


# A one-node ONNX model (Identity on float32 [1]): starting CUDA on it tells whether CUDA works before a real graph
# is loaded, so the right file (float32 for CUDA, int8 for the CPU) is loaded once.
PROBE = (b'\x08\x08:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08'
         b'\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r')


@functools.lru_cache(maxsize=None)
def cuda_starts(log_severity: int = 4) -> tuple[bool, str]:
    """(whether ONNX Runtime's CUDA provider starts in this process, why not). Asked once per process."""
    if CUDA not in ort.get_available_providers():
        return False, f"this onnxruntime ({ort.__version__}) has no CUDA support"
    said = _preload_cuda()
    ort.set_default_logger_severity(log_severity)  # a failed CUDA start logs on the default logger
    so = ort.SessionOptions()
    so.log_severity_level = log_severity
    try:
        started = ort.InferenceSession(PROBE, so, providers=[CUDA, CPU]).get_providers()[0] == CUDA
    except Exception as e:  # noqa: BLE001 - any failure to start CUDA means the CPU
        return False, str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return started, "" if started else (said.splitlines()[0] if said else "no GPU or CUDA libraries")


def resolve_device(config: SessionConfig) -> tuple[str, str]:
    """("cuda" | "cpu", note for --verbose). auto falls back to the CPU, saying why; cuda fails in one line
    rather than silently running on the CPU."""
    if config.device == "cpu" or (config.device == "auto" and config.int8):
        return "cpu", ""
    started, why = cuda_starts(config.log_severity)
    if started:
        return "cuda", ""
    if config.device == "cuda":
        raise DeviceError(f"device cuda: ONNX Runtime could not start {CUDA} ({why}): {CUDA_FIX}", "device")
    return "cpu", f"CUDA did not start ({why}); using the CPU"


def open_session(path: Path, config: SessionConfig, device: str) -> ort.InferenceSession:
    """Load the ONNX file on `device` (resolve_device's answer); a CUDA session that ends on the CPU anyway is
    an error, not a slow surprise."""
    session = load_session(path, config, device)
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise DeviceError(f"device cuda: ONNX Runtime started CUDA but not for {path.name}: {CUDA_FIX}", "device")
    return session


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
