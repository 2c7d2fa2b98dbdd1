"""Loading: every accepted checkpoint form gives the same model; every bad one gives a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.checkpoint import load_model
from engine.errors import ModelNotFound, UserError
from engine.generate import open_stream
from engine.sampling import SamplingSettings
from tests.conftest import save_tiny_checkpoint

GREEDY = SamplingSettings(greedy=True)


def _codes(model, frames=40, prompt="techno drums"):
    return open_stream(model, prompt, GREEDY, frames=frames).run().clone()


def test_sharded_safetensors_and_bin_load_the_same(tmp_path, tiny_mono, mono_model):
    folder, ref = tiny_mono
    expected = _codes(mono_model)
    sharded = tmp_path / "sharded"
    save_tiny_checkpoint(sharded, channels=1, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert torch.equal(_codes(load_model(str(sharded), device="cpu")), expected)

    pickled = tmp_path / "bin"
    pickled.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, pickled / f.name)
    torch.save(ref.state_dict(), pickled / "pytorch_model.bin")
    assert torch.equal(_codes(load_model(str(pickled), device="cpu")), expected)


def test_no_second_decoder_in_memory(mono_model):
    # Our LM holds the weights; nothing of transformers' decoder class is kept anywhere in the bundle.
    names = {type(m).__name__ for m in mono_model.lm.modules()} | {type(m).__name__ for m in mono_model.text.modules()}
    assert not any("Musicgen" in n for n in names)


def _fake_cache(cache, repo_id, src):
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(src, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)


def test_hub_id_resolves_from_the_local_cache(tmp_path, monkeypatch, tiny_mono, mono_model):
    import huggingface_hub.constants as hc

    _fake_cache(tmp_path / "hub", "facebook/musicgen-tiny-test", tiny_mono[0])
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    model = load_model("facebook/musicgen-tiny-test", device="cpu")
    assert torch.equal(_codes(model), _codes(mono_model))


def test_hub_id_missing_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound) as err:
        load_model("facebook/musicgen-small", device="cpu")
    msg = str(err.value)
    assert "facebook/musicgen-small" in msg and str(tmp_path / "empty-cache") in msg and "download" in msg


def test_random_tiny_warns_and_makes_audio(caplog):
    with caplog.at_level("WARNING"):
        model = load_model("random-tiny", device="cpu")
    assert "RANDOM" in caplog.text
    codes = _codes(model, frames=10)
    assert codes.shape == (4, 10) and int(codes.max()) < 2048


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_narrow_models_load_t5_in_bf16_and_condition_as_fp32_does(tiny_mono, mono_model, dtype):
    """bf16 and int8 models keep T5 in bf16 (its `wo` layers in fp32, as transformers does); the projected text
    states stay within bf16 rounding of the fp32 T5's, and generation runs."""
    model = load_model(str(tiny_mono[0]), device="cpu", dtype=dtype)
    assert model.lm.dtype == getattr(torch, dtype)
    dtypes = {name: p.dtype for name, p in model.text.t5.named_parameters()}
    assert {d for n, d in dtypes.items() if ".wo." in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if ".wo." not in n} == {torch.bfloat16}
    assert next(mono_model.text.t5.parameters()).dtype == torch.float32  # fp32 models keep fp32
    prompt = "warm lo-fi piano with soft drums"
    narrow, wide = model.text.encode(prompt), mono_model.text.encode(prompt)
    assert narrow.dtype == torch.float32 and narrow.shape == wide.shape
    cos = torch.nn.functional.cosine_similarity(narrow.flatten(0, 1), wide.flatten(0, 1), dim=-1)
    assert cos.min() > 0.999, cos
    codes = _codes(model, frames=20)
    assert codes.shape == (4, 20) and int(codes.max()) < 2048


@pytest.mark.parametrize("case", ["missing", "no-weights", "bad-config", "not-musicgen", "file", "neither"])
def test_bad_folders(case, tmp_path, tiny_mono):
    folder = tmp_path / "m"
    if case != "missing":
        folder.mkdir()
    if case in ("no-weights", "bad-config", "not-musicgen"):
        for f in tiny_mono[0].iterdir():
            if "safetensors" not in f.name:
                shutil.copy(f, folder / f.name)
    if case == "no-weights":
        expect = "no weights"
    elif case == "bad-config":
        (folder / "config.json").write_text("{ not json")
        expect = "not valid JSON"
    elif case == "not-musicgen":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        expect = "not a MusicGen config"
    elif case == "file":
        folder.rmdir()
        folder.write_text("x")
        expect = "is a file"
    elif case == "neither":
        expect = "neither"
    else:
        expect = "no model folder"
    with pytest.raises(UserError, match=expect):
        load_model(str(folder), device="cpu")


@pytest.mark.parametrize("device,dtype,expect", [("tpu", "float32", "unknown device"), ("cpu", "float8", "unknown dtype")])
def test_bad_device_or_dtype(device, dtype, expect):
    with pytest.raises(UserError, match=expect):
        load_model("random-tiny", device=device, dtype=dtype)


def test_cuda_asked_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing to refuse")
    with pytest.raises(UserError, match="no CUDA GPU"):
        load_model("random-tiny", device="cuda")
