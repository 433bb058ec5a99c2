"""Training that survives preemption: the same command continues a run, a SIGKILL mid-epoch loses only the
batches since the last resume point and the resumed run ends where an uninterrupted one ends (TensorFlow and
JAX), a second trainer on the folder is refused, and fine-tuning starts from another run's weights or from an
exported model folder's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, run_cli

pytest.importorskip("keras", reason="the `train` extra is not installed")
from charlstm.training import resume, run  # noqa: E402

# A tiny recipe with everything a resume must carry: two layers, stateful streams, dropout and recurrent dropout.
TINY = ["--units", "16", "--layers", "2", "--embedding-dim", "8", "--batch-size", "8", "--seq-length", "24",
        "--dropout", "0.1", "--recurrent-dropout", "0.1", "--learning-rate", "0.01", "--sample-every", "0",
        "--lr-decay", "0.9", "--lr-decay-after", "1", "--patience", "0", "--seed", "11", "--quiet"]


def train_args(corpus, out, *extra) -> list[str]:
    return ["train", "--text", str(corpus), "--out", str(out), *TINY, *extra]


def weights(run_dir: Path, epoch: int) -> list[np.ndarray]:
    import h5py
    with h5py.File(run.epoch_checkpoint(run_dir, epoch), "r") as f:
        out = []
        f.visititems(lambda name, obj: out.append(np.array(obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


def same_run(a: Path, b: Path, epochs: int, atol: float = 1e-5) -> None:
    ha, hb = run.read_history(a / "history.csv"), run.read_history(b / "history.csv")
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb] == list(range(1, epochs + 1))
    for x, y in zip(ha, hb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=atol)
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=atol)
    for x, y in zip(weights(a, epochs), weights(b, epochs)):
        np.testing.assert_allclose(x, y, atol=atol)


def library_train(corpus, out, given: dict, **kw):
    """What `charlstm train` runs, in this process: the flags given, on the tiny recipe's options."""
    from charlstm.training.config import TrainConfig, split_options
    from charlstm.training.train import train
    options = {**LIBRARY_TINY, **given}
    model_options, train_options = split_options(options)
    return train(corpus, out, model_options, TrainConfig(**train_options), given=options, verbose=0,
                 log=kw.pop("log", lambda m: None), **kw)


LIBRARY_TINY = dict(units=16, layers=2, embedding_dim=8, batch_size=8, seq_length=24, dropout=0.1,
                    recurrent_dropout=0.1, learning_rate=0.01, sample_every=0, lr_decay=0.9, lr_decay_after=1,
                    patience=0, seed=11)


def test_the_same_command_continues_and_equals_an_uninterrupted_run(tmp_path, corpus_path):
    library_train(corpus_path, tmp_path / "straight", {"epochs": 2})
    library_train(corpus_path, tmp_path / "run", {"epochs": 1})
    said = []
    library_train(corpus_path, tmp_path / "run", {"epochs": 2}, log=said.append)  # the same flags, a higher total
    assert any("epochs 2..2" in m for m in said)
    same_run(tmp_path / "straight", tmp_path / "run", 2)
    from charlstm.training.train import train
    said = []
    train(None, tmp_path / "run", resume=True, verbose=0, log=said.append)  # every setting from the run
    assert any("already has 2 epochs" in m for m in said)


def test_a_differing_flag_or_text_is_refused_before_anything_is_touched(tmp_path, corpus_path):
    out = tmp_path / "run"
    library_train(corpus_path, out, {"epochs": 1})
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    refused = run_cli(*train_args(corpus_path, out, "--epochs", "3", "--units", "32"))
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and line.startswith("error: ")
    assert "--units 32 differs from the run's 16" in line and "--force" in line
    other = tmp_path / "other.txt"
    other.write_text("a different text " * 500, encoding="utf-8")
    wrong_text = run_cli(*train_args(other, out, "--epochs", "3"))
    assert wrong_text.returncode == 2 and "is not the text the run" in wrong_text.stderr
    nothing = run_cli("train", "--out", str(tmp_path / "empty"), "--resume")
    assert nothing.returncode == 2 and "drop --resume to start one" in nothing.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    library_train(corpus_path, out, {"epochs": 1, "units": 12}, force=True)  # --force: a new run there
    assert json.loads((out / "config.json").read_text())["model"]["units"] == 12


