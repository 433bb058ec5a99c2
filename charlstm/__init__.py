"""charlstm: character-level LSTM text generation (train with Keras 3, export to ONNX, generate with ONNX Runtime)."""

__version__ = "0.1.0"
