"""The playground page at / in a real browser (Debian's Chromium through Playwright), against a real server."""

from __future__ import annotations

import urllib.parse

import pytest

from charlstm.runtime import Generator
from tests.browser import chromium_page, screenshot
from tests.onnx_fixture import make_model_dir
from tests.server import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed (pip install 'charlstm[serve]')")
pytestmark = pytest.mark.slow
TIMEOUT_MS = 120_000  # a loaded 2-core machine


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = make_model_dir(tmp_path_factory.mktemp("playground") / "tiny", layers=1, units=16)
    server = Server("--model", model, "--device", "cpu")
    yield server, Generator(model, device="cpu")
    server.stop()


def test_a_link_reproduces_a_generation_in_the_page(served):
    server, alone = served
    settings = {"prompt": "ROMEO:", "temperature": "0", "length": "200", "seed": "1", "autostart": "1"}
    with chromium_page() as page:
        page.goto(f"{server.url}/?{urllib.parse.urlencode(settings)}")
        page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT_MS)
        assert page.inner_text("#output") == alone.generate("ROMEO:", temperature=0, length=200)
        assert "characters/s" in page.inner_text("#status")
        assert "fixture" in page.inner_text("#facts") and "LSTM(16)" in page.inner_text("#facts")
        assert screenshot(page, "playground.png").stat().st_size > 0
        assert page.errors == []


def test_sampled_text_follows_the_seed_and_errors_are_shown(served):
    server, alone = served
    with chromium_page() as page:
        page.goto(f"{server.url}/?prompt=KING&temperature=0.9&length=80&seed=7&autostart=1")
        page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT_MS)
        assert page.inner_text("#output") == alone.generate("KING", temperature=0.9, length=80, seed=7)
        page.evaluate("document.body.dataset.done = ''")
        page.fill("#prompt", "héllo")
        page.click("#go")
        page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT_MS)
        assert "outside the model's vocabulary" in page.inner_text("#status") and "'é'" in page.inner_text("#status")
