"""Our plain-read safetensors reader, tensor for tensor against the safetensors package (the format's reference)."""

import json
import struct

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.errors import UserError
from engine.tensors import SAFETENSORS_DTYPES, read_hf_tensors, read_safetensors


def _every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = {}
    for i, dtype in enumerate(SAFETENSORS_DTYPES.values()):
        shape = [(2, 3, 5), (7,), (4, 1), (), (0, 3)][i % 5]
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        else:
            info = torch.iinfo(dtype)
            t = torch.randint(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=g, dtype=torch.int64).to(dtype)
        out[f"layer.{i}.{str(dtype).replace('torch.', '')}"] = t
    out["other.weight"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return out


def test_every_tensor_equals_the_package(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_every_dtype(), str(path), metadata={"format": "pt"})
    ours = dict(read_safetensors(path, ("",)))
    with safe_open(str(path), framework="pt") as f:
        theirs = {k: f.get_tensor(k) for k in f.keys()}
    assert ours.keys() == theirs.keys() and len(ours) == len(SAFETENSORS_DTYPES) + 1
    for name, t in theirs.items():
        assert ours[name].dtype == t.dtype and ours[name].shape == t.shape, name
        assert torch.equal(ours[name], t), name
    # the prefix filter reads only what it names
    assert set(dict(read_safetensors(path, ("other.",)))) == {"other.weight"}


def test_a_checkpoint_folder_reads_as_the_package_does(tiny_mono):
    folder = tiny_mono[0]
    ours = read_hf_tensors(folder, ("",))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert sorted(ours) == sorted(f.keys())
        for name in f.keys():
            assert torch.equal(ours[name], f.get_tensor(name)), name


def _package_reads(path) -> None:
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            f.get_tensor(k)


@pytest.mark.parametrize("damage", ["truncated", "header_length", "offsets", "not_json"])
def test_a_file_the_package_refuses_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(64), "b": torch.zeros(8)}, str(path))
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    if damage == "truncated":
        data = data[:-16]
    elif damage == "header_length":
        data[:8] = struct.pack("<Q", len(data))
    elif damage == "offsets":  # tensor a no longer fits its shape (same header length: spaces pad it)
        header = json.loads(bytes(data[8 : 8 + n]))
        header["a"]["data_offsets"] = [0, 4 * 63]
        text = json.dumps(header, separators=(",", ":")).encode()
        assert len(text) <= n
        data[8 : 8 + n] = text.ljust(n)
    else:
        data[8:12] = b"\x00\x01\x02\x03"
    path.write_bytes(bytes(data))
    with pytest.raises(SafetensorError):  # the reference refuses it too
        _package_reads(path)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_hf_tensors(tmp_path, ("",))
