"""A loaded MusicGen: the LM, its codebook pattern, the text conditioner and the codec, and what they imply."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.codec import Codec
from engine.lm import MusicGenLM
from engine.pattern import DelayPattern
from engine.text import TextConditioner

TRAINING_SECONDS = 30.0  # every published MusicGen was trained on 30 s segments


@dataclass
class MusicGen:
    name: str
    lm: MusicGenLM
    pattern: DelayPattern
    text: TextConditioner
    codec: Codec
    max_positions: int  # the position limit of the checkpoint's config (sinusoids have none of their own)
    melody: object | None = None  # engine.melody.MelodyConditioner for melody checkpoints

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def channels(self) -> int:
        return self.codec.channels

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def hop(self) -> int:
        return self.codec.hop

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    @property
    def prefix_frames(self) -> int:
        """Positions a melody model spends on its chroma prefix before the text and the audio tokens."""
        return self.melody.chroma_frames if self.melody is not None else 0

    @property
    def max_frames(self) -> int:
        """The longest window, in codec frames, the model handles: its training context, or less when the
        checkpoint's position limit is smaller (the delay pattern's extra columns and any prefix included)."""
        text_room = 64 if self.melody is not None else 0  # room kept for the text part of a melody prefix
        by_positions = self.max_positions - self.pattern.columns(0) - self.prefix_frames - text_room
        return max(1, min(int(TRAINING_SECONDS * self.frame_rate), by_positions))

    @property
    def max_seconds(self) -> float:
        return self.max_frames / self.frame_rate
