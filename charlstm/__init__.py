"""charlstm: character-level LSTM text generation (train with Keras 3, export to ONNX, generate with ONNX Runtime).

    charlstm.runtime   load a model folder, generate and score text (numpy + ONNX Runtime only)
    charlstm.training  train with Keras 3 (the `train` extra)
    charlstm.export    trace, verify and write a model folder (the `export` extra)
    charlstm.cli       the `charlstm` command
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# Installed, the layers are subpackages inside this folder (pyproject's package-dir maps the repository's
# runtime/, training/, export/ and models/ there). Run from a source checkout without an install, or shadowing
# an installed copy from the repository root, they are the checkout's top-level folders: look for them there.
_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "runtime").is_dir() and (_root / "runtime" / "__init__.py").is_file() \
        and (_root / "pyproject.toml").is_file():
    __path__.append(str(_root))  # noqa: F821 - a package's own __path__
