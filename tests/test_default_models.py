"""The models committed in models/: they load, generate, describe themselves, and their figures hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA, run_cli

MODELS = sorted(p.parent for p in (ROOT / "models").glob("*/model.json"))
# The book text of quijote.txt, without the Project Gutenberg header and license (offsets: PROVENANCE.md).
DERIVED = {"quijote-book.txt": ("quijote.txt", 734, 2_111_460)}


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


def test_shakespeare_meets_the_quality_target():
    """At most 1.40 nats/char on tinyshakespeare's validation split (the figure a slow test below recomputes)."""
    e = json.loads((ROOT / "models" / "shakespeare" / "model.json").read_text(encoding="utf-8"))["evaluation"]
    assert e["corpus"] == "tinyshakespeare.txt" and e["characters"] >= 111_539
    assert e["nats_per_char"] <= 1.40


def test_generate_with_the_default_model():
    """The README's first command, minus the install: `charlstm generate` from the repository root."""
    result = run_cli("generate", "--prompt", "ROMEO:", "--length", "100", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) == len("ROMEO:") + 100 + 1


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_evaluate_reproduces_the_manifest_figure(model: Path, tmp_path):
    m = json.loads((model / "model.json").read_text(encoding="utf-8"))
    name = m["evaluation"]["corpus"]
    source, start, end = DERIVED.get(name, (name, 0, None))
    text = SHARED_DATA / source
    if not text.is_file():
        pytest.skip(f"{text} is absent (it lives in ../shared/data beside the checkout)")
    if name in DERIVED:
        cut = tmp_path / name
        cut.write_text(text.read_text(encoding="utf-8")[start:end], encoding="utf-8")
        text = cut
    assert hashlib.sha256(text.read_bytes()).hexdigest() == m["evaluation"]["corpus_sha256"], "not the trained text"
    result = run_cli("evaluate", "--model", str(model), "--text", str(text), "--split", "val", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nats_per_char"] == pytest.approx(m["evaluation"]["nats_per_char"], abs=1e-4)
