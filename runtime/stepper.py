"""Steppers: run one step (or one burst) at a time and carry the LSTM state between runs.

A step feeds one character id per batch row and returns logits [batch, vocab]; the state (h, c) stays inside
the stepper, in buffers bound once with IOBinding: two state buffer sets used alternately (ping-pong: step k
reads set k and writes set 1-k, because binding an output onto its own input corrupts results under CUDA
graphs); only logits come back. On CUDA that keeps h and c on the device; on the CPU it spares ONNX Runtime
allocating, and numpy wrapping, three outputs a step. Each batch size gets its own buffers (a slot), kept for
the stepper's life, so a CUDA graph captured on them can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from charlstm.runtime.manifest import Manifest
from charlstm.runtime.session import no_graph


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
        if self.use(batch):
            zeros = np.zeros((self.m.layers, batch, self.m.units), np.float32)
            for value in (v for pair in self.slot.states for v in pair):
                value.update_inplace(zeros)

    def use(self, batch: int) -> bool:
        """Run at this batch size from now on, on its slot's buffers (made zeroed the first time; otherwise as
        they are). Returns whether the slot existed already."""
        self.batch = batch
        slot = self.slots.get(batch)
        existed = slot is not None
        if not existed:
            slot = self.slots[batch] = self._slot(batch, len(self.slots))
        self.slot, self.k = slot, 0  # k: which state set is read on the next step
        return existed

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the state the next step reads: h and c, [layers, batch, units]."""
        h, c = self.slot.states[self.k]
        return np.array(h.numpy(), copy=True), np.array(c.numpy(), copy=True)

    def load_state(self, h: np.ndarray, c: np.ndarray) -> None:
        """Make (h, c), [layers, batch, units], the state the next step reads, at that batch size (the serving
        engine moves rows between batch sizes with this)."""
        self.use(h.shape[1])
        for value, array in zip(self.slot.states[0], (h, c)):
            value.update_inplace(np.ascontiguousarray(array, dtype=np.float32))

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


