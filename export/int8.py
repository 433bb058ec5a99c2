"""`--int8`: ONNX Runtime weight-only 8-bit quantization of the step's matrices, with its cost measured, not assumed.

Each MatMul becomes MatMulNBits: int8 weights in blocks of 128 along the input dimension, each block with its
own float scale (symmetric), and accuracy level 4, so ONNX Runtime's CPU kernel quantizes the activation row
too and multiplies in int8 (VNNI where the CPU has it). A batch-1 CPU step wants exactly that: a quarter of
the bytes to read, in one fused kernel per matrix, where per-channel dynamic quantization needs four nodes per
matrix (DynamicQuantizeLinear + MatMulInteger + Cast + Mul). The folded embedding table stays a float Gather (it
is read one row per step). The change in validation loss is measured on the held-out text through
the runtime, state carried, and stored in the manifest.
"""

from __future__ import annotations

from pathlib import Path

from charlstm.errors import UserError
from charlstm.runtime.files import sha256_bytes
from charlstm.runtime.manifest import INT8_FILE, MODEL_FILE, Manifest

BLOCK = 128  # weights per scale along the input dimension (ONNX Runtime's default)
ACCURACY_LEVEL = 4  # int8 activations too: the kernel multiplies int8 by int8


def write_nbits(src: Path, dst: Path, bits: int = 8) -> None:
    """Quantize every MatMul of the float graph `src` into `dst` (MatMulNBits; 4 bits for experiments)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # a line per graph node at INFO
    quantizer = MatMulNBitsQuantizer(onnx.load(src), bits=bits, block_size=BLOCK, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantize(folder: Path, manifest: Manifest, eval_text: str | None, log) -> tuple[dict, dict]:
    """Write folder/model.int8.onnx; return its file entry and the measured figures."""
    from charlstm.runtime.evaluate import evaluate_text

    if not eval_text:
        raise UserError("int8 needs held-out text to measure the validation loss it costs", "int8")
    src, dst = folder / MODEL_FILE, folder / INT8_FILE
    log(f"quantizing to int8 (MatMulNBits: blocks of {BLOCK}, symmetric, int8 compute)")
    write_nbits(src, dst)
    data = dst.read_bytes()
    entry = {"sha256": sha256_bytes(data), "bytes": len(data)}
    figures = {"weight_type": "int8", "method": "MatMulNBits", "block_size": BLOCK, "symmetric": True,
               "accuracy_level": ACCURACY_LEVEL, "op_types": ["MatMul"]}
    # The runtime reads a model folder: give it this one's manifest, with the int8 file listed.
    manifest.replace(files={**manifest.files, INT8_FILE: entry}).write(folder)
    log(f"scoring {len(eval_text):,} held-out characters with int8")
    fp32 = manifest.evaluation["nats_per_char"]
    q8 = evaluate_text(folder, eval_text, int8=True, device="cpu", unknown="skip")
    figures.update({"val_characters": q8["characters"], "val_loss_float32": fp32,
                    "val_loss_int8": q8["nats_per_char"], "val_loss_change": q8["nats_per_char"] - fp32})
    log(f"int8: validation loss {q8['nats_per_char']:.4f} vs {fp32:.4f} nats/char "
        f"({figures['val_loss_change']:+.4f})")
    return entry, figures
