"""Benchmarks behind `charlstm bench`: generation speed on the CPU and GPU, cold starts, memory, and training input.

- timing.py: the Row every benchmark returns, the median-of-repeats timer, what the machine was doing;
- models.py: the model folder to measure (a random-weight one of the notebook's shape, built once and cached);
- cpu.py: numpy floor, ONNX float32/int8 steps, the generate loop, the notebook's loop, cold starts, peak RSS;
- notebook_loop.py: the notebook's generation as a script (TensorFlow eager), the baseline;
- gpu.py: the CUDA path at batch 1 and 64 (`python -m benchmarks.gpu --model DIR` on a GPU machine);
- training_pipeline.py: training characters per second through CharBatches against bare in-memory arrays.

Speed does not depend on the weights, only on the shapes, so random weights measure what a trained model costs.
"""
