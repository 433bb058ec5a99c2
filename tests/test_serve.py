"""`charlstm serve` through a real server process on a free loopback port: OpenAI's API (with the official
client), streaming, concurrency, every error status, a client that goes away, and SIGTERM's drain."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from charlstm.runtime import Generator, SamplingParams
from tests.onnx_fixture import make_model_dir
from tests.server import Server, wait_for

pytest.importorskip("starlette", reason="the `serve` extra is not installed (pip install 'charlstm[serve]')")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve") / "tiny", layers=2, units=16)


@pytest.fixture(scope="module")
def alone(model_dir):
    return Generator(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server("--model", model_dir, "--max-streams", "8", "--max-tokens", "1000000", "--device", "cpu")
    yield s
    s.stop()


def sse(server: Server, body: dict, stop_after: int | None = None):
    """POST a streaming request; returns (status, [parsed events], raw lines). stop_after: close the connection
    after that many events (a client that goes away)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    events = []
    if r.status != 200:
        return r.status, json.loads(r.read()), []
    for line in r:
        line = line.decode().strip()
        if line.startswith("data: "):
            events.append(line[6:])
            if stop_after is not None and len(events) >= stop_after:
                conn.close()
                break
    return r.status, events, r


def test_a_completion_has_openais_shape_and_generates_texts_text(server, alone):
    status, body = server.request("POST", "/v1/completions", {"model": "fixture", "prompt": "ROMEO:",
                                                              "max_tokens": 40, "seed": 1, "temperature": 0.7})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == "fixture" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["text"] == alone.generate("ROMEO:", SamplingParams(temperature=0.7), length=40, seed=1)
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 40, "total_tokens": 46}


def test_defaults_are_the_models_and_n_is_the_batch_rows(server, alone):
    status, body = server.request("POST", "/v1/completions", {"prompt": "KING", "max_tokens": 25, "seed": 4, "n": 3})
    assert status == 200
    want = alone.generate_batch("KING", length=25, seed=4, num_samples=3)  # temperature: model.json's 0.5
    assert [c["text"] for c in body["choices"]] == want
    status, body = server.request("POST", "/v1/completions", {"prompt": ["A", "B"], "max_tokens": 5, "seed": 1})
    assert [c["index"] for c in body["choices"]] == [0, 1]


