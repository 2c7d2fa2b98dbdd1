"""Choosing where the model runs and in which precision."""

from __future__ import annotations

import torch

from engine.errors import UserError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
    # int8 weight-only (engine/quantize.py): weights in int8, activations wider. CPU only.
    "int8": torch.int8,
    # int8 weights and int8 activations (quantized per row as they arrive; engine/quantize.py). CPU only. torch's
    # quantized-int8 dtype is only the token that names the format: no quantized tensor is made.
    "w8a8": torch.qint8,
    # int4 weight-only, group-wise (engine/quantize.py). CPU only.
    "int4": torch.int4,
}
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must be available."""
    base = name.split(":")[0]
    if base not in DEVICES:
        raise UserError(f"unknown device {name!r}: use one of {', '.join(DEVICES)} (e.g. --device cpu)", code="bad_args")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible to torch: use --device cpu or auto", code="bad_args")
    if base == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but Apple's MPS is not available here: use --device cpu or auto", code="bad_args")
    return torch.device(name)


def resolve_dtype(name: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """The dtype named `name`; "auto" is `auto_dtype(device)`'s choice (CPU when no device is given)."""
    if name.lower() == "auto":
        return auto_dtype(device or torch.device("cpu"))[0]
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}: use auto, float32, bfloat16, float16, int8, w8a8 or int4", code="bad_args") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The `--dtype` name of `dtype` ("w8a8" for the int8-weights-and-activations format), for logs and /status."""
    return "w8a8" if dtype == torch.qint8 else str(dtype).removeprefix("torch.")


# The CPU weight format `auto` picks: the fastest one that passes the quality guard (tests/test_quantize.py,
# benchmarks/quality.py; the measurements behind the choice are in benchmarks/RESULTS.md).
CPU_AUTO = "w8a8"


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """What `--dtype auto` runs in on `device`, and why (one phrase, for the startup log)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA with bf16 support"
        return torch.float16, "CUDA without bf16 support"
    if device.type == "mps":
        return torch.float16, "Apple MPS runs fp16 natively"
    if device.type == "cpu":
        from engine.quantize import int4_supported, w8a8_supported

        if CPU_AUTO == "int4" and int4_supported():
            return torch.int4, "CPU: int4 weights are the fastest format within the quality bounds"
        if CPU_AUTO == "w8a8" and w8a8_supported():
            return torch.qint8, ("CPU: int8 weights and activations (int8 dot products) are the fastest format within "
                                 "the quality bounds")
        if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return torch.int8, "CPU: int8 weights are the fastest format within the quality bounds"
        return torch.float32, "CPU without torch's int8 weight kernel"
    return torch.float32, f"no faster format is known for {device.type}"
