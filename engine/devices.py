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


def resolve_dtype(name: str = "float32") -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}: use float32, bfloat16, float16 or int8", code="bad_args") from None
