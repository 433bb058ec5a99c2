"""The runtime library on a tiny real ONNX model (tests/onnx_fixture.py): real ONNX Runtime, no TensorFlow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from charlstm import runtime
from charlstm.runtime import Generator, InputError, ModelError, evaluate_text, load_manifest
from charlstm.runtime.manifest import default_model_dir
from charlstm.runtime.sampling import log_softmax
from charlstm.runtime.stepper import BoundStepper, Stepper
from tests.onnx_fixture import make_model_dir, numpy_step


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "fixture", layers=2, units=16, int8=True)


@pytest.fixture(scope="module")
def gen(model_dir):
    return Generator(model_dir, device="cpu", int8=False)


def test_manifest_is_read_and_checked(model_dir):
    m = load_manifest(model_dir)
    assert (m.layers, m.units, m.vocab[0], m.stoi["a"]) == (2, 16, "\n", m.vocab.index("a"))
    assert (m.temperature, m.length, m.val_fraction) == (0.5, 500, 0.1)
    assert m.verify(m.onnx_path()) == m.files["model.onnx"]["sha256"]


def test_a_step_matches_the_numpy_lstm(gen, model_dir):
    stepper = Stepper(gen.session, gen.manifest)
    stepper.reset(3)
    tokens = np.array([3, 10, 40])
    h, c = np.zeros((2, 3, 16), np.float32), np.zeros((2, 3, 16), np.float32)
    for _ in range(3):  # a few steps, so the state is not zero
        logits = stepper.step(tokens)
        ref_logits, h, c = numpy_step(model_dir, tokens, h, c)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(stepper.h, h, atol=1e-5)


def test_batch_rows_equal_single_row_runs(gen):
    text = gen.encode("ROMEO: hello")
    rows = np.stack([text, text[::-1], np.roll(text, 3)], axis=1)  # [steps, batch 3]
    batch = Stepper(gen.session, gen.manifest)
    batch.reset(3)
    batched = [batch.step(ids) for ids in rows][-1]
    for r in range(3):
        single = Stepper(gen.session, gen.manifest)
        single.reset(1)
        alone = [single.step(ids[r:r + 1]) for ids in rows][-1]
        np.testing.assert_allclose(batched[r], alone[0], atol=1e-5)


def test_io_binding_ping_pong_equals_plain_run(gen):
    """The CUDA path's binding logic, run on CPU OrtValues: state set k is read, set 1-k written, alternately."""
    plain, bound = Stepper(gen.session, gen.manifest), BoundStepper(gen.session, gen.manifest, device="cpu")
    plain.reset(2)
    bound.reset(2)
    for ids in gen.encode("To be, or not"):
        pair = np.array([ids, (ids + 7) % 65])
        np.testing.assert_allclose(bound.step(pair), plain.step(pair), atol=1e-6)


def test_a_seed_gives_the_same_text(gen):
    a = gen.generate("ROMEO:", length=60, temperature=1.0, seed=3)
    assert a == gen.generate("ROMEO:", length=60, temperature=1.0, seed=3)
    assert a != gen.generate("ROMEO:", length=60, temperature=1.0, seed=4)
    assert len(a) == 60 and set(a) <= set(gen.manifest.vocab)


def test_greedy_follows_the_numpy_reference(gen, model_dir):
    text = gen.generate("KING", length=20, temperature=0)
    h = c = np.zeros((2, 1, 16), np.float32)
    for ch in "KING":
        logits, h, c = numpy_step(model_dir, np.array([gen.stoi[ch]]), h, c)
    expected = ""
    for _ in range(20):
        i = int(np.argmax(logits[0]))
        expected += gen.itos[i]
        logits, h, c = numpy_step(model_dir, np.array([i]), h, c)
    assert text == expected


def test_a_batch_of_samples_streams_rows_independently(gen):
    samples = gen.generate_batch("ROMEO:", length=50, temperature=1.0, seed=5, num_samples=3)
    assert len(samples) == 3 and all(len(s) == 50 for s in samples) and len(set(samples)) == 3
    assert samples[0] == gen.generate("ROMEO:", length=50, temperature=1.0, seed=5)  # row 0 = the single run
    chunks = list(gen.stream_batch("ROMEO:", length=5, seed=5, num_samples=3))
    assert len(chunks) == 5 and all(len(c) == 3 for c in chunks)
    with pytest.raises(InputError, match="num_samples 3: .*generate_batch"):
        gen.generate("ROMEO:", num_samples=3)


