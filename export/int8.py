"""`--int8`: ONNX Runtime dynamic quantization of the step's matrices, with its cost measured, not assumed.

Weights become int8 per output channel; activations are quantized on the fly each step (MatMulInteger),
which is what a batch-1 CPU step wants: a quarter of the bytes to read. The folded embedding table stays a
float Gather (it is read one row per step). The change in validation loss is measured on the held-out text
through the runtime, state carried, and stored in the manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from charlstm.errors import UserError
from training import run


def quantize(folder: Path, manifest: dict, eval_text: str | None, log) -> tuple[dict, dict]:
    """Write folder/model.int8.onnx; return its file entry and the measured figures."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from runtime.evaluate import evaluate_text

    src, dst = folder / "model.onnx", folder / "model.int8.onnx"
    log("quantizing to int8 (dynamic, per channel)")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    data = dst.read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    figures = {"weight_type": "int8", "per_channel": True, "op_types": ["MatMul"]}
    if not eval_text:
        raise UserError("--int8 needs held-out text to measure the validation loss it costs")
    # The runtime reads a model folder: give it this one's manifest, with the int8 file listed.
    draft = {**manifest, "files": {**manifest["files"], "model.int8.onnx": entry}}
    run.write_json(folder / "model.json", draft)
    log(f"scoring {len(eval_text):,} held-out characters with int8")
    fp32 = manifest["evaluation"]["nats_per_char"]
    q8 = evaluate_text(folder, eval_text, int8=True, device="cpu", unknown="skip")
    figures.update({"val_characters": q8["characters"], "val_loss_float32": fp32,
                    "val_loss_int8": q8["nats_per_char"], "val_loss_change": q8["nats_per_char"] - fp32})
    log(f"int8: validation loss {q8['nats_per_char']:.4f} vs {fp32:.4f} nats/char "
        f"({figures['val_loss_change']:+.4f})")
    return entry, figures