def test_a_damaged_resume_point_falls_back_to_the_one_before(tmp_path, corpus_path):
    out = tmp_path / "run"
    library_train(corpus_path, out, {"epochs": 2}, save_every=0)
    newest = resume.points(out)[-1]
    npz = out / "resume" / f"{newest:06d}.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # a crash mid-write, or a bad disk
    said = []
    library_train(corpus_path, out, {"epochs": 2}, save_every=0, log=said.append)
    assert any("is damaged" in m and "trying the one before it" in m for m in said)
    assert [r["epoch"] for r in run.read_history(out / "history.csv")] == [1, 2]  # epoch 2 ran again
    cfg = out / "config.json"
    cfg.write_text(cfg.read_text()[:40])
    broken = run_cli("train", "--out", str(out), "--resume")
    assert broken.returncode == 2 and "config.json is damaged" in broken.stderr and "Traceback" not in broken.stderr
    exported = run_cli("export", str(out), "--out", str(tmp_path / "m"))
    assert exported.returncode == 2 and "config.json is damaged" in exported.stderr


def _kill_mid_epoch(args: list[str], out: Path, env: dict, kills: int, rng) -> int:
    """Start the command again and again, SIGKILLing it a random moment after it writes a new resume point (so
    the kill lands mid-epoch, or mid-save), until it finishes. Returns the kills made."""
    made = 0
    for _ in range(kills + 3):
        proc = subprocess.Popen([sys.executable, "-m", "charlstm", *args], cwd=ROOT, env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if made < kills:
            seen = resume.points(out) if (out / "resume").is_dir() else []
            deadline = time.monotonic() + SLOW_MACHINE_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if (out / "resume").is_dir() and resume.points(out) != seen:
                    time.sleep(float(rng.uniform(0.0, 0.6)))
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                made += 1
                proc.wait()
                continue
        _, err = proc.communicate(timeout=SLOW_MACHINE_TIMEOUT)
        assert proc.returncode == 0, err[-3000:]
        return made
    raise AssertionError("the run never finished")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_sigkill_mid_epoch_then_the_same_command_ends_where_an_uninterrupted_run_ends(tmp_path, corpus_path,
                                                                                     backend):
    pytest.importorskip(backend, reason=f"{backend} is not installed")
    # JAX compiles the training step in every process: its persistent cache lets the restarts reuse it
    env = {"KERAS_BACKEND": backend, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    # Every dropout generator a resume point must carry: recurrent dropout (TINY's), weight drop, embedding dropout
    # and input dropout
    epochs = ["--epochs", "2", "--save-every", "7", "--weight-drop", "0.2", "--embedding-dropout", "0.1",
              "--input-dropout", "0.2"]
    if backend == "tensorflow":  # this process runs TensorFlow: the reference needs no process of its own
        library_train(corpus_path, tmp_path / "straight", {"epochs": 2, "weight_drop": 0.2, "embedding_dropout": 0.1,
                                                           "input_dropout": 0.2}, save_every=7)
    else:
        straight = run_cli(*train_args(corpus_path, tmp_path / "straight", *epochs), env=env)
        assert straight.returncode == 0, straight.stderr[-2000:]
    args = train_args(corpus_path, tmp_path / "killed", *epochs)
    wanted = 2 if backend == "tensorflow" else 1  # three kills over the two backends: JAX's restarts cost more
    kills = _kill_mid_epoch(args, tmp_path / "killed", env, kills=wanted, rng=np.random.default_rng(3))
    assert kills == wanted
    same_run(tmp_path / "straight", tmp_path / "killed", 2)
    assert not list((tmp_path / "killed").rglob(".tmp-*"))  # what a kill left half-written is gone
    assert len(resume.points(tmp_path / "killed")) == resume.KEEP
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["versions"]["backend"] == backend
    if backend == "jax" and pytest.importorskip("tf2onnx", reason="the `export` extra is not installed"):
        exported = run_cli("export", str(tmp_path / "killed"), "--out", str(tmp_path / "model"))  # with TensorFlow
        assert exported.returncode == 0, exported.stderr[-2000:]


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, corpus_path):
    out = tmp_path / "run"
    args = train_args(corpus_path, out, "--epochs", "200")
    first = subprocess.Popen([sys.executable, "-m", "charlstm", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SLOW_MACHINE_TIMEOUT
        while not (out / "history.csv").exists() and time.monotonic() < deadline:  # it trains: it holds the lock
            time.sleep(0.1)
        second = run_cli("train", "--out", str(out), "--resume", "--quiet")
        assert second.returncode == 2 and f"is being trained by pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    history = run.read_history(out / "history.csv")
    taken = run_cli("train", "--out", str(out), "--resume", "--epochs", str(len(history) + 1), "--quiet")
    assert taken.returncode == 0, taken.stderr[-2000:]  # the dead holder's lock file is simply taken over


@pytest.mark.slow
def test_fine_tuning_a_model_folder_grows_the_vocabulary_and_the_same_command_continues(tmp_path, tiny_model,
                                                                                      corpus_path):
    """The source is an exported model folder (what a user of the shipped model has); the run folder behind it
    is not needed. Rerun, the same command continues the fine-tune instead of refusing its --out."""
    new_text = tmp_path / "nuevo.txt"
    new_text.write_text(("¿QUIÉN es? ¡El rey, señor!\n" + corpus_path.read_text(encoding="utf-8")[:3000]) * 2,
                        encoding="utf-8")
    out = tmp_path / "tuned"
    args = ["train", "--text", str(new_text), "--out", str(out), "--init-from", str(tiny_model), "--epochs", "1",
            "--batch-size", "8", "--seq-length", "24", "--quiet"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    old, new = json.loads((tiny_model / "model.json").read_text())["vocab"], run.read_vocab(out)
    added = sorted(set(new_text.read_text(encoding="utf-8")) - set(old))
    assert {"¿", "¡", "É", "ñ"} <= set(added) and new == old + added
    assert f"{len(added)} character(s) new to the source vocabulary" in result.stderr and "'¿'" in result.stderr
    cfg = json.loads((out / "config.json").read_text())
    source = cfg["init_from"]
    assert source["checkpoint"] == "model.onnx" and len(source["checkpoint_sha256"]) == 64
    assert cfg["model"]["units"] == 32 and cfg["train"]["learning_rate"] == 5e-4  # the source's shape, finetune
    again = run_cli(*args)
    assert again.returncode == 0 and "already has 1 epochs" in again.stderr, again.stderr[-2000:]
    shutil.rmtree(out / "resume")  # as if killed before its first resume point: it starts over from the source
    over = run_cli(*args)
    assert over.returncode == 0, over.stderr[-2000:]
    assert f"{len(added)} character(s) new to the source vocabulary" in over.stderr and run.read_vocab(out) == new
    refused = run_cli("train", "--text", str(new_text), "--out", str(tmp_path / "x"), "--init-from",
                      str(tiny_model), "--units", "64")
    assert refused.returncode == 2 and "--units 64 differs from the source run's 32" in refused.stderr
    missing = run_cli("train", "--text", str(new_text), "--out", str(tmp_path / "y"), "--init-from",
                      str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is neither a run folder (config.json) nor a model folder" in missing.stderr


def test_a_model_folder_source_starts_the_keras_model_where_its_graph_is(tiny_model2):
    """model.onnx's numbers, found by walking the graph, with layer 0's folded table factored back into an
    embedding (here narrower than the vocabulary), give Keras the logits ONNX Runtime computes."""
    import keras
    import onnxruntime as ort

    from charlstm.runtime.manifest import load_manifest
    from charlstm.training import finetune
    from charlstm.training.config import ModelConfig
    from charlstm.training.model import build_model
    m = load_manifest(tiny_model2)
    assert m.embedding_dim < len(m.vocab)
    vocab, added = finetune.merged_vocab(list(m.vocab), "\u00fc")
    model = build_model(ModelConfig(vocab_size=len(vocab), embedding_dim=m.embedding_dim, units=m.units,
                                    layers=m.layers))
    record = finetune.initialise(model, tiny_model2, "best", vocab)
    assert record["checkpoint"] == "model.onnx" and record["added_characters"] == added == ["\u00fc"]
    ids = np.random.default_rng(1).integers(0, len(m.vocab), 48)
    expected = keras.ops.convert_to_numpy(model(ids[None].astype("int32"), training=False))[0, :, :len(m.vocab)]
    session = ort.InferenceSession(str(tiny_model2 / "model.onnx"), providers=["CPUExecutionProvider"])
    h = np.zeros((m.layers, 1, m.units), np.float32)
    c = h.copy()
    for t, token in enumerate(ids):
        logits, h, c = session.run(None, {"token": np.array([token], np.int64), "h": h, "c": c})
        np.testing.assert_allclose(expected[t], logits[0], atol=1e-4)


def test_drop_connect_applies_keras_own_per_gate_recurrent_dropout():
    """With recurrent dropout Keras' LSTMCell draws a mask per gate; the DropConnect cell applies the same masks,
    so with its kernel kept whole it steps exactly as Keras' cell does."""
    import keras

    from charlstm.training.model import DropConnectCell
    cell = DropConnectCell(8, recurrent_dropout=0.4, dropout=0.3, seed=3)
    x, h = np.random.default_rng(0).normal(size=(2, 5)).astype("float32"), np.ones((2, 8), "float32")
    cell.build((2, 5))
    cell.dropped = keras.ops.convert_to_tensor(cell.recurrent_kernel)
    ours, _ = cell.call(x, [h, h], training=True)  # draws and caches the masks
    cell.dropped = None
    theirs, _ = cell.call(x, [h, h], training=True)  # Keras' own step, the same cached masks
    assert isinstance(cell.get_recurrent_dropout_mask(h), list)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), atol=1e-6)


def test_fine_tuning_keeps_the_source_rows(tiny_run, tmp_path):
    import keras

    from charlstm.training import finetune
    from charlstm.training.config import ModelConfig, from_dict
    from charlstm.training.model import build_model, load_checkpoints
    cfg = run.read_config(tiny_run)
    old_vocab = run.read_vocab(tiny_run)
    vocab, added = finetune.merged_vocab(old_vocab, "zzz ~ ü")
    assert added == sorted({"z", "~", "ü"} - set(old_vocab)) and vocab == old_vocab + added
    mc = from_dict(ModelConfig, {**cfg["model"], "vocab_size": len(vocab)})
    model = build_model(mc)
    finetune.initialise(model, tiny_run, "best", vocab)
    source = build_model(from_dict(ModelConfig, cfg["model"]))
    load_checkpoints(source, [run.best_checkpoint(tiny_run)])
    n = len(old_vocab)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("embedding").embeddings)[:n],
                                  keras.ops.convert_to_numpy(source.get_layer("embedding").embeddings))
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0][:, :n],
                                  source.get_layer("logits").get_weights()[0])
    for a, b in zip(model.get_layer("lstm_0").cell.get_weights(), source.get_layer("lstm_0").cell.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weight_drop_trains_resumes_exactly_and_exports_the_same_contract(tmp_path, corpus_path):
    """--weight-drop (DropConnect on the recurrent kernel): a resumed run equals a straight one, and the export's
    graph and parity check are those of any run."""
    pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")
    options = {"epochs": 2, "weight_drop": 0.3, "recurrent_dropout": 0.0}
    library_train(corpus_path, tmp_path / "straight", options)
    library_train(corpus_path, tmp_path / "run", {**options, "epochs": 1})
    library_train(corpus_path, tmp_path / "run", options)
    same_run(tmp_path / "straight", tmp_path / "run", 2)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["weight_drop"] == 0.3
    from tests.conftest import _export
    _export(tmp_path / "run", tmp_path / "model")  # traced and checked against Keras as `charlstm export` does
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert manifest["inputs"] == {"token": "token", "h": "h", "c": "c"} and manifest["export"]["parity"]["greedy_match"]


def test_embedding_dropout_drops_whole_characters_for_a_batch_and_leaves_inference_alone():
    """--embedding-dropout (AWD-LSTM's dropoute): while training, every occurrence of a dropped character in the
    batch is zero and the kept ones are scaled by 1 / (1 - rate); outside training the layer is a plain lookup."""
    import keras
    from charlstm.training.config import ModelConfig
    from charlstm.training.model import build_model
    keras.utils.set_random_seed(5)
    model = build_model(ModelConfig(vocab_size=12, embedding_dim=4, units=8, embedding_dropout=0.5))
    layer = model.get_layer("embedding")
    ids = np.tile(np.arange(12, dtype="int32"), (3, 4))  # every character, 4 times in each of 3 rows
    table = keras.ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(ids)), table[ids])
    ratio = keras.ops.convert_to_numpy(layer(ids, training=True)) / table[ids]
    per_char = ratio[..., 0].reshape(3, 4, 12)
    assert np.all(per_char == per_char[0, 0])  # one mask for the whole batch, over characters
    np.testing.assert_allclose(ratio, per_char[0, 0][ids][..., None].repeat(4, axis=-1))
    assert set(np.unique(per_char)) == {0.0, 2.0}