def test_each_method_has_one_return_type(gen):
    assert isinstance(gen.generate("A", length=3, seed=1), str)
    assert all(isinstance(piece, str) for piece in gen.stream("A", length=3, seed=1))
    assert gen.generate_batch("A", length=0, num_samples=2) == ["", ""]
    assert isinstance(gen.generate_batch("A", length=3, seed=1), list)
    assert all(isinstance(p, list) for p in gen.stream_batch("A", length=3, seed=1))


def test_params_objects_and_keyword_shortcuts_agree(gen):
    from charlstm.runtime import SamplingParams, SearchParams
    by_object = gen.generate("AB", SamplingParams(temperature=0.9, top_k=5), SearchParams(length=30, seed=2))
    assert by_object == gen.generate("AB", temperature=0.9, top_k=5, length=30, seed=2)
    with pytest.raises(TypeError, match="not both"):
        gen.generate("AB", SamplingParams(temperature=0.9), temperature=0.5)


def test_stop_truncates_and_keeps_the_stop_string(gen):
    full = gen.generate("", length=300, temperature=1.0, seed=11)
    stop = full[40:42]  # a string that occurs: the sample must end at its first occurrence
    first = full.index(stop)
    stopped = gen.generate("", length=300, temperature=1.0, seed=11, stop=stop)
    assert stopped == full[:first + len(stop)]
    batch = gen.generate_batch("", length=300, temperature=1.0, seed=11, stop=stop, num_samples=2)
    assert batch[0] == stopped and (batch[1].endswith(stop) or len(batch[1]) == 300)


def test_length_is_respected_and_defaults_to_the_manifest(gen):
    assert gen.generate("A", length=0) == ""
    assert len(gen.generate("A", length=1, seed=1)) == 1
    assert len(gen.generate("A", seed=1)) == 500
    assert len(list(gen.stream("A", length=17, seed=1))) == 17


def test_empty_prompt_starts_after_a_newline(gen):
    assert gen.generate("", length=30, seed=2, temperature=1.0) == gen.generate("\n", length=30, seed=2,
                                                                                temperature=1.0)


def test_unknown_characters_error_or_skip(gen):
    with pytest.raises(InputError, match="'é'.*pass `unknown=skip` to drop them"):
        gen.generate("ROMéO", length=5)
    assert gen.generate("ROMéO", length=20, seed=1, unknown="skip") == gen.generate("ROMO", length=20, seed=1)


def test_arguments_are_checked_before_streaming(gen):
    for kwargs in ({"length": -1}, {"length": 10_000_001}, {"num_samples": 0}, {"stop": ""}, {"top_p": 2.0},
                   {"temperature": 1e39}, {"seed": -5}):
        with pytest.raises(InputError) as e:
            gen.stream("A", **kwargs)  # raises at the call, not at the first next()
        assert e.value.param == next(iter(kwargs)) and str(e.value).startswith(next(iter(kwargs)))


def test_evaluate_text_matches_a_numpy_cross_entropy(model_dir, gen):
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    calls = []
    result = evaluate_text(model_dir, text, device="cpu", progress=lambda done, total: calls.append((done, total)))
    ids = [gen.stoi[ch] for ch in text]
    h = c = np.zeros((2, 1, 16), np.float32)
    nll = 0.0
    for t in range(len(ids) - 1):
        logits, h, c = numpy_step(model_dir, np.array([ids[t]]), h, c)
        nll -= log_softmax(logits)[0, ids[t + 1]]
    assert result["characters"] == len(text) - 1
    assert result["nats_per_char"] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert calls[-1] == (len(text) - 1, len(text) - 1)
    assert result["model_sha256"] == gen.sha256
    with pytest.raises(InputError, match="at least 2"):
        evaluate_text(model_dir, "A", device="cpu")


def test_int8_is_the_cpu_default_when_the_folder_has_it(model_dir, tmp_path):
    import shutil
    assert Generator(model_dir, device="cpu").path.name == "model.int8.onnx"
    assert Generator(model_dir, device="cpu", int8=False).path.name == "model.onnx"
    plain = tmp_path / "no-int8"
    shutil.copytree(model_dir, plain)
    (plain / "model.int8.onnx").unlink()
    assert Generator(plain, device="cpu").path.name == "model.onnx"  # nothing to choose
    with pytest.raises(ModelError, match="exported without an int8 file"):
        Generator(plain, device="cpu", int8=True)


def test_int8_runs_on_the_cpu(model_dir, gen):
    int8 = Generator(model_dir, device="auto", int8=True)
    assert int8.device == "cpu" and int8.path.name == "model.int8.onnx"
    assert len(int8.generate("ROMEO:", length=40, seed=1)) == 40
    with pytest.raises(InputError, match="int8 runs on the CPU only"):
        Generator(model_dir, device="cuda", int8=True)
    result = evaluate_text(model_dir, "To be, or not to be", int8=True)
    assert result["model_file"] == "model.int8.onnx" and math.isfinite(result["nats_per_char"])


