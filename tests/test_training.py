"""charlstm train: the run folder, resume (clean and after SIGKILL), corpus errors, the mirrored strategy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, TINY, TINY_TRAIN, _train, run_cli

pytest.importorskip("keras", reason="the `train` extra is not installed")

from charlstm.runtime.files import sha256_file  # noqa: E402
from charlstm.runtime.text import read_text  # noqa: E402
from charlstm.training import run  # noqa: E402
from charlstm.training.config import ConfigError  # noqa: E402


def test_run_folder_describes_itself(tiny_run, corpus_path):
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["format"] == "charlstm-run" and cfg["model"]["units"] == 32
    assert cfg["corpus"]["sha256"] == sha256_file(corpus_path) and cfg["corpus"]["name"] == "tiny.txt"
    assert not Path(cfg["corpus"]["path"]).is_absolute()  # relative to the run folder: no machine's paths
    assert (tiny_run / cfg["corpus"]["path"]).resolve() == corpus_path.resolve()
    assert cfg["versions"]["keras"] and cfg["versions"]["tensorflow"]
    vocab = json.loads((tiny_run / "vocab.json").read_text())
    assert vocab == sorted(set(corpus_path.read_text()))
    for epoch in (1, 2, 3):
        assert run.epoch_checkpoint(tiny_run, epoch).is_file()
    assert run.best_checkpoint(tiny_run).is_file()
    # a resume point at each epoch's end (the batches are fewer than --save-every): the two newest are kept
    assert sorted(p.name for p in (tiny_run / "resume").iterdir()) == ["000002.json", "000002.npz", "000003.json",
                                                                       "000003.npz"]
    assert (tiny_run / ".lock").is_file()
    assert list((tiny_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not list(tiny_run.rglob(".tmp-*"))


def test_validation_loss_falls(tiny_run):
    history = run.read_history(tiny_run / "history.csv")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.1
    for r in history:
        assert r["val_bits"] == pytest.approx(r["val_loss"] / np.log(2))


def test_stateful_two_layer_run(tiny_run2):
    cfg = json.loads((tiny_run2 / "config.json").read_text())
    assert cfg["train"]["stateful"] and cfg["model"]["layers"] == 2
    history = run.read_history(tiny_run2 / "history.csv")
    assert len(history) == 2 and all(np.isfinite(r["val_loss"]) for r in history)


def test_resume_equals_uninterrupted(tmp_path, corpus_path):
    options = dict(units=16, layers=2, dropout=0.2, stateful=True, epochs=4)
    full = run.read_history(_train(tmp_path / "full", corpus_path, **options) / "history.csv")
    _train(tmp_path / "part", corpus_path, **{**options, "epochs": 2})
    from charlstm.training.train import train
    train(None, tmp_path / "part", resume=True, epochs=4, verbose=0, log=lambda m: None)
    part = run.read_history(tmp_path / "part" / "history.csv")
    assert [r["epoch"] for r in part] == [1, 2, 3, 4]
    for a, b in zip(full, part):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)


def test_read_text_normalises(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffa\r\nb\r\n".encode("utf-8"))
    assert read_text(p) == "a\nb\n"
    assert read_text(p, keep_newlines=True) == "a\r\nb\r\n"


@pytest.mark.parametrize("content, message", [
    (None, "text file not found"),
    (b"", "is empty"),
    (b"abc\xff\xfedef", "byte offset 3"),
    (b"short text", "too few for one batch"),
])
def test_bad_corpus_one_line_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    result = run_cli("train", "--text", str(path), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert [l for l in result.stderr.splitlines() if l.startswith("error:")] == \
        [l for l in result.stderr.splitlines() if message in l]


@pytest.mark.parametrize("key, value, message", [
    ("units", 0, "units must be an integer from 1 to 65,536, got 0"),
    ("dropout", 1.0, "dropout must be in [0, 1), e.g. 0.25, got 1.0"),
    ("recurrent_dropout", -0.1, "recurrent_dropout must be in [0, 1), e.g. 0.25, got -0.1"),
    ("embedding_dropout", 1.0, "embedding_dropout must be in [0, 1), e.g. 0.25, got 1.0"),
    ("input_dropout", -0.5, "input_dropout must be in [0, 1), e.g. 0.25, got -0.5"),
    ("learning_rate", -1.0, "learning_rate must be a positive number up to 1, e.g. 2e-3, got -1.0"),
    ("learning_rate", float("inf"), "learning_rate must be a positive number up to 1, e.g. 2e-3, got inf"),
    ("learning_rate", 1e300, "learning_rate must be a positive number up to 1, e.g. 2e-3, got 1e+300"),
    ("val_fraction", 1.5, "val_fraction must be in (0, 1), e.g. 0.1, got 1.5"),
    ("batch_size", 0, "batch_size must be an integer from 1 to 1,048,576, got 0"),
    ("seed", -5, "seed must be an integer from 0 to 4,294,967,295, got -5"),
    ("seed", 2**32, "seed must be an integer from 0 to 4,294,967,295, got 4294967296"),
])
def test_bad_option_values(tmp_path, corpus_path, key, value, message):
    from charlstm.training.config import TrainConfig, split_options
    from charlstm.training.train import train
    model_options, train_options = split_options({**TINY, **TINY_TRAIN, key: value})
    with pytest.raises(ConfigError) as e:
        train(corpus_path, tmp_path / "run", model_options, TrainConfig(**train_options), verbose=0)
    assert str(e.value) == message and e.value.param == key


def test_the_same_command_on_a_finished_run_does_nothing(tiny_run, corpus_path):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file() and p.name != ".lock"}
    result = run_cli("train", "--text", str(corpus_path), "--out", str(tiny_run))
    assert result.returncode == 0 and "already has 3 epochs" in result.stderr and "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_train_without_tensorflow_names_the_extra(tmp_path, corpus_path):
    (tmp_path / "x.txt").write_text(corpus_path.read_text(encoding="utf-8"), encoding="utf-8")
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None  # as if the `train` extra were not installed
        sys.argv = ["charlstm", "train", "--text", "x.txt", "--out", "r", "--batch-size", "2", "--seq-length", "20"]
        from charlstm.cli import main
        main()
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "pip install 'charlstm[train]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, corpus_path):
    code = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from charlstm.training.config import TrainConfig
        from charlstm.training.train import train
        s = train({str(corpus_path)!r}, {str(tmp_path / "run")!r},
                  dict(embedding_dim=8, units=16, layers=1, dropout=0.0, recurrent_dropout=0.0),
                  TrainConfig(epochs=2, batch_size=8, seq_length=32, sample_every=0, strategy="mirrored",
                              stateful=False),
                  verbose=0)
        print("best", s["best_val_loss"])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=SLOW_MACHINE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["replicas"] == 2 and cfg["train"]["strategy"] == "mirrored"
    assert len(run.read_history(tmp_path / "run" / "history.csv")) == 2


CARRY_PROBE = textwrap.dedent("""
    import json, numpy as np, keras
    from charlstm.training.config import ModelConfig
    from charlstm.training.model import build_model, reset_states
    model = build_model(ModelConfig(vocab_size=10, embedding_dim=8, units=16, layers=2, dropout=0.1,
                                    recurrent_dropout=0.1), 4, True)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).integers(0, 10, (4, 20)).astype("int32")
    model.fit(x, x, batch_size=4, epochs=1, verbose=0, shuffle=False)
    after_fit = float(sum(np.abs(keras.ops.convert_to_numpy(s)).sum() for s in model.get_layer("lstm_0").states))
    reset_states(model)
    first, second = (model.predict(x, batch_size=4, verbose=0) for _ in range(2))
    print(json.dumps({"after_fit": after_fit, "predict_change": float(np.abs(first - second).max())}))
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_stateful_lstm_carries_state_on_every_backend(backend):
    """Keras 3.15's own stateful LSTM drops its state under JAX's stateless fit; training.model.LSTM does not."""
    pytest.importorskip(backend, reason=f"{backend} is not installed")
    result = subprocess.run([sys.executable, "-c", CARRY_PROBE], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "KERAS_BACKEND": backend}, timeout=SLOW_MACHINE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["after_fit"] > 0.01  # the last batch's state is kept for the next one
    assert probe["predict_change"] > 1e-6  # the second pass starts from the first one's state, not from zeros


def test_seed_preset_is_the_notebooks_recipe():
    from charlstm.training.config import PRESETS, ModelConfig, TrainConfig, split_options
    model_options, train_options = split_options(PRESETS["seed"])
    mc, tc = ModelConfig(vocab_size=92, **model_options), TrainConfig(**train_options)
    assert (mc.embedding_dim, mc.units, mc.layers, mc.dropout) == (256, 1024, 1, 0.0)
    assert (tc.epochs, tc.batch_size, tc.seq_length, tc.learning_rate, tc.clip_norm, tc.stateful) == \
        (50, 64, 100, 1e-3, 0.0, False)
