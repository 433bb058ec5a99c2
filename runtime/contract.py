"""Probes that a loaded graph keeps the contract its manifest describes, before any text depends on it.

The step graph: the names model.json lists, and one step from the zero state gives logits [1, len(vocab)] and a
state [layers, 1, units]. The burst graph: its names, and one run gives [steps, 1] ids inside the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from charlstm.runtime.errors import ModelError
from charlstm.runtime.manifest import Manifest
from charlstm.runtime.session import no_graph
from charlstm.runtime.stepper import Stepper


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
