"""The Triton model repository: config.pbtxt parsed with the schema tritonclient ships, and the wrapper graph run
with ONNX Runtime against the plain step (and against numpy) on a few steps. No Triton server is started."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from charlstm.errors import UserError
from charlstm.export.triton import TritonError, check_wrapper, wrap, write_repository
from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, run_cli
from tests.onnx_fixture import make_model_dir, numpy_step

ort = pytest.importorskip("onnxruntime")


def parse_config(path):
    """config.pbtxt -> ModelConfig message; a field Triton does not know fails here, as it would in Triton."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        pytest.skip("tritonclient is not installed (pip install 'tritonclient[grpc]'): cannot check config.pbtxt "
                    "against Triton's model_config.proto")
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def triton_run(session, tokens, start, ready, state):
    """One request batch the way Triton feeds it: [batch, 1] inputs, batch-first state (h, c)."""
    logits, h, c = session.run(["LOGITS", "H_OUT", "C_OUT"], {
        "TOKEN": tokens[:, None].astype(np.int64), "START": start[:, None].astype(np.int32),
        "READY": ready[:, None].astype(np.int32), "H": state[0], "C": state[1]})
    return logits, (h, c)


@pytest.mark.parametrize("layers", [1, 2])
def test_config_is_a_valid_triton_model_config(tmp_path, layers):
    model = make_model_dir(tmp_path / "model", layers=layers, units=16)
    out = write_repository(model, tmp_path / "repo")
    assert out == tmp_path / "repo" / "fixture" and (out / "1" / "model.onnx").is_file()
    cfg = parse_config(out / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as pb

    assert (cfg.name, cfg.backend, cfg.platform) == ("fixture", "onnxruntime", "onnxruntime_onnx")
    assert cfg.max_batch_size > 1
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("TOKEN", pb.TYPE_INT64, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("LOGITS", pb.TYPE_FP32, [65])]
    seq = cfg.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "oldest" and seq.oldest.max_candidate_sequences >= cfg.max_batch_size
    kinds = {c.name: (c.control[0].kind, list(c.control[0].int32_false_true)) for c in seq.control_input}
    assert kinds == {"START": (pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START, [0, 1]),
                     "READY": (pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY, [0, 1])}
    assert [(s.input_name, s.output_name, list(s.dims)) for s in seq.state] == [
        ("H", "H_OUT", [layers, 16]), ("C", "C_OUT", [layers, 16])]
    inits = [s.initial_state for s in seq.state]  # a repeated field; one zero tensor per state
    assert all(len(i) == 1 and i[0].zero_data and list(i[0].dims) == [layers, 16] for i in inits)
    vocab = json.loads(cfg.parameters["charlstm.vocab"].string_value)
    assert list(vocab) == json.loads((model / "model.json").read_text())["vocab"]


def test_model_inputs_are_what_the_onnxruntime_backend_expects(tmp_path):
    """Config inputs + controls + states, each batch-first; a control must be [batch, 1] int32."""
    out = write_repository(make_model_dir(tmp_path / "model", layers=2), tmp_path / "repo")
    session = ort.InferenceSession(str(out / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert shapes == {"TOKEN": ("tensor(int64)", ["batch", 1]), "START": ("tensor(int32)", ["batch", 1]),
                      "READY": ("tensor(int32)", ["batch", 1]), "H": ("tensor(float)", ["batch", 2, 16]),
                      "C": ("tensor(float)", ["batch", 2, 16])}
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("LOGITS", ["batch", 65]), ("H_OUT", ["batch", 2, 16]), ("C_OUT", ["batch", 2, 16])]


def test_wrapper_steps_like_numpy(tmp_path):
    """Three sequences stepped together: the logits match the numpy reference step; START ignores whatever
    state came in; a row that is not READY keeps its state."""
    model = make_model_dir(tmp_path / "model", layers=2, units=16)
    out = write_repository(model, tmp_path / "repo")
    session = ort.InferenceSession(str(out / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    state = tuple(rng.normal(0, 1, (3, 2, 16)).astype(np.float32) for _ in range(2))  # uninitialised slots
    h, c = np.zeros((2, 3, 16), np.float32), np.zeros((2, 3, 16), np.float32)
    for t in range(6):
        tokens = rng.integers(0, 65, 3)
        ready = np.array([1, 1, 0 if t == 3 else 1])
        logits, new = triton_run(session, tokens, np.array([t == 0] * 3), ready, state)
        want, h_next, c_next = numpy_step(model, tokens, h, c)
        np.testing.assert_allclose(logits[ready == 1], want[ready == 1], atol=1e-5)
        h[:, ready == 1], c[:, ready == 1] = h_next[:, ready == 1], c_next[:, ready == 1]
        np.testing.assert_allclose(new[0], h.transpose(1, 0, 2), atol=1e-5)
        np.testing.assert_allclose(new[1], c.transpose(1, 0, 2), atol=1e-5)
        if t == 3:
            np.testing.assert_array_equal(new[0][2], state[0][2])  # not READY: passed through untouched
        state = new


def test_check_wrapper_catches_a_state_leak(tmp_path):
    """A wrapper that forgets to zero the state at START must not pass the export-time check."""
    model = make_model_dir(tmp_path / "model", layers=1)
    step = onnx.load(model / "model.onnx")
    broken = wrap(step, 1, 16, 65)
    for node in broken.graph.node:
        if node.name == "triton/h_fresh":
            node.input[1] = node.input[2]  # START now keeps the incoming (garbage) state
    assert check_wrapper(step, wrap(step, 1, 16, 65), 1, 16, 65) <= 1e-5
    with pytest.raises(TritonError, match="differs from model.onnx"):
        check_wrapper(step, broken, 1, 16, 65)


def test_existing_model_needs_force_and_others_are_kept(tmp_path):
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    model = make_model_dir(tmp_path / "model")
    first = write_repository(model, repo)
    with pytest.raises(TritonError, match="already exists: pass --force"):
        write_repository(model, repo)
    make_model_dir(model, layers=2)  # a different model under the same name
    write_repository(model, repo, force=True)
    assert list(parse_config(first / "config.pbtxt").sequence_batching.state[0].dims) == [2, 16]
    assert sorted(p.name for p in repo.iterdir()) == ["fixture", "other"]  # no temporary folders left


def test_bad_folders_fail_with_one_line(tmp_path):
    model = make_model_dir(tmp_path / "model")
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(UserError, match="changed or truncated"):  # the runtime's own checks (tests/test_faults.py)
        write_repository(model, tmp_path / "repo")
    model = make_model_dir(tmp_path / "named")
    manifest = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**manifest, "name": "my model/v1"}))
    with pytest.raises(TritonError, match="--name"):
        write_repository(model, tmp_path / "repo")
    with pytest.raises(UserError, match="does not exist"):
        write_repository(tmp_path / "missing", tmp_path / "repo")
    with pytest.raises(TritonError, match="kind 'tpu'"):
        write_repository(make_model_dir(tmp_path / "k"), tmp_path / "repo", kind="tpu")


def test_module_command_writes_a_repository(tmp_path):
    """`python -m charlstm.export.triton MODEL REPO` needs no TensorFlow: a repository from an existing model folder."""
    model = make_model_dir(tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "charlstm.export.triton", str(model), str(tmp_path / "repo")],
                          capture_output=True, text=True, cwd=ROOT, timeout=SLOW_MACHINE_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "repo" / "fixture" / "config.pbtxt").is_file()
    again = subprocess.run([sys.executable, "-m", "charlstm.export.triton", str(model), str(tmp_path / "repo")],
                           capture_output=True, text=True, cwd=ROOT, timeout=SLOW_MACHINE_TIMEOUT)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr


