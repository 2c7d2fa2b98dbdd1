"""EnCodec through transformers' `EncodecModel`, with the checkpoint's weights: audio <-> codes.

Stereo checkpoints code each channel on its own and interleave the codebooks [k0L, k0R, k1L, k1R, ...].
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from engine.polyphase import PolyphaseConvTranspose1d, polyphase_fits
from engine.unrolled_lstm import UnrolledLSTM, half_recurrent_supported, unrolled_fits

# facebook/encodec_32khz as transformers.EncodecConfig arguments: the codec inside every published MusicGen, and
# the one description of it here (the bench checkpoint, the tiny test checkpoints and the Meta exports that name
# it instead of shipping it all start from this).
MUSICGEN_CODEC = {
    "audio_channels": 1, "sampling_rate": 32000, "target_bandwidths": [2.2], "num_filters": 64,
    "upsampling_ratios": [8, 5, 4, 4], "num_lstm_layers": 2, "num_residual_layers": 1, "codebook_size": 2048,
    "codebook_dim": 128, "hidden_size": 128, "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3,
    "dilation_growth_rate": 2, "compress": 2, "norm_type": "weight_norm", "pad_mode": "reflect", "normalize": False,
    "use_causal_conv": False, "use_conv_shortcut": False, "trim_right_ratio": 1.0, "chunk_length_s": None,
    "overlap": None,
}


def musicgen_codec_config(**changes):
    """transformers' EncodecConfig of MUSICGEN_CODEC, with `changes` (e.g. a smaller width for tests)."""
    from transformers import EncodecConfig

    return EncodecConfig(**{**MUSICGEN_CODEC, **changes})


def codec_facts(kwargs: dict) -> dict:
    """sample_rate, frame_rate, num_codebooks and codebook_size of the codec that EncodecConfig(**kwargs) builds
    (transformers derives the number of quantizers from the top bandwidth: n_q * frame_rate * bits / 1000)."""
    hop = math.prod(kwargs["upsampling_ratios"])
    bits = math.ceil(math.log2(kwargs["codebook_size"]))
    frame_rate = math.ceil(kwargs["sampling_rate"] / hop)
    return {
        "sample_rate": kwargs["sampling_rate"],
        "frame_rate": kwargs["sampling_rate"] / hop,
        "num_codebooks": int(1000 * kwargs["target_bandwidths"][-1] // (frame_rate * bits)),
        "codebook_size": kwargs["codebook_size"],
    }


def fold_weight_norm(module: torch.nn.Module) -> int:
    """Replace every weight-norm parametrization under `module` with the weight it computes, in place: the codec
    only runs inference, and the parametrization recomputes each conv's weight on every call (a tenth of a
    streamed decode's time, benchmarks/RESULTS.md). Outputs are unchanged bit for bit. Returns how many.

    By hand rather than `parametrize.remove_parametrizations`, which deletes the weight property from the
    parametrized class, a class that deep copies of the model share: folding one copy would break the others."""
    from torch.nn.utils import parametrize

    folded = 0
    for m in list(module.modules()):
        if parametrize.is_parametrized(m, "weight"):
            weight = m.weight.detach().clone()
            m.__class__ = m.__class__.__bases__[0]  # the class it had before it was parametrized
            del m._modules["parametrizations"]
            m.register_parameter("weight", torch.nn.Parameter(weight, requires_grad=False))
            folded += 1
    return folded


def swap_modules(root: torch.nn.Module, fits: Callable[[torch.nn.Module], bool],
                 make: Callable[[torch.nn.Module], torch.nn.Module]) -> int:
    """Replace, in place, every submodule under `root` that `fits` with `make(it)` (the decoder's faster
    equivalents: engine/polyphase.py, engine/unrolled_lstm.py); returns how many."""
    swapped = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if fits(child):
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


class Codec:
    """`half_recurrent`: the decoder LSTM's recurrent weights in fp16 (engine/unrolled_lstm.py), which halves what
    each frame reads and moves the audio by their rounding (its size: benchmarks/RESULTS.md); None = on a CPU
    where the native kernel runs. False keeps the decode exact up to fp32 rounding."""

    def __init__(self, encodec, channels: int, n_codebooks: int, half_recurrent: bool | None = None):
        self.model = encodec.eval()
        fold_weight_norm(self.model)
        swap_modules(self.model.decoder, polyphase_fits, PolyphaseConvTranspose1d)
        if half_recurrent is None:
            half_recurrent = self.device.type == "cpu" and half_recurrent_supported()
        self.half_recurrent = half_recurrent
        swap_modules(self.model.decoder, unrolled_fits, lambda lstm: UnrolledLSTM(lstm, half_recurrent))
        self.channels = channels
        self.n_codebooks = n_codebooks  # over all channels
        self.sample_rate = int(encodec.config.sampling_rate)
        self.hop = int(np.prod(encodec.config.upsampling_ratios))
        self.frame_rate = self.sample_rate / self.hop

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, wav: Tensor) -> Tensor:
        """Audio [channels, samples] at the codec's rate (channels converted to the model's) -> codes [K, T]."""
        wav = torch.as_tensor(wav, dtype=torch.float32)
        if wav.dim() == 1:
            wav = wav[None]
        if wav.shape[0] != self.channels:
            wav = wav.mean(0, keepdim=True).expand(self.channels, -1)
        per_channel = self.n_codebooks // self.channels
        codes = []
        for c in range(self.channels):
            out = self.model.encode(wav[None, c : c + 1].to(self.device), bandwidth=None)
            codes.append(out.audio_codes[0, 0, :per_channel].cpu())  # [1, B, K, T] -> [K, T]
        # Interleave channels: row k*channels + c is codebook k of channel c.
        return torch.stack(codes, dim=1).reshape(self.n_codebooks, -1)

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [K, T] -> audio [channels, T * hop] float32."""
        out = []
        for c in range(self.channels):
            ch = codes[c :: self.channels].to(self.device)
            out.append(self.model.decode(ch[None, None], audio_scales=[None]).audio_values[0, 0].float().cpu())
        return torch.stack(out)
