"""The TensorFlow-free runtime: load a model folder written by `charlstm export`, generate text, score text.

Imports only numpy and onnxruntime (never TensorFlow, Keras, training or export), so the slim install runs it.

    from charlstm.runtime import Generator, SamplingParams, SearchParams, SessionConfig
    gen = Generator("models/shakespeare", SessionConfig(device="cpu"))
    gen.generate("ROMEO:", SamplingParams(temperature=0.7), SearchParams(length=200, seed=1))
    gen.generate("ROMEO:", temperature=0.7, length=200, seed=1)   # the same, with keyword shortcuts

The names below load on first use, so `import charlstm.runtime.text` (or the command line's --help) does not
pay for importing ONNX Runtime.
"""

import importlib

_EXPORTS = {
    "DeviceError": "errors", "InputError": "errors", "ModelError": "errors",
    "evaluate_text": "evaluate", "Generator": "generator", "SearchParams": "generator",
    "Manifest": "manifest", "default_model_dir": "manifest", "load_manifest": "manifest",
    "SamplingParams": "sampling", "SessionConfig": "session",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
