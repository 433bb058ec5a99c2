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
import os
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
    spinning: bool | None = None  # workers busy-wait between steps; None = when the machine is idle (auto_spinning)
    cuda_graph: bool = True  # CUDA only: replay each step as a captured CUDA graph (see BoundStepper)
    log_severity: int = 4  # 4 = fatal only: a failed CUDA start must not spill ORT log lines onto stderr

    def __post_init__(self):
        if self.device not in DEVICES:
            raise InputError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}: use auto (CUDA if it "
                             "works, else the CPU), cuda or cpu")
        if self.int8 and self.device == "cuda":
            raise InputError("--int8 runs on the CPU only (8-bit MatMulNBits): drop --device cuda or drop --int8")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise InputError(f"threads {self.threads!r} is not an integer >= 0 (0 lets ONNX Runtime choose)")
        if self.spinning is not None and not isinstance(self.spinning, bool):
            raise InputError(f"spinning {self.spinning!r} is not True, False or None (None: on when the machine "
                             "is idle)")


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_spinning(threads: int, cores: int, load: float | None) -> tuple[bool, str]:
    """Whether ONNX Runtime's workers should busy-wait between parallel sections, and why (for --verbose).

    A sleeping worker has to be woken for every step, and on an idle (virtual) machine that costs more than the
    step's arithmetic: spinning made the notebook-size CPU step 1.1-1.9x faster there (five `charlstm bench` runs).
    Beside a process that keeps a core busy, spinning workers fight it for the core, and the step took twice as
    long as with sleeping ones (`python -m benchmarks.spinning --busy 1`). So: spin when the 1-minute load average
    leaves at least half the usable cores idle, otherwise sleep. One thread has no workers to wake, and more
    threads than cores must not spin."""
    threads = threads or cores
    if threads <= 1:
        return False, "one thread"
    if threads > cores:  # a spinning worker would hold a core another thread of ours is waiting for
        return False, f"{threads} threads on {cores} usable cores"
    if load is None:
        return False, "no load average on this system"
    if load < cores / 2:
        return True, f"load average {load:.2f}, under half of the {cores} cores"
    return False, f"load average {load:.2f}, not under half of the {cores} cores: other work shares them"


def resolve_spinning(config: SessionConfig) -> tuple[bool, str]:
    """The spinning setting this session gets: the config's, or auto_spinning's choice."""
    if config.spinning is not None:
        return config.spinning, "as asked"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        load = None
    return auto_spinning(config.threads, usable_cores(), load)


def _options(config: SessionConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fuses the per-gate elementwise ops
    so.intra_op_num_threads = config.threads
    so.inter_op_num_threads = 1  # the step graph is one chain: nothing runs in parallel across ops
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = config.log_severity
    spinning = config.spinning if config.spinning is not None else resolve_spinning(config)[0]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
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
    session = load_session(path, config, "cuda" if want_cuda else "cpu")
    if want_cuda and session.get_providers()[0] != CUDA:
        if config.device == "cuda":
            detail = f" ({note})" if note else ""
            raise DeviceError(f"--device cuda: ONNX Runtime could not start {CUDA} and fell back to the "
                              f"CPU{detail}: {CUDA_FIX}")
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
                         "charlstm model graph; re-run `charlstm export`") from None


