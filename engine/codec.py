"""EnCodec through transformers' `EncodecModel`, with the checkpoint's weights: audio <-> codes.

Stereo checkpoints code each channel on its own and interleave the codebooks [k0L, k0R, k1L, k1R, ...].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class Codec:
    def __init__(self, encodec, channels: int, n_codebooks: int):
        self.model = encodec.eval()
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
