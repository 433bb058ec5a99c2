"""The README opens with the two commands a new user types, and CI runs the second one verbatim."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _first_blocks(n: int) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)[:n]


def test_readme_opens_with_run_and_test_commands():
    run, test = _first_blocks(2)
    assert run.startswith("pip install . && charlstm generate")
    assert test == 'pip install ".[test]" && python -m pytest'


def test_ci_runs_the_readme_test_command():
    _, test = _first_blocks(2)
    assert test in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