def no_graph() -> ort.RunOptions:
    """Run options for a plain run on a session that captures CUDA graphs: this run is neither captured nor
    replayed (a probe with host arrays must not become a graph)."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "-1")
    return options


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
                                                                 h: self.h, c: self.c}, no_graph())
        return logits


@dataclass
class _Slot:
    """One batch size's device buffers and bindings. Kept for the stepper's life: a captured CUDA graph
    replays on these very addresses."""

    index: int
    states: list  # two (h, c) sets: step k reads set k, writes set 1 - k
    token: ort.OrtValue
    logits: ort.OrtValue
    bindings: list
    options: list  # RunOptions per state set: which captured CUDA graph to replay
    noise: ort.OrtValue | None = None  # the burst graph's inputs and outputs
    tokens: ort.OrtValue | None = None
    burst_bindings: list | None = None
    burst_options: list | None = None


class BoundStepper(Stepper):
    """The generate path: IOBinding with ping-pong state buffers, so h and c never leave the device.

    Works on any ORT device: "cuda", or "cpu" (host buffers, still bound once). With `graphs` (CUDA only),
    each state set gets its own captured CUDA graph, chosen by the run option gpu_graph_id: a step is then one
    graph replay plus the token upload and the logits download. With a burst session (export/burst.py) it also
    runs `burst`: K steps per run, sampled in the graph, on the same state buffers.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cuda",
                 burst: ort.InferenceSession | None = None, graphs: bool = False):
        super().__init__(session, manifest)
        self.device, self.burst_session, self.graphs = device, burst, graphs and device == "cuda"
        self.slots: dict[int, _Slot] = {}

    def _value(self, array: np.ndarray, device: str | None = None) -> ort.OrtValue:
        """A buffer of its own on the device, filled with `array`. (ortvalue_from_numpy on the CPU would wrap
        the numpy memory instead of copying it: buffers made from one array would alias.)"""
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype, device or self.device, 0)
        value.update_inplace(array)
        return value

    def reset(self, batch: int) -> None:
        self.batch = batch
        slot = self.slots.get(batch)
        if slot is None:
            slot = self.slots[batch] = self._slot(batch, len(self.slots))
        else:
            zeros = np.zeros((self.m.layers, batch, self.m.units), np.float32)
            for value in (v for pair in slot.states for v in pair):
                value.update_inplace(zeros)
        self.slot, self.k = slot, 0  # k: which state set is read on the next step

    def _slot(self, batch: int, index: int) -> _Slot:
        zeros = np.zeros((self.m.layers, batch, self.m.units), np.float32)
        # outputs the host reads land in host memory, unless a CUDA graph needs every address on the device
        out = self.device if self.graphs else "cpu"
        slot = _Slot(index=index, states=[(self._value(zeros), self._value(zeros)) for _ in range(2)],
                     token=self._value(np.zeros(batch, np.int64)),
                     logits=self._value(np.zeros((batch, len(self.m.vocab)), np.float32), out),
                     bindings=[], options=[])
        token, h, c = self.feeds
        slot.bindings, slot.options = self._pingpong(
            self.session, index, {token: slot.token}, (h, c), {self.fetches[0]: slot.logits}, self.fetches[1:], slot)
        if self.burst_session is not None:
            spec = self.m.burst
            slot.noise = self._value(np.zeros((spec.steps, batch, len(self.m.vocab)), np.float32))
            slot.tokens = self._value(np.zeros((spec.steps, batch), np.int64), out)
            slot.burst_bindings, slot.burst_options = self._pingpong(
                self.burst_session, index, {spec.inputs["token"]: slot.token, spec.inputs["noise"]: slot.noise},
                (spec.inputs["h"], spec.inputs["c"]), {spec.outputs["tokens"]: slot.tokens},
                (spec.outputs["h"], spec.outputs["c"]), slot)
        return slot

    def _pingpong(self, session, index: int, inputs: dict, state_in: tuple, outputs: dict, state_out,
                  slot: _Slot) -> tuple[list, list]:
        """Two bindings of `session`: binding k reads state set k and writes set 1 - k; the other inputs and
        outputs are bound to the same buffers in both. Returns the bindings and their run options."""
        bindings, options = [], []
        for k in (0, 1):
            b = session.io_binding()
            for name, value in inputs.items():
                b.bind_ortvalue_input(name, value)
            for name, value in zip(state_in, slot.states[k]):
                b.bind_ortvalue_input(name, value)
            for name, value in outputs.items():
                b.bind_ortvalue_output(name, value)
            for name, value in zip(state_out, slot.states[1 - k]):
                b.bind_ortvalue_output(name, value)
            bindings.append(b)
            options.append(self._graph_option(2 * index + k))
        return bindings, options

    def _graph_option(self, graph_id: int) -> ort.RunOptions | None:
        if not self.graphs:
            return None
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def step(self, ids: np.ndarray) -> np.ndarray:
        slot = self.slot
        slot.token.update_inplace(np.ascontiguousarray(ids, dtype=np.int64))
        self.session.run_with_iobinding(slot.bindings[self.k], slot.options[self.k])
        self.k = 1 - self.k
        return np.array(slot.logits.numpy(), copy=True)  # the buffer is rewritten by the next step

    def burst(self, ids: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Feed the last ids [batch]; run the burst graph's K steps with noise [K, batch, vocab] (see
        sampling.gumbel_noise); returns the K picked ids per row, [K, batch]. The state advances K steps."""
        slot = self.slot
        slot.token.update_inplace(np.ascontiguousarray(ids, dtype=np.int64))
        slot.noise.update_inplace(np.ascontiguousarray(noise, dtype=np.float32))
        self.burst_session.run_with_iobinding(slot.burst_bindings[self.k], slot.burst_options[self.k])
        self.k = 1 - self.k
        return np.array(slot.tokens.numpy(), copy=True)


def make_stepper(session: ort.InferenceSession, manifest: Manifest, device: str,
                 burst: ort.InferenceSession | None = None, graphs: bool = False) -> BoundStepper:
    return BoundStepper(session, manifest, "cuda" if device == "cuda" else "cpu", burst, graphs)


def _check_names(session: ort.InferenceSession, inputs: dict, outputs: dict, path: Path) -> None:
    """The graph has the input and output names model.json lists for it."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in inputs.values() if n not in have_in] + [n for n in outputs.values() if n not in have_out]
    if missing:
        raise ModelError(f"{path} lacks the graph names {missing} that model.json lists (inputs "
                         f"{sorted(have_in)}, outputs {sorted(have_out)}): re-run `charlstm export`")


def check_contract(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    """The graph has the manifest's input/output names, and one probe step gives logits [1, len(vocab)]."""
    _check_names(session, manifest.inputs, manifest.outputs, path)
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


def check_burst(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    """The burst graph has the names model.json lists, and one probe run gives [steps, 1] ids in the vocabulary."""
    spec = manifest.burst
    _check_names(session, spec.inputs, spec.outputs, path)
    zeros = np.zeros((manifest.layers, 1, manifest.units), np.float32)
    feeds = {spec.inputs["token"]: np.zeros(1, np.int64), spec.inputs["h"]: zeros, spec.inputs["c"]: zeros,
             spec.inputs["noise"]: np.zeros((spec.steps, 1, len(manifest.vocab)), np.float32)}
    try:
        (tokens,) = session.run([spec.outputs["tokens"]], feeds, no_graph())
    except Exception as e:  # noqa: BLE001 - a shape mismatch surfaces as an ORT runtime error
        first = str(e).strip().splitlines()[0][:200]
        raise ModelError(f"{path} does not run with the shapes model.json gives ({first}): "
                         "re-run `charlstm export`") from None
    if tokens.shape != (spec.steps, 1) or not 0 <= int(tokens.min()) <= int(tokens.max()) < len(manifest.vocab):
        raise ModelError(f"{path} gives ids of shape {list(tokens.shape)}, but model.json has burst.steps "
                         f"{spec.steps} and {len(manifest.vocab)} vocab characters: re-run `charlstm export`")
