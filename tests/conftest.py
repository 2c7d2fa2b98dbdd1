"""Shared fixtures: tiny random checkpoints in the real on-disk formats, built at test time."""

from __future__ import annotations

import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from tests
torch.set_num_threads(min(2, torch.get_num_threads()))
logging.getLogger("transformers").setLevel(logging.ERROR)


def save_tiny_checkpoint(folder, channels: int = 1, melody: bool = False, seed: int = 1, **kw):
    """Write transformers' tiny reference model + tokenizer as a Hugging Face folder; return the model."""
    from engine.tiny import tiny_config, tiny_reference_model, tiny_tokenizer

    ref = tiny_reference_model(tiny_config(channels=channels, melody=melody), seed=seed)
    ref.save_pretrained(folder, **kw)
    tiny_tokenizer().save_pretrained(folder)
    return ref


@pytest.fixture(scope="session")
def tiny_mono(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-mono")
    return folder, save_tiny_checkpoint(folder, channels=1)


@pytest.fixture(scope="session")
def tiny_stereo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-stereo")
    return folder, save_tiny_checkpoint(folder, channels=2)


@pytest.fixture(scope="session")
def mono_model(tiny_mono):
    from engine.checkpoint import load_model

    return load_model(str(tiny_mono[0]), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def stereo_model(tiny_stereo):
    from engine.checkpoint import load_model

    return load_model(str(tiny_stereo[0]), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_melody(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-melody")
    return folder, save_tiny_checkpoint(folder, melody=True)


@pytest.fixture(scope="session")
def melody_model(tiny_melody):
    from engine.checkpoint import load_model

    return load_model(str(tiny_melody[0]), device="cpu", dtype="float32")


@pytest.fixture(params=["widest", "avx2"])
def isa(request):
    """The native kernels with two paths (int4, w8a16, the int8 cache's attention): the widest this CPU runs
    (AVX-512 where it has it) and AVX2, what CPUs without AVX-512 run."""
    from engine import native

    if request.param == "avx2":
        with native.avx2_only():
            yield request.param
    else:
        yield request.param
