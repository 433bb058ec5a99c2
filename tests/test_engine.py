"""The continuous-batching engine on a tiny real model: rows join and leave mid-batch, each with its own settings,
and a seeded stream writes what the Generator writes alone."""

from __future__ import annotations

import pytest

from charlstm.runtime import Generator, InputError, SamplingParams
from charlstm.runtime.engine import Engine, EngineClosed, EngineFull, StopMatcher, buckets
from tests.onnx_fixture import make_model_dir

PLAIN, HOT, GREEDY = SamplingParams(temperature=0.7), SamplingParams(temperature=1.3), SamplingParams(temperature=0)
TOP = SamplingParams(temperature=1.0, top_k=4, top_p=0.9)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("engine") / "m", layers=2, units=16)


@pytest.fixture(scope="module")
def alone(model_dir):
    return Generator(model_dir, device="cpu")


@pytest.fixture
def engine(model_dir):
    e = Engine(Generator(model_dir, device="cpu"), max_streams=8, max_queued=64)
    yield e
    e.close()


def test_streams_of_every_kind_equal_the_generator_alone(engine, alone):
    """12 streams on 8 rows: some wait in the queue, all join and leave at different steps."""
    requests = [("ROMEO:", PLAIN, 30, 1), ("", HOT, 45, 2), ("KING", GREEDY, 12, None), ("A", TOP, 60, 4),
                ("To be", PLAIN, 1, 5), ("QUEEN:\n", TOP, 25, 6), ("B", HOT, 70, 7), ("ROMEO:", PLAIN, 30, 1),
                ("x", PLAIN, 33, 9), ("Lo", GREEDY, 40, None), ("What", HOT, 5, 11), ("C", TOP, 50, 12)]
    streams = [engine.submit(p, sp, n, seed)[0] for p, sp, n, seed in requests]
    for (prompt, sampling, length, seed), stream in zip(requests, streams):
        assert stream.result(timeout=120) == alone.generate(prompt, sampling, length=length, seed=seed)
        assert stream.finish_reason == "length" and stream.made == length
    assert streams[0].take()[0] == "" and engine.active == 0 and engine.queued == 0


def test_choices_are_the_rows_of_a_batch(engine, alone):
    streams = engine.submit("KING:", HOT, 40, seed=3, choices=3)
    assert [s.result(60) for s in streams] == alone.generate_batch("KING:", HOT, length=40, seed=3, num_samples=3)


def test_stop_sequences_end_a_stream_and_are_not_returned(engine, alone):
    full = alone.generate("", HOT, length=200, seed=21)
    stop = full[50:53]
    (stream,) = engine.submit("", HOT, 200, seed=21, stop=[stop, "never-there"])
    assert stream.result(60) == full[:full.index(stop)] and stream.finish_reason == "stop"


def test_stop_matcher_holds_back_what_may_start_a_stop():
    m = StopMatcher(("abc", "xy"))
    assert m.feed("hello a") == ("hello ", False)  # 'a' may start 'abc'
    assert m.feed("b") == ("", False)
    assert m.feed("d") == ("abd", False)
    assert m.feed("zx") == ("z", False)
    assert m.feed("y!") == ("", True)
    assert StopMatcher(()).feed("anything") == ("anything", False)


def test_a_cancelled_stream_frees_its_row_within_a_step(engine):
    (long,) = engine.submit("A", PLAIN, 1_000_000, seed=1)
    (short,) = engine.submit("B", PLAIN, 30, seed=2)
    assert short.result(60)
    long.cancel()
    assert long.wait(timeout=120) and long.finish_reason == "cancelled"
    assert 0 < long.made < 1_000_000 and engine.active == 0


def test_the_queue_is_bounded_and_closing_refuses_new_work(model_dir):
    engine = Engine(Generator(model_dir, device="cpu"), max_streams=2, max_queued=1)
    try:
        running = engine.submit("A", PLAIN, 1_000_000, seed=1, choices=2)
        waiting = engine.submit("B", PLAIN, 10)
        with pytest.raises(EngineFull, match="retry"):
            engine.submit("C", PLAIN, 10)
        with pytest.raises(InputError, match="prompt has 1 character"):
            engine.submit("é", PLAIN, 10)
    finally:
        engine.close(grace=0.2)
    assert all(s.finish_reason == "cancelled" for s in running + waiting)
    with pytest.raises(EngineClosed):
        engine.submit("A", PLAIN, 10)


def test_the_burst_graph_serves_plain_streams_with_the_same_text(model_dir, alone):
    engine = Engine(Generator(model_dir, device="cpu", burst=True), max_streams=4)
    try:
        streams = [s for seed in range(4) for s in engine.submit("ROMEO:", PLAIN, 50 + 9 * seed, seed)]
        texts = [s.result(60) for s in streams]
        assert engine.steps < sum(len(t) for t in texts) // 4  # most characters came 16 at a time
    finally:
        engine.close()
    assert texts == [alone.generate("ROMEO:", PLAIN, length=50 + 9 * seed, seed=seed) for seed in range(4)]


def test_buckets():
    assert buckets(64) == [1, 2, 4, 8, 16, 32, 64] and buckets(5) == [1, 2, 4, 5] and buckets(1) == [1]