def test_embedding_and_input_dropout_train_resume_exactly_and_export_the_same_contract(tmp_path, corpus_path):
    """--embedding-dropout and --input-dropout: they change training, a resumed run equals a straight one, and
    the export's graph and parity check are those of any run."""
    pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")
    options = {"epochs": 2, "embedding_dropout": 0.2, "input_dropout": 0.3}
    library_train(corpus_path, tmp_path / "plain", {"epochs": 1})
    library_train(corpus_path, tmp_path / "straight", options)
    library_train(corpus_path, tmp_path / "run", {**options, "epochs": 1})
    library_train(corpus_path, tmp_path / "run", options)
    same_run(tmp_path / "straight", tmp_path / "run", 2)
    plain, dropped = run.read_history(tmp_path / "plain" / "history.csv"), run.read_history(tmp_path / "run" / "history.csv")
    assert plain[0]["train_loss"] != pytest.approx(dropped[0]["train_loss"], abs=1e-4)  # the masks did something
    config = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (config["embedding_dropout"], config["input_dropout"]) == (0.2, 0.3)
    from tests.conftest import _export
    _export(tmp_path / "run", tmp_path / "model")  # traced and checked against Keras as `charlstm export` does
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert manifest["inputs"] == {"token": "token", "h": "h", "c": "c"} and manifest["export"]["parity"]["greedy_match"]