def test_streaming_sends_text_then_usage_then_done(server, alone):
    status, events, _ = sse(server, {"prompt": "QUEEN:", "max_tokens": 60, "seed": 2, "top_k": 5,
                                     "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == alone.generate("QUEEN:", SamplingParams(top_k=5), length=60, seed=2)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 60 and chunks[-1]["choices"] == []


def test_stop_sequences_like_openai(server, alone):
    full = alone.generate("", length=300, seed=9, temperature=1.2)
    stop = full[100:103]
    status, body = server.request("POST", "/v1/completions", {"prompt": "", "max_tokens": 300, "seed": 9,
                                                              "temperature": 1.2, "stop": stop})
    assert body["choices"][0]["text"] == full[:full.index(stop)] and body["choices"][0]["finish_reason"] == "stop"


def test_the_official_openai_client(server, alone):
    openai = pytest.importorskip("openai", reason="the openai package is not installed")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["fixture"]
    plain = client.completions.create(model="fixture", prompt="ROMEO:", max_tokens=30, seed=5, temperature=0.9)
    want = alone.generate("ROMEO:", SamplingParams(temperature=0.9), length=30, seed=5)
    assert plain.choices[0].text == want and plain.usage.completion_tokens == 30
    streamed = client.completions.create(model="fixture", prompt="ROMEO:", max_tokens=30, seed=5, temperature=0.9,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="fixture", prompt="A", temperature=500)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="A")


def test_32_concurrent_seeded_requests_each_write_their_alone_text(server, alone):
    prompts = ["ROMEO:", "", "KING", "First", "Q"]

    def one(i: int):
        body = {"prompt": prompts[i % 5], "max_tokens": 20 + 3 * i, "seed": i, "temperature": 0.4 + 0.05 * i}
        if i % 3 == 0:
            return sse(server, body)[1]
        return server.request("POST", "/v1/completions", body)[1]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for i, result in enumerate(results):
        if i % 3 == 0:
            text = "".join(json.loads(e)["choices"][0]["text"] for e in result[:-1] if json.loads(e)["choices"])
        else:
            text = result["choices"][0]["text"]
        assert text == alone.generate(prompts[i % 5], SamplingParams(temperature=0.4 + 0.05 * i), length=20 + 3 * i,
                                      seed=i), i


@pytest.mark.parametrize("body, status, param, words", [
    (b"{not json", 422, None, "not JSON"),
    (b"[1, 2]", 422, None, "JSON list"),
    ({"prompt": 5}, 422, "prompt", "a string"),
    ({"prompt": "A", "temperature": "hot"}, 422, "temperature", "a number"),
    ({"prompt": "A", "temperature": -1}, 400, "temperature", "out of range"),
    ({"prompt": "A", "top_p": 0}, 400, "top_p", "out of range"),
    ({"prompt": "A", "max_tokens": 2_000_000}, 400, "max_tokens", "out of range"),
    ({"prompt": "A", "n": 99}, 400, "n", "out of range"),
    ({"prompt": "A", "seed": -3}, 400, "seed", "out of range"),
    ({"prompt": "héllo ~ü"}, 400, "prompt", "'~', 'é', 'ü'"),
    ({"prompt": "A", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "up to 4"),
    ({"prompt": "A", "temprature": 1}, 400, "temprature", "unknown parameter"),
    ({"prompt": "A", "model": "nope"}, 404, "model", "not served here"),
    ({"prompt": "A" * 10_001}, 413, "prompt", "10,001 characters"),
    (b"x" * ((1 << 20) + 1), 413, None, "bytes"),
    (b"x" * (12 << 20), 413, None, "bytes"),  # more than the sockets hold: answered unread, it was reset
])
def test_bad_requests_get_one_json_error_with_the_right_status(server, body, status, param, words):
    got, error = server.request("POST", "/v1/completions", body)
    assert got == status and set(error) == {"error"}, error
    e = error["error"]
    assert e["param"] == param and words in e["message"] and "\n" not in e["message"] and e["type"] and e["code"]


def test_unknown_paths_and_methods_are_json_errors(server):
    assert server.request("GET", "/v2/anything")[0] == 404
    status, body = server.request("GET", "/v1/completions")
    assert status == 405 and "GET is not allowed" in body["error"]["message"]


def test_health_and_metrics(server):
    assert server.request("GET", "/healthz") == (200, {"status": "ok", "models": ["fixture"]})
    server.request("POST", "/v1/completions", {"prompt": "A", "max_tokens": 7})
    for name in ("charlstm_active_streams", "charlstm_queued_streams", "charlstm_characters_total",
                 "charlstm_step_seconds_count", "charlstm_time_to_first_character_seconds_count"):
        assert name in server.request("GET", "/metrics")[1]
    assert server.metric("charlstm_characters_total") >= 7 and server.metric("charlstm_step_seconds_count") >= 7


def test_a_client_that_goes_away_frees_its_row(server):
    status, events, _ = sse(server, {"prompt": "A", "max_tokens": 1_000_000, "seed": 1}, stop_after=3)
    assert status == 200 and len(events) == 3
    assert wait_for(lambda: server.metric("charlstm_active_streams") == 0)
    ok, body = server.request("POST", "/v1/completions", {"prompt": "A", "max_tokens": 3})  # others unharmed
    assert ok == 200 and len(body["choices"][0]["text"]) == 3


def test_api_key_and_a_full_queue(model_dir):
    s = Server("--model", model_dir, "--max-streams", "1", "--max-queued", "0", "--max-tokens", "1000000",
               "--grace", "1", env={"CHARLSTM_API_KEY": "sesame"})
    try:
        assert s.request("GET", "/v1/models")[0] == 401
        status, body = s.request("POST", "/v1/completions", {"prompt": "A"}, {"Authorization": "Bearer nope"})
        assert status == 401 and body["error"]["type"] == "authentication_error"
        key = {"Authorization": "Bearer sesame"}
        assert s.request("GET", "/v1/models", headers=key)[0] == 200
        def hold():
            try:
                s.request("POST", "/v1/completions", {"prompt": "A", "max_tokens": 1_000_000}, key)
            except OSError:  # cut when the grace period ends
                pass

        holder = threading.Thread(target=hold)
        holder.start()
        assert wait_for(lambda: s.metric("charlstm_active_streams") == 1)
        status, body = s.request("POST", "/v1/completions", {"prompt": "B", "max_tokens": 5}, key)
        assert status == 429 and "busy" in body["error"]["message"]
    finally:
        started = time.monotonic()
        assert s.stop(timeout=300) == 0  # SIGTERM: the held stream is cut when the 1 s grace period ends
        assert time.monotonic() - started < 120  # not the hour its 1,000,000 characters would take
        holder.join(timeout=60)


def test_sigterm_lets_streams_finish_refuses_new_ones_and_exits_0(model_dir):
    s = Server("--model", model_dir, "--max-tokens", "1000000", "--grace", "60")
    result = {}

    def stream():
        result["sse"] = sse(s, {"prompt": "A", "max_tokens": 60_000, "seed": 3})

    reader = threading.Thread(target=stream)
    reader.start()
    assert wait_for(lambda: s.metric("charlstm_active_streams") == 1)
    s.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            http.client.HTTPConnection("127.0.0.1", s.port, timeout=5).request("GET", "/healthz")
        except OSError:
            return True
        return False

    assert wait_for(refused), "still accepting connections after SIGTERM"  # while the stream goes on
    reader.join(timeout=300)
    status, events, _ = result["sse"]
    assert status == 200 and events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert len(text) == 60_000
    assert s.proc.wait(timeout=60) == 0
