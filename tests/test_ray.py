"""`charlstm serve --ray` through a real local Ray Serve on loopback: the same answers as plain `charlstm serve`,
the same errors, a replica killed mid-stream, and a shutdown that leaves no Ray process behind."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT, run_cli
from tests.onnx_fixture import make_model_dir
from tests.server import Server, wait_for

pytest.importorskip("starlette", reason="the `serve` extra is not installed (pip install 'charlstm[serve]')")
pytest.importorskip("ray.serve", reason="the `ray` extra is not installed (pip install 'charlstm[ray]')")
pytestmark = pytest.mark.slow

LIMITS = ("--max-streams", "8", "--max-tokens", "1000000", "--device", "cpu")
REPLICAS = 2  # on two cores: each reserves half a CPU, so both fit on this one node


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("ray") / "tiny", layers=2, units=16)


@pytest.fixture(scope="module")
def plain(model_dir):
    s = Server("--model", model_dir, *LIMITS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def on_ray(model_dir):
    """One local Ray for the module (it takes 10-20 s to start); stopped by SIGTERM, which must take every Ray
    process it started down with it."""
    s = Server("--ray", "--replicas", str(REPLICAS), "--replica-cpus", "0.5", "--model", model_dir, *LIMITS)
    s.ray_pids = set(descendants(s.proc.pid))
    yield s
    s.ray_pids |= set(descendants(s.proc.pid))
    assert s.stop(timeout=90) == 0, "".join(s.log)
    assert wait_for(lambda: not any(alive(p) for p in s.ray_pids), timeout=120), \
        f"Ray processes left running: {[p for p in s.ray_pids if alive(p)]}"


# -- processes, read from /proc: which Ray processes the server started, and which are replicas ---------------
def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    tree = {}
    for p in pids:
        try:
            tree[p] = parent(p)
        except (OSError, ValueError):
            pass
    found, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in tree.items() if pp in frontier}
        found += frontier
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def replicas(server: Server) -> dict[int, int]:
    """{pid: CPU ticks so far} of the server's Ray Serve replicas."""
    out = {}
    for p in descendants(server.proc.pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::ServeReplica"):
                    continue
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return out


# -- HTTP -----------------------------------------------------------------------------------------------------
class SSE:
    """A streaming request read on a thread: its events, whether it ended, and when."""

    def __init__(self, server: Server, body: dict):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        self.conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                          {"Content-Type": "application/json"})
        self.response = self.conn.getresponse()
        self.events: list[str] = []
        self.ended_at: float | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for line in self.response:
                line = line.decode().strip()
                if line.startswith("data: "):
                    self.events.append(line[6:])
        except (OSError, http.client.HTTPException):
            pass  # a cut connection is an end too
        self.ended_at = time.monotonic()

    def text(self) -> str:
        return "".join(json.loads(e)["choices"][0]["text"] for e in self.events
                       if e != "[DONE]" and json.loads(e)["choices"])

    def close(self):
        self.conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        self.thread.join(30)


def streamed(server: Server, body: dict) -> str:
    s = SSE(server, body)
    s.thread.join(120)
    assert s.response.status == 200 and s.events[-1] == "[DONE]", s.events[-3:]
    return s.text()


REQUESTS = [{"prompt": "KING", "max_tokens": 60, "seed": 1, "temperature": 0.8},
            {"prompt": "QUEEN:\n", "max_tokens": 80, "seed": 2, "top_k": 5},
            {"prompt": "A", "max_tokens": 50, "temperature": 0},
            {"prompt": "Thy", "max_tokens": 70, "seed": 3, "top_p": 0.9},
            {"prompt": "LORD", "max_tokens": 40, "seed": 4, "stop": ["e"]},
            {"prompt": "night and day", "max_tokens": 90, "seed": 5, "temperature": 1.2}]


def test_cluster_flags_without_ray_and_no_cluster_to_join_are_one_line():
    # first in the module: `auto` must find no Ray running, and the module's own starts with its first user
    r = run_cli("serve", "--replicas", "2")
    assert r.returncode == 2 and r.stderr.strip().endswith("add --ray, or leave them out"), r.stderr
    r = run_cli("serve", "--ray", "--ray-address", "auto", "--port", "0",
                env={"RAY_ADDRESS": ""})
    assert r.returncode == 2 and "error: cannot join the Ray cluster at 'auto'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    started = time.monotonic()  # an address nothing answers at: Ray itself would retry it for minutes
    r = run_cli("serve", "--ray", "--ray-address", "127.0.0.1:1", "--port", "0")
    assert r.returncode == 2 and "error: cannot join the Ray cluster at '127.0.0.1:1': nothing answers" in r.stderr
    assert time.monotonic() - started < 180 and "Traceback" not in r.stderr, r.stderr