def test_default_model_comes_from_the_environment(model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CHARLSTM_MODEL", str(model_dir))
    assert default_model_dir() == model_dir
    assert Generator(device="cpu", int8=False).sha256 == load_manifest(model_dir).files["model.onnx"]["sha256"]
    monkeypatch.delenv("CHARLSTM_MODEL")
    monkeypatch.chdir(tmp_path)  # the packaged default does not depend on the current folder
    assert (default_model_dir() / "model.json").is_file() and default_model_dir().name == "shakespeare"


def test_a_manifest_that_disagrees_with_the_graph_is_a_model_error(tmp_path):
    folder = make_model_dir(tmp_path / "m", vocab=list("abcdef"), units=8)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["vocab"] = list("abcdefg")
    manifest["model"]["vocab_size"] = 7
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="logits of width 6.*7 vocab characters"):
        Generator(folder, device="cpu")


def test_workers_spin_only_when_nothing_else_runs():
    from charlstm.runtime.spinning import decide
    assert decide(0, cores=2, others=0.2)[0]  # 0 threads = one per core
    assert not decide(0, cores=2, others=1.0)[0]  # a busy process on one of two cores
    assert decide(8, cores=16, others=7.9)[0] and not decide(8, cores=16, others=8.0)[0]
    assert not decide(1, cores=16, others=0.0)[0]  # one thread has no workers to keep awake
    assert not decide(4, cores=2, others=0.0)[0]  # more threads than cores
    spin, why = decide(0, cores=4, others=None)
    assert spin and "default" in why


def test_the_spinning_signal_sees_a_busy_process_but_not_an_exited_one(tmp_path):
    """The count of runnable threads reflects the moment: a process spinning a core now counts, one that ran a
    moment ago does not (the 1-minute load average remembered it)."""
    import subprocess
    import sys

    from charlstm.runtime.spinning import runnable_elsewhere
    import time
    if runnable_elsewhere(samples=1) is None:
        pytest.skip("no /proc/loadavg on this system")

    def measure() -> tuple[float, float, float]:
        before = runnable_elsewhere(samples=20)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.3)
            during = runnable_elsewhere(samples=20)
        finally:
            busy.kill()
            busy.wait()
        time.sleep(0.2)
        return before, during, runnable_elsewhere(samples=20)

    # other work on the machine (a CI neighbour, a training run) moves the count too: one clean try of five
    def clean(before: float, during: float, after: float) -> bool:
        return during >= before + 0.5 and after <= during - 0.5

    tries = [measure()]
    while not clean(*tries[-1]) and len(tries) < 5:
        tries.append(measure())
    assert clean(*tries[-1]), tries


def test_spinning_or_not_the_text_is_the_same(model_dir, gen):
    from charlstm.runtime.session import SessionConfig
    texts = {Generator(model_dir, device="cpu", int8=False, threads=2, spinning=s).generate("AB", length=40, seed=7)
             for s in (True, False)}
    assert texts == {gen.generate("AB", length=40, seed=7)}
    assert "spinning CPU workers (as asked)" == Generator(model_dir, device="cpu", spinning=True).spinning_note
    with pytest.raises(InputError, match="spinning 'yes'"):
        SessionConfig(spinning="yes")


def test_the_step_loop_draws_what_one_pick_a_step_would_draw(gen):
    """The loop's noise comes NOISE_BLOCK steps at a time; picked one step at a time with the same generators,
    the text is the same, across block boundaries."""
    from charlstm.runtime.sampling import NOISE_BLOCK, Sampler, SamplingParams, gumbel_max, gumbel_uniforms, row_generators
    length, rows = 2 * NOISE_BLOCK + 5, 2
    texts = gen.generate_batch("AB", length=length, temperature=0.8, seed=11, num_samples=rows)
    rngs = row_generators(11, rows)
    logits, picks = gen.prime(gen.encode("AB"), rows), []
    for _ in range(length):
        picked = gumbel_max(logits, 0.8, gumbel_uniforms(rngs, logits.shape[-1]))
        picks.append(picked)
        logits = gen.stepper.step(picked)
    assert texts == ["".join(gen.itos[int(p[row])] for p in picks) for row in range(rows)]
    sampler = Sampler(SamplingParams(temperature=0.8), row_generators(11, rows), len(gen.itos), block=3)
    again = [sampler.noise(2) for _ in range(4)]  # blocks of 3 handed out 2 at a time
    whole = Sampler(SamplingParams(temperature=0.8), row_generators(11, rows), len(gen.itos)).noise(8)
    np.testing.assert_array_equal(np.concatenate(again), whole)
