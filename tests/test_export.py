"""charlstm export: the graph contract, parity with Keras, batches, int8, the notebook import, and each error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, run_cli

pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from charlstm.export.export import load_run  # noqa: E402
from charlstm.export.verify import ort_steps  # noqa: E402


def _session(model_dir, name="model.onnx"):
    return ort.InferenceSession(str(model_dir / name), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model2"])
def test_graph_contract(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    manifest = json.loads((model_dir / "model.json").read_text())
    layers, units, vocab = (manifest["model"][k] for k in ("layers", "units", "vocab_size"))
    g = onnx.load(model_dir / "model.onnx").graph
    inputs = {i.name: i.type.tensor_type for i in g.input}
    outputs = [o.name for o in g.output]
    assert list(inputs) == ["token", "h", "c"] and outputs == ["logits", "h_out", "c_out"]
    assert inputs["token"].elem_type == onnx.TensorProto.INT64
    assert inputs["h"].elem_type == inputs["c"].elem_type == onnx.TensorProto.FLOAT
    dims = lambda t: [d.dim_param or d.dim_value for d in t.shape.dim]  # noqa: E731
    assert dims(inputs["token"]) == ["batch"] and dims(inputs["h"]) == [layers, "batch", units]
    assert not {n.op_type for n in g.node} & {"Loop", "Scan", "If"}
    logits, h, c = _session(model_dir).run(None, {"token": np.array([0, 1, 2]),
                                                  "h": np.zeros((layers, 3, units), np.float32),
                                                  "c": np.zeros((layers, 3, units), np.float32)})
    assert logits.shape == (3, vocab) and h.shape == c.shape == (layers, 3, units)
    assert len(manifest["vocab"]) == vocab and manifest["files"]["model.onnx"]["sha256"]
    # the burst graph ships beside it, checked at export against the step graph, its weights read from model.onnx
    assert manifest["burst"]["file"] == "model.burst.onnx" and manifest["files"]["model.burst.onnx"]["sha256"]
    assert manifest["export"]["burst_parity"]["max_pick_gap"] <= 1e-4
    burst = onnx.load(model_dir / "model.burst.onnx", load_external_data=False)
    inline = [t.name for t in burst.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
              and len(t.raw_data) >= 1024]
    assert not inline and any(t.data_location == onnx.TensorProto.EXTERNAL for t in burst.graph.initializer)


@pytest.mark.parametrize("run_fixture, model_fixture", [("tiny_run", "tiny_model"), ("tiny_run2", "tiny_model2")])
def test_parity_with_keras(request, run_fixture, model_fixture):
    run_dir, model_dir = request.getfixturevalue(run_fixture), request.getfixturevalue(model_fixture)
    model, mc, vocab, cfg, _ = load_run(run_dir, "best")
    ids = np.random.default_rng(1).integers(0, len(vocab), (1, 300))
    ref = np.asarray(model(ids.astype(np.int32), training=False))[0]
    got = ort_steps(_session(model_dir), ids, mc.layers, mc.units)[:, 0]
    assert np.abs(ref - got).max() <= 1e-4
    parity = json.loads((model_dir / "model.json").read_text())["export"]["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["greedy_match"] and parity["steps"] >= 200


def test_batch_equals_single_runs(tiny_model2):
    manifest = json.loads((tiny_model2 / "model.json").read_text())
    layers, units, vocab = (manifest["model"][k] for k in ("layers", "units", "vocab_size"))
    ids = np.random.default_rng(2).integers(0, vocab, (4, 50))
    session = _session(tiny_model2)
    batch = ort_steps(session, ids, layers, units)
    for row in range(4):
        single = ort_steps(session, ids[row:row + 1], layers, units)[:, 0]
        assert np.abs(batch[:, row] - single).max() <= 1e-5


def test_manifest_provenance(tiny_model2, tiny_run2):
    m = json.loads((tiny_model2 / "model.json").read_text())
    assert m["format"] == "charlstm-model" and m["format_version"] == 1
    assert m["sampling"] == {"temperature": 0.5, "length": 500}
    assert m["provenance"]["epoch"] in (1, 2) and m["provenance"]["val_loss"] > 0
    assert m["provenance"]["run_config"]["corpus"]["sha256"]
    assert set(m["export"]["versions"]) >= {"tensorflow", "keras", "tf2onnx", "onnx"}
    assert m["provenance"]["training"]["seconds"] > 0 and m["provenance"]["training"]["machine"]["cpus"] >= 1
    e = m["evaluation"]
    assert e["split"] == "val" and e["corpus"] == "tiny.txt" and e["characters"] > 1000
    assert e["bits_per_char"] == pytest.approx(e["nats_per_char"] / np.log(2))
    assert m["export"]["int8"]["val_loss_float32"] == e["nats_per_char"]


def test_int8(tiny_model2):
    m = json.loads((tiny_model2 / "model.json").read_text())
    assert (tiny_model2 / "model.int8.onnx").is_file() and m["files"]["model.int8.onnx"]["sha256"]
    ops = {n.op_type for n in onnx.load(tiny_model2 / "model.int8.onnx").graph.node}
    assert "MatMulNBits" in ops and not ops & {"MatMul", "Gemm"}  # every matrix quantized
    q = m["export"]["int8"]
    assert abs(q["val_loss_change"]) < 0.05 and q["val_loss_int8"] > 0


def test_cli_export_and_refusals(tiny_run, tmp_path):
    """Through the CLI with --average 2 (the plain path is every fixture's); Keras agrees on the mean weights."""
    out = tmp_path / "m"
    ok = run_cli("export", str(tiny_run), "--out", str(out), "--checkpoint", "last", "--average", "2")
    assert ok.returncode == 0, ok.stderr[-2000:]
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["provenance"]["epoch"] == 3 and manifest["provenance"]["averaged_epochs"] == [2, 3]
    keras_side = run_cli("evaluate", "--run", str(tiny_run), "--checkpoint", "last", "--average", "2", "--json")
    assert keras_side.returncode == 0, keras_side.stderr[-2000:]
    result = json.loads(keras_side.stdout)
    assert result["averaged_epochs"] == [2, 3]
    assert abs(result["nats_per_char"] - manifest["evaluation"]["nats_per_char"]) < 0.005
    again = run_cli("export", str(tiny_run), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("checkpoint, message", [
    ("newest", "unknown checkpoint 'newest'"),
    ("missing.weights.h5", "checkpoint not found"),
])
def test_bad_checkpoint_names(tiny_run, tmp_path, checkpoint, message):
    from charlstm.errors import UserError
    with pytest.raises(UserError, match=message):
        load_run(tiny_run, checkpoint)


def test_average_is_the_mean_of_the_epochs(tiny_run):
    model, *_ , source = load_run(tiny_run, "last", average=3)
    singles = [load_run(tiny_run, str(tiny_run / "checkpoints" / f"epoch-{e:03d}.weights.h5"))[0].get_weights()
               for e in (1, 2, 3)]
    for got, *ws in zip(model.get_weights(), *singles):
        np.testing.assert_allclose(got, np.mean(ws, axis=0), rtol=0, atol=1e-6)
    assert source["averaged_epochs"] == [1, 2, 3] and source["val_loss"] is None  # no Keras figure for a mean


@pytest.mark.parametrize("checkpoint, average, message", [
    ("last", 4, "--average 4 reaches before epoch 1 .* pass at most 3"),
    ("last", 0, "--average 0: pass 1"),
    ("gone", 2, "--average 2 needs .*epoch-002.weights.h5, which is missing"),
])
def test_bad_average(tiny_run, tmp_path, checkpoint, average, message):
    from charlstm.errors import UserError
    if checkpoint == "gone":
        shutil.copytree(tiny_run, tmp_path / "run")
        (tmp_path / "run" / "checkpoints" / "epoch-002.weights.h5").unlink()
        tiny_run, checkpoint = tmp_path / "run", "last"
    with pytest.raises(UserError, match=message):
        load_run(tiny_run, checkpoint, average=average)


def test_truncated_checkpoint_and_wrong_shapes(tiny_run, tmp_path):
    from charlstm.errors import UserError
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    best = run_dir / "checkpoints" / "best.weights.h5"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot be loaded"):
        load_run(run_dir, "best")
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"]["units"] = 48
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="cannot be loaded"):
        load_run(run_dir, "last")


def test_failed_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from charlstm.export import verify
    from charlstm.export.export import export_model, parity_ids
    model, mc, vocab, cfg, source = load_run(tiny_run, "best")
    monkeypatch.setattr(verify, "TOLERANCE", -1.0)  # no difference can pass: the check must fail
    with pytest.raises(verify.ParityError):
        export_model(model, mc, vocab, tmp_path / "m", provenance=source, parity_text=parity_ids(cfg, vocab))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_notebook_checkpoint_import(tmp_path, corpus_path):
    """The notebook's own code under tf-keras writes the checkpoint; the export matches its logits."""
    pytest.importorskip("tf_keras", reason="tf-keras (the `test` extra) runs the notebook's tf.keras 2 code")
    text = corpus_path.read_text(encoding="utf-8").replace("\n", "\r\n", 50)  # the notebook kept \r
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(text.encode("utf-8"))
    made = subprocess.run([sys.executable, str(ROOT / "tests" / "notebook_reference.py"), str(corpus), str(tmp_path)],
                          capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT)
    assert made.returncode == 0, made.stderr[-3000:]
    result = run_cli("export", "--from-notebook", str(tmp_path / "training_checkpoints"), "--corpus", str(corpus),
                     "--out", str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert "\r" in manifest["vocab"] and manifest["provenance"]["epoch"] == 2
    ids = np.array([manifest["vocab"].index(ch) for ch in text[-256:]])[None, :]
    got = ort_steps(_session(tmp_path / "model"), ids, 1, manifest["model"]["units"])[:, 0]
    assert np.abs(got - np.load(tmp_path / "reference_logits.npy")).max() <= 1e-4
    bad = run_cli("export", "--from-notebook", str(tmp_path / "nothing"), "--corpus", str(corpus),
                  "--out", str(tmp_path / "m2"))
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr and "Traceback" not in bad.stderr
    wrong = tmp_path / "other.txt"
    wrong.write_text("abc" * 100)
    bad = run_cli("export", "--from-notebook", str(tmp_path / "training_checkpoints"), "--corpus", str(wrong),
                  "--out", str(tmp_path / "m3"))
    assert bad.returncode == 2 and "vocabulary" in bad.stderr
