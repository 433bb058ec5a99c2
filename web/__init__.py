"""The browser site `charlstm web` writes: generation with onnxruntime-web in a Web Worker (site.py, static/)."""
