"""The models committed in models/: they load, generate, describe themselves, and their figures hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA, run_cli

MODELS = sorted(p.parent for p in (ROOT / "models").glob("*/model.json"))
CORPORA = {"shakespeare": "tinyshakespeare.txt", "quijote": "quijote.txt"}


def test_the_default_model_is_committed():
    assert (ROOT / "models" / "shakespeare" / "model.json").is_file()


def test_all_model_files_fit_in_40_mb():
    assert sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file()) <= 40 * 2**20


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_manifest_records_corpus_split_quality_and_training(model: Path):
    m = json.loads((model / "model.json").read_text(encoding="utf-8"))
    e, t = m["evaluation"], m["provenance"]["training"]
    assert e["corpus"] and len(e["corpus_sha256"]) == 64 and e["split"] == "val" and e["nats_per_char"] > 0
    assert m["model"]["parameters"] <= 6_000_000
    assert t["seconds"] > 0 and t["machine"]["cpus"] >= 1


def test_generate_with_the_default_model():
    """The README's first command, minus the install: `charlstm generate` from the repository root."""
    result = run_cli("generate", "--prompt", "ROMEO:", "--length", "100", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) == len("ROMEO:") + 100 + 1


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_evaluate_reproduces_the_manifest_figure(model: Path):
    m = json.loads((model / "model.json").read_text(encoding="utf-8"))
    text = SHARED_DATA / m["evaluation"]["corpus"]
    if not text.is_file():
        pytest.skip(f"{text} is absent (it lives in ../shared/data beside the checkout)")
    result = run_cli("evaluate", "--model", str(model), "--text", str(text), "--split", "val", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nats_per_char"] == pytest.approx(m["evaluation"]["nats_per_char"], abs=1e-4)
