"""Codebook patterns: how K parallel codebook streams are laid out along the model's sequence.

MusicGen's default is the delay pattern: codebook k is shifted right by delays[k] steps, so the model predicts
the coarse codebook of a frame before the finer ones. Column c of the sequence holds, for codebook k, frame
c - 1 - delays[k] (column 0 is the all-special start step); columns where that frame does not exist (yet, or any
more) hold the special token. T frames therefore take T + max_delay + 1 columns.

Stereo checkpoints interleave the channels' codebooks [k0L, k0R, k1L, k1R, ...] with delays [0, 0, 1, 1, ...].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DelayPattern:
    delays: tuple[int, ...]

    @classmethod
    def for_codebooks(cls, n_codebooks: int, channels: int = 1) -> "DelayPattern":
        if n_codebooks % channels:
            raise ValueError(f"{n_codebooks} codebooks cannot be split over {channels} channels")
        return cls(tuple(k // channels for k in range(n_codebooks)))

    @property
    def n_codebooks(self) -> int:
        return len(self.delays)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def columns(self, frames: int) -> int:
        """Sequence length (start column included) that holds `frames` complete frames."""
        return frames + self.max_delay + 1

    def frame_at(self, column: int) -> list[int]:
        """The frame index each codebook holds at `column` (negative before its first frame)."""
        return [column - 1 - d for d in self.delays]

    def interleave(self, codes: Tensor, special: int, columns: int | None = None) -> Tensor:
        """[..., K, T] codes -> [..., K, columns] delayed sequence, special wherever no frame is."""
        T = codes.shape[-1]
        columns = self.columns(T) if columns is None else columns
        out = codes.new_full((*codes.shape[:-1], columns), special)
        for k, d in enumerate(self.delays):
            n = max(0, min(T, columns - 1 - d))
            out[..., k, 1 + d : 1 + d + n] = codes[..., k, :n]
        return out
