"""benchmarks/sweep.py trains its recipes side by side as ordinary run folders and tabulates their figures (tiny
recipes for an epoch; no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, make_text

TINY_FLAGS = "--embedding-dim 8 --units 16 --layers 1 --seq-length 20 --batch-size 8 --dropout 0"


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/sweep.py", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=SLOW_MACHINE_TIMEOUT, env={"KERAS_BACKEND": "jax", **os.environ})


@pytest.mark.slow
def test_two_recipes_one_table(tmp_path):
    pytest.importorskip("keras", reason="the `train` extra is not installed")
    text = tmp_path / "t.txt"
    text.write_text(make_text(4_000), encoding="utf-8")
    out = tmp_path / "sweep"
    done = sweep("--text", str(text), "--out", str(out), "--epochs", "1", "--parallel", "2", "--budget-s", "1500",
                 "--recipe", f"wd=--weight-drop 0.3 --recurrent-dropout 0 {TINY_FLAGS}",
                 "--recipe", f"rd=--recurrent-dropout 0.2 {TINY_FLAGS}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "| recipe | wd | rd |" and "| epoch 1 |" in done.stdout
    figures = json.loads((out / "sweep.json").read_text())["figures"]
    for name in ("wd", "rd"):
        (epoch,) = figures[name]["epochs"]
        assert 0 < epoch["val_loss"] < 5 and figures[name]["parameters"] > 1000
        assert json.loads((out / name / "config.json").read_text())["model"]["units"] == 16
    assert json.loads((out / "wd" / "config.json").read_text())["model"]["weight_drop"] == 0.3


def test_a_bad_recipe_is_one_line(tmp_path):
    done = sweep("--text", str(tmp_path), "--out", str(tmp_path / "o"), "--recipe", "no-flags-given")
    assert done.returncode != 0 and "is not NAME=FLAGS" in done.stderr and "Traceback" not in done.stderr


def test_list_prints_the_built_in_grid_alone_and_charlstm_train_takes_its_flags():
    import shlex
    import typer.main
    from charlstm.cli import app
    done = sweep("--list")
    assert done.returncode == 0, done.stderr[-2000:]
    grid = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert {"640-wd3", "640-awd"} <= set(grid)
    train = typer.main.get_command(app).commands["train"]
    known = {opt for param in train.params for opt in param.opts}
    for name, flags in grid.items():
        assert [f for f in shlex.split(flags) if f.startswith("--") and f not in known] == [], name
    missing = sweep()
    assert missing.returncode == 2 and "--text and --out are required" in missing.stderr
