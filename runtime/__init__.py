"""The TensorFlow-free runtime: load a model folder written by `charlstm export`, generate text, score text.

Imports only numpy and onnxruntime (never TensorFlow, Keras, `training` or `export`), so the slim install runs it.

    from runtime import Generator, evaluate_text, load_manifest
    Generator("models/shakespeare").generate("ROMEO:", length=200, seed=1)
"""

from runtime.errors import DeviceError, InputError, ModelError
from runtime.evaluate import evaluate_text
from runtime.generator import Generator, SearchParams
from runtime.manifest import Manifest, default_model_dir, load_manifest
from runtime.sampling import SamplingParams

__all__ = [
    "DeviceError", "Generator", "InputError", "Manifest", "ModelError", "SamplingParams", "SearchParams",
    "default_model_dir", "evaluate_text", "load_manifest",
]
