"""Melody conditioning for musicgen-melody: a chroma prefix then a text prefix, no cross-attention.

The prefix is [projected one-hot chroma (chroma_length frames, 235 for 30 s); projected T5 states], placed before
the audio tokens under the same causal mask, positions counting from 0 on its first frame. The null condition
for guidance is a one-hot on bin 0 for every chroma frame and zero text states, as in transformers.

A melody shorter than the chroma length is tiled (Meta's way; transformers tiles the projected states too).
When a long stream slides its window, the chroma window advances by the same time and wraps around the melody,
as Meta's extended generation does, so the music stays aligned with the melody.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from engine.chroma import CHROMA_HOP, CHROMA_SR, chroma_window


class MelodyConditioner:
    def __init__(self, proj: nn.Linear, chroma_frames: int = 235, n_chroma: int = 12):
        self.proj = proj.float().eval()
        self.chroma_frames = chroma_frames
        self.n_chroma = n_chroma

    @classmethod
    def from_hf(cls, cfg: dict, proj: nn.Linear | None) -> "MelodyConditioner":
        if proj is None:
            from engine.errors import UserError

            raise UserError("this melody checkpoint lacks audio_enc_to_dec_proj (the chroma projection)", code="no_model")
        return cls(proj, int(cfg.get("chroma_length", 235)), int(cfg.get("num_chroma", 12)))

    def null_chroma(self) -> np.ndarray:
        c = np.zeros((self.chroma_frames, self.n_chroma), np.float32)
        c[:, 0] = 1.0
        return c

    @torch.inference_mode()
    def prefix_fn(self, model, prompt: str, melody: np.ndarray | None, guidance: bool) -> Callable[[int], Tensor]:
        """A function of a window's first codec frame -> the prefix [B, chroma_frames + S, D] for that window."""
        text = model.text.encode(prompt)  # [1, S, D], zeros for an empty prompt
        device = self.proj.weight.device
        null = self._project(self.null_chroma(), device)
        codec_rate = model.frame_rate

        def prefix(origin_frame: int) -> Tensor:
            if melody is None:
                chroma = null
            else:
                start = round(origin_frame / codec_rate * CHROMA_SR / CHROMA_HOP)
                chroma = self._project(chroma_window(melody, start, self.chroma_frames), device)
            cond = torch.cat([chroma, text.to(device)], dim=1)
            if not guidance:
                return cond
            return torch.cat([cond, torch.cat([null, torch.zeros_like(text).to(device)], dim=1)])

        return prefix

    def _project(self, chroma: np.ndarray, device) -> Tensor:
        return self.proj(torch.from_numpy(np.ascontiguousarray(chroma, dtype=np.float32)).to(device)[None])