@pytest.mark.slow
def test_export_writes_a_triton_repository(tmp_path, tiny_run):
    """`charlstm export --triton` on a real tf2onnx-traced step: the wrapper steps like model.onnx."""
    pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")
    done = run_cli("export", str(tiny_run), "--out", str(tmp_path / "tiny"), "--triton", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr
    cfg = parse_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    layers, units = (json.loads((tmp_path / "tiny" / "model.json").read_text())["model"][k]
                     for k in ("layers", "units"))
    assert list(cfg.sequence_batching.state[0].dims) == [layers, units]
    cpu = ["CPUExecutionProvider"]
    step = ort.InferenceSession(str(tmp_path / "tiny" / "model.onnx"), providers=cpu)
    wrapped = ort.InferenceSession(str(tmp_path / "repo" / "tiny" / "1" / "model.onnx"), providers=cpu)
    vocab = int(cfg.output[0].dims[0])
    tokens = np.random.default_rng(0).integers(0, vocab, (20, 2))
    h = c = np.zeros((layers, 2, units), np.float32)
    state = (np.zeros((2, layers, units), np.float32),) * 2
    for t, row in enumerate(tokens):
        want, h, c = step.run(None, {"token": row, "h": h, "c": c})
        got, state = triton_run(wrapped, row, np.full(2, t == 0), np.ones(2), state)
        np.testing.assert_allclose(got, want, atol=1e-5)
