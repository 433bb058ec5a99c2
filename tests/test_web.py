"""`charlstm web`: the static site in a real browser (Debian's Chromium via Playwright), served over loopback by
`python -m http.server`, against `charlstm generate`; and its one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.browser import chromium_page, screenshot
from tests.conftest import ROOT, run_cli
from tests.onnx_fixture import make_model_dir

ORT = ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist"
TIMEOUT_MS = 180_000  # a loaded 2-core machine


def need_ort():
    if not (ORT / "ort-wasm-simd-threaded.wasm").is_file():
        pytest.skip(f"{ORT} is missing: npm ci --prefix web (.ci/run does)")


class StaticServer:
    """`python -m http.server` on a free loopback port, stopped by its pid."""

    def __init__(self, folder: Path):
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                                      "--directory", str(folder)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()  # Serving HTTP on 127.0.0.1 port NNNNN (http://127.0.0.1:NNNNN/) ...
        self.port = int(re.search(r"port (\d+)", line).group(1))
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("web") / "tiny", layers=2, units=16)


def build(model: Path, out: Path):
    result = run_cli("web", str(model), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def generate_greedy(model: Path, prompt: str, length: int) -> str:
    result = run_cli("generate", "--model", str(model), "--prompt", prompt, "--length", str(length),
                     "--temperature", "0", "--fp32")
    assert result.returncode == 0, result.stderr
    return result.stdout[len(prompt):-1]


def run_page(page, url: str, **settings) -> str:
    page.goto(f"{url}/?{urllib.parse.urlencode({**settings, 'autostart': '1'})}")
    page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT_MS)
    assert "error" not in (page.get_attribute("#status", "class") or ""), page.inner_text("#status")
    return page.inner_text("#output")


def test_bad_input_is_one_line(tmp_path, tiny):
    for args, words in ([[str(tmp_path / "nowhere"), str(tmp_path / "a")], "does not exist"],
                        [[str(tiny), str(tmp_path / "b"), "--ort", str(tmp_path)], "npm ci --prefix web"]):
        result = run_cli("web", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr and words in result.stderr, result.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny, damaged)
    (damaged / "model.onnx").write_bytes(b"x" * (damaged / "model.onnx").stat().st_size)
    result = run_cli("web", str(damaged), str(tmp_path / "c"))
    assert result.returncode == 2 and "sha256" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_the_site_generates_what_charlstm_generates(tmp_path, tiny):
    need_ort()
    site = build(tiny, tmp_path / "site")
    assert sorted(p.name for p in site.iterdir()) == ["app.js", "index.html", "model.json", "model.onnx", "ort",
                                                      "site.json", "worker.js"]
    assert json.loads((site / "site.json").read_text())["onnxruntime_web"] == "1.30.0"
    server = StaticServer(site)
    try:
        with chromium_page() as page:
            greedy = run_page(page, server.url, prompt="ROMEO:", temperature="0", length="200")
            assert greedy == generate_greedy(tiny, "ROMEO:", 200)
            assert "LSTM(16)" in page.inner_text("#facts") and "characters/s" in page.inner_text("#status")
            a = run_page(page, server.url, prompt="KING", temperature="1", length="120", seed="1")
            b = run_page(page, server.url, prompt="KING", temperature="1", length="120", seed="2")
            again = run_page(page, server.url, prompt="KING", temperature="1", length="120", seed="1")
            vocab = set(json.loads((tiny / "model.json").read_text())["vocab"])
            assert len(a) == 120 and set(a) <= vocab and a != b and a == again
            top = run_page(page, server.url, prompt="A", temperature="0.8", length="80", seed="3", top_k="3",
                           top_p="0.9")
            assert len(top) == 80 and set(top) <= vocab
            page.goto(f"{server.url}/?prompt=h%C3%A9llo%7E&autostart=1")
            page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT_MS)
            assert "outside the model's vocabulary" in page.inner_text("#status") and '"é"' in page.inner_text("#status")
            assert page.errors == []
    finally:
        server.stop()


@pytest.mark.slow
def test_a_long_generation_keeps_the_page_responsive_and_stops(tmp_path, tiny):
    need_ort()
    site = build(tiny, tmp_path / "site")
    server = StaticServer(site)
    try:
        with chromium_page() as page:
            page.goto(f"{server.url}/?prompt=A&length=100000000&temperature=1&seed=1&autostart=1")
            page.wait_for_function("document.getElementById('output').textContent.length > 200", timeout=TIMEOUT_MS)
            # the main thread answers at once while the worker generates: timers fire on time
            lag = page.evaluate("""() => new Promise(done => { const t = performance.now();
                setTimeout(() => done(performance.now() - t), 10); })""")
            assert lag < 500, lag
            page.click("#stop")
            page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT_MS)
            length = len(page.inner_text("#output"))
            time.sleep(0.5)
            assert len(page.inner_text("#output")) == length and "stopped" in page.inner_text("#status")
            screenshot(page, "web-stopped.png")
    finally:
        server.stop()


@pytest.mark.slow
def test_the_shipped_model_in_the_browser(tmp_path):
    need_ort()
    model = ROOT / "models" / "shakespeare"
    site = build(model, tmp_path / "site")
    server = StaticServer(site)
    try:
        with chromium_page() as page:
            greedy = run_page(page, server.url, prompt="ROMEO:", temperature="0", length="200")
            assert greedy == generate_greedy(model, "ROMEO:", 200)
            assert screenshot(page, "web-shakespeare.png").stat().st_size > 0
    finally:
        server.stop()


@pytest.mark.slow
def test_a_broken_site_shows_a_message_not_a_blank_page(tmp_path, tiny):
    need_ort()
    site = build(tiny, tmp_path / "site")
    (site / "model.onnx").unlink()  # a host that lost the model file
    server = StaticServer(site)
    try:
        with chromium_page() as page:
            page.goto(f"{server.url}/")
            page.wait_for_selector("#status.error", timeout=TIMEOUT_MS)
            assert "model.onnx: 404" in page.inner_text("#status")
    finally:
        server.stop()

