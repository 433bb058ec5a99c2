"""The burst graph (export/burst.py): 16 steps a run, sampled in the graph, on a tiny real model.

It must pick what the step graph picks from the same noise, carry the same state, hold no weights of its own,
and give `Generator` the same text for a seed as the step loop.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from charlstm.export import burst
from charlstm.runtime import Generator, ModelError, load_manifest
from charlstm.runtime.sampling import SamplingParams, gumbel_max, gumbel_noise, gumbel_uniforms, row_generators
from tests.onnx_fixture import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("burst") / "fixture", layers=2, units=32)


@pytest.fixture(scope="module")
def both(model_dir):
    return Generator(model_dir, device="cpu", burst=True), Generator(model_dir, device="cpu", burst=False)


def test_burst_picks_and_state_match_the_step_graph(model_dir):
    figures = burst.check(model_dir, runs=3, batch=3, temperature=0.8)
    assert figures["characters"] == 3 * 16 * 3
    assert figures["max_pick_gap"] <= 1e-4 and figures["max_abs_state_diff"] <= 1e-4


def test_burst_file_holds_no_weights_of_its_own(model_dir):
    graph = onnx.load(model_dir / burst.FILE, load_external_data=False)
    linked = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert linked and all(e.value == "model.onnx" for t in linked for e in t.external_data if e.key == "location")
    assert all(len(t.raw_data) < burst.LINK_MIN_BYTES for t in graph.graph.initializer if t not in linked)
    m = load_manifest(model_dir)
    assert (m.burst.file, m.burst.steps, m.burst.inputs["noise"]) == (burst.FILE, burst.STEPS, "noise")
    assert m.verify(m.burst_path()) == m.files[burst.FILE]["sha256"]


@pytest.mark.parametrize("kwargs", [dict(seed=1, length=200), dict(seed=2, length=37, num_samples=3),
                                    dict(seed=3, length=17, temperature=0), dict(seed=4, length=1),
                                    dict(seed=5, length=300, stop="e ", num_samples=2),
                                    dict(seed=6, length=50, temperature=1.5, prompt=""),
                                    dict(seed=7, length=70, num_samples=9)])  # 9 rows: noise drawn ahead
def test_burst_text_equals_the_step_loop_text(both, kwargs):
    fast, slow = both
    prompt = kwargs.pop("prompt", "ROMEO:")
    assert fast.stepper.burst_session is not None and slow.stepper.burst_session is None
    a, b = fast.generate_batch(prompt, **kwargs), slow.generate_batch(prompt, **kwargs)
    assert a == b
    texts = a
    assert all(len(t) <= kwargs["length"] for t in texts) and any(t for t in texts)
    if "stop" in kwargs:  # a sample ends at its stop string, mid-burst
        assert all(t.endswith("e ") or len(t) == kwargs["length"] for t in texts)


def test_top_k_and_top_p_use_the_step_graph(both):
    fast, slow = both
    assert "burst graph (16 characters a run)" in fast.path_note()
    assert fast.path_note(SamplingParams(top_k=5)) == "one step a run" and slow.path_note() == "one step a run"
    assert fast.generate("A", length=40, seed=1, top_k=5) == slow.generate("A", length=40, seed=1, top_k=5)


def test_cpu_default_skips_the_burst_graph(model_dir):
    gen = Generator(model_dir, device="cpu")  # its load costs more than it saves on a short CPU run
    assert gen.stepper.burst_session is None


def test_host_gumbel_is_the_graph_formula():
    rngs = row_generators(0, 2)
    u = gumbel_uniforms(rngs, 5, steps=3)
    assert u.shape == (3, 2, 5) and u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    again = row_generators(0, 2)
    singles = [gumbel_uniforms(again, 5) for _ in range(3)]  # steps draws = steps single draws
    assert all(np.array_equal(u[k], singles[k]) for k in range(3))
    edge = gumbel_noise(np.array([0.0, 1 - 2**-24], np.float32), 1.0)  # the grid's ends stay finite
    assert np.isfinite(edge).all() and edge[0] > 16 and edge[1] < -2
    logits = np.array([[0.0, 3.0, 1.0, 0.5, -1.0]] * 2, np.float32)
    noise = gumbel_noise(u[0], 0.7)
    assert noise.dtype == np.float32 and np.array_equal(gumbel_max(logits, 0.7, u[0]), np.argmax(logits + noise, -1))
    assert not gumbel_noise(u[0], 0).any()


def test_missing_or_changed_burst_file_is_one_line(tmp_path, model_dir):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    data = (folder / burst.FILE).read_bytes()
    (folder / burst.FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelError, match="model.burst.onnx has sha256 .* re-run `charlstm export`"):
        Generator(folder, device="cpu", burst=True)
    (folder / burst.FILE).write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="model.burst.onnx has 8 bytes, but model.json records"):
        Generator(folder, device="cpu", burst=True)
    (folder / burst.FILE).unlink()
    with pytest.raises(ModelError, match="model.burst.onnx does not exist: the model folder is incomplete"):
        Generator(folder, device="cpu", burst=True)
    assert Generator(folder, device="cpu").generate("A", length=5, seed=1)  # the CPU default does not need it
    manifest = json.loads((folder / "model.json").read_text())
    manifest["burst"]["file"] = "../elsewhere.onnx"
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="burst.file is .*expected a file name in this folder"):
        load_manifest(folder)


def test_folders_without_a_burst_graph_still_generate(tmp_path):
    folder = make_model_dir(tmp_path / "old", burst=False)  # exported before the burst graph existed
    gen = Generator(folder, device="cpu", burst=True)
    assert gen.manifest.burst is None and gen.stepper.burst_session is None
    assert len(gen.generate("A", length=20, seed=1)) == 20


@pytest.mark.parametrize("at", [2, 15, 16, 30])
def test_a_stop_string_straddling_runs_ends_the_sample_there(both, at):
    fast, slow = both
    text = slow.generate("ROMEO:", length=60, seed=9)
    stop = text[at:at + 3]  # the burst's first run makes characters 1-16: 15 and 16 straddle a boundary
    want = text[:text.find(stop) + 3]
    assert fast.generate("ROMEO:", length=60, seed=9, stop=stop) == want
    assert slow.generate("ROMEO:", length=60, seed=9, stop=stop) == want
    assert "".join(fast.stream("ROMEO:", length=60, seed=9, stop=stop)) == want


def test_the_burst_graph_reads_each_layer_state_once(model_dir):
    graph = onnx.load(model_dir / burst.FILE, load_external_data=False).graph
    readers = [n for n in graph.node if set(n.input) & {"h", "c"}]
    assert len(readers) == 2 * 2  # Gather (fixture) of h and c, layer by layer, in step 0 only
    assert sum(n.op_type == "Split" and n.input[0] == "noise" for n in graph.node) == 1


def test_a_burst_longer_than_cuda_graphs_allow_is_refused(model_dir):
    step = onnx.load(model_dir / "model.onnx")
    with pytest.raises(ValueError, match="use 1 to 32"):
        burst.unroll(step, 64)
    assert len(burst.unroll(step, 32).graph.output) == 3


def test_burst_names_that_the_graph_lacks_are_one_line(tmp_path, model_dir):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["burst"]["outputs"]["tokens"] = "ids"
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"lacks the graph names \['ids'\] .* re-run `charlstm export`"):
        Generator(folder, device="cpu", burst=True)


def test_stepper_slots_are_kept_and_zeroed_per_batch_size(model_dir):
    """The CUDA-graph bookkeeping, run on the CPU: one slot of buffers per batch size, kept across resets
    (a captured graph replays on those addresses), its state zeroed on reset, so reruns repeat exactly."""
    from charlstm.runtime.stepper import BoundStepper

    gen = Generator(model_dir, device="cpu", burst=True)
    want = gen.generate_batch("ROMEO:", length=40, seed=3, num_samples=2)
    stepper = BoundStepper(gen.session, gen.manifest, "cpu", gen.stepper.burst_session)
    stepper.graphs = True  # the run options then carry gpu_graph_id, which the CPU provider ignores
    gen.stepper = stepper
    assert gen.generate_batch("ROMEO:", length=40, seed=3, num_samples=2) == want
    assert gen.generate("ROMEO:", length=40, seed=3) == want[0]  # batch 1: a second slot
    assert gen.generate_batch("ROMEO:", length=40, seed=3, num_samples=2) == want  # the first slot again, zeroed
    assert sorted(stepper.slots) == [1, 2] and [s.index for s in stepper.slots.values()] == [0, 1]


def test_beside_a_cpu_burst_session_the_step_session_workers_sleep(model_dir):
    def spinning(session):
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    gen = Generator(model_dir, device="cpu", burst=True, spinning=True)
    assert spinning(gen.stepper.burst_session) == "1" and spinning(gen.session) == "0"
    assert spinning(Generator(model_dir, device="cpu", burst=False, spinning=True).session) == "1"