def test_concurrent_seeded_streams_through_rays_proxy_match_plain_serve(on_ray, plain):
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        got = list(pool.map(lambda body: streamed(on_ray, body), REQUESTS))
    for body, text in zip(REQUESTS, got):
        status, want = plain.request("POST", "/v1/completions", body)
        assert status == 200 and text == want["choices"][0]["text"], body


def test_models_and_errors_are_plain_serves(on_ray, plain):
    status, listed = on_ray.request("GET", "/v1/models")
    assert status == 200
    assert [m["charlstm"] for m in listed["data"]] == [m["charlstm"] for m in plain.request("GET", "/v1/models")[1]["data"]]
    for method, path, body, want in [("POST", "/v1/completions", {"prompt": "A", "max_tokens": -3}, 400),
                                     ("POST", "/v1/completions", {"prompt": "A", "model": "nope"}, 404),
                                     ("POST", "/v1/completions", b"{not json", 422),
                                     ("GET", "/v1/nowhere", None, 404)]:
        status, error = on_ray.request(method, path, body)
        assert (status, error) == (want, plain.request(method, path, body)[1]) and "error" in error, path
    assert on_ray.request("GET", "/healthz") == (200, {"status": "ok", "models": ["fixture"]})


def test_a_killed_replica_cuts_its_streams_and_is_replaced(on_ray, plain):
    before = replicas(on_ray)
    assert len(before) == REPLICAS, before
    streams = [SSE(on_ray, {"prompt": "A", "max_tokens": 1_000_000, "seed": i}) for i in range(4)]
    assert wait_for(lambda: all(s.events for s in streams), timeout=60)
    # The replica that generates is the one using a CPU; killing it is a crash, not a shutdown: no drain, no goodbye.
    first = replicas(on_ray)
    time.sleep(1.0)
    used = {p: t - first.get(p, 0) for p, t in replicas(on_ray).items()}
    victim = max(used, key=used.get)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        assert wait_for(lambda: any(s.ended_at for s in streams), timeout=120), "no stream ended: a hang"
        time.sleep(1.0)  # the victim's other streams end in the same moment
        cut = [s for s in streams if s.ended_at]
        assert all(s.ended_at - killed_at < 30 and "[DONE]" not in s.events for s in cut)
    finally:
        for s in streams:
            if not s.ended_at:
                s.close()  # streams on the other replica carry on until their client goes
    # Ray starts a replacement; then requests are answered as before.
    assert wait_for(lambda: len(set(replicas(on_ray)) - set(before)) == 1 and len(replicas(on_ray)) == REPLICAS,
                    timeout=90), replicas(on_ray)
    assert wait_for(lambda: on_ray.request("POST", "/v1/completions", REQUESTS[2])[0] == 200, timeout=60)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda body: on_ray.request("POST", "/v1/completions", body), REQUESTS[:4]))
    for body, (status, answer) in zip(REQUESTS, got):
        assert status == 200 and answer["choices"] == plain.request("POST", "/v1/completions", body)[1]["choices"]


def test_the_example_config_builds_and_wrong_settings_are_one_line():
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from charlstm.errors import UserError
    from charlstm.serve import ray_app
    config = yaml.safe_load((ROOT / "deploy" / "ray-serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # Ray's own schema of `serve run` / `serve deploy` files
    (spec,) = config["applications"]
    assert spec["import_path"] == "charlstm.serve.ray_app:app"
    assert isinstance(ray_app.app(spec["args"]), Application)
    assert isinstance(ray_app.app({"num_replicas": "2", "int8": "true", "model": str(ROOT / "models" / "shakespeare")}),
                      Application)  # `serve run ... key=value` passes strings
    for args, words in [({"replicas": 2}, "unknown setting(s) replicas"), ({"num_replicas": "two"}, "not a number"),
                        ({"min_replicas": 3, "max_replicas": 1}, "need 0 <= min <= max")]:
        with pytest.raises(UserError, match=re.escape(words)):
            ray_app.app(args)
