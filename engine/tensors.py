"""Reading a Hugging Face checkpoint folder's tensors: safetensors (sharded or not) or weights-only torch pickles,
filtered by name prefix and converted one tensor at a time as they are read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

from engine.errors import ModelNotFound, UserError

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

Convert = Callable[[str, Tensor], Tensor]


def read_hf_tensors(folder: Path, prefixes: tuple[str, ...], convert: Convert | None = None) -> dict[str, Tensor]:
    """Every tensor whose name starts with one of `prefixes`, from safetensors (sharded or not) or .bin.

    `convert(name, tensor)`, when given, is applied to each tensor as it is read, so that a narrower copy never
    waits for the whole checkpoint at full width (peak memory).
    """
    files = weight_files(folder)
    convert = convert or (lambda name, t: t)
    out: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                for name, tensor in read_safetensors(f, prefixes):
                    out[name] = convert(name, tensor)
            except Exception as err:
                raise UserError(f"{f} is not a readable safetensors file ({err}): download it again", code="no_model") from None
        else:
            state = load_weights_only(f)
            out.update({k: convert(k, v) for k, v in state.items() if k.startswith(prefixes)})
    return out


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path: Path, prefixes: tuple[str, ...]) -> Iterator[tuple[str, Tensor]]:
    """Yield (name, tensor) for the tensors whose names start with `prefixes`, one at a time, with plain reads.

    The safetensors package maps the whole file into memory, and every page it touched counts in the process's
    resident memory for as long as any tensor from it lives: reading a fp32 checkpoint into bf16 would peak at
    the file's size on top of the model (benchmarks/RESULTS.md has the figures). Plain reads of one tensor at a
    time leave only what is kept. tests/test_tensors.py checks this reader tensor for tensor against the package.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= size - 8:
            raise ValueError("bad header length")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__" or not name.startswith(prefixes):
                continue
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
            numel = math.prod(shape)
            if not (0 <= start <= end and base + end <= size and end - start == numel * dtype.itemsize):
                raise ValueError(f"tensor {name} lies outside the file or does not fit its shape")
            raw = torch.empty(end - start, dtype=torch.uint8)
            f.seek(base + start)
            if f.readinto(raw.numpy()) != end - start:
                raise ValueError(f"tensor {name} is truncated")
            yield name, raw.view(dtype).reshape(shape)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: the single file, or every shard its index names."""
    for name in HF_WEIGHTS:
        p = folder / name
        if not p.exists():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(p.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as err:
                raise UserError(f"{p} is not a valid shard index ({err})", code="no_model") from None
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise ModelNotFound(f"{folder} lists weight shards that are missing: {', '.join(missing)}")
            return [folder / s for s in shards]
        return [p]
    raise ModelNotFound(
        f"{folder} has a config.json but no weights (looked for {', '.join(HF_WEIGHTS)}): download the whole "
        "model folder"
    )


def load_weights_only(path: Path) -> dict:
    """A torch pickle of tensors. Pickles can run code when loaded: weights_only refuses everything but tensors
    and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise UserError(f"{path} could not be loaded as a weights-only torch file ({err}); it is not trusted", code="no_model") from None
