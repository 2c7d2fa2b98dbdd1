"""A transposed conv with kernel = 2 x stride (every EnCodec decoder upsampling layer) as one matmul over its
stride phases.

Output sample u*s + p (phase p of block u) sums two taps: weight[:, :, p] on input frame u and weight[:, :, p + s]
on frame u - 1. Stacking the two frames' channels makes that a single [C_out*s, 2*C_in] x [2*C_in, T+1] matmul,
then one copy that interleaves the phases. torch's CPU `conv_transpose1d` picks a slow path for these shapes
(benchmarks/RESULTS.md measures both); the result is the same up to float rounding (tests/test_polyphase.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PolyphaseConvTranspose1d(nn.Module):
    """Drop-in for an `nn.ConvTranspose1d` with kernel_size == 2 * stride, no padding, groups or dilation."""

    def __init__(self, conv: nn.ConvTranspose1d):
        super().__init__()
        if not polyphase_fits(conv):
            raise ValueError(f"not a plain transposed conv with kernel = 2 x stride: {conv}")
        c_in, c_out, k = conv.weight.shape
        s = k // 2
        self.in_channels, self.out_channels = c_in, c_out
        self.kernel_size, self.stride = conv.kernel_size, conv.stride  # read by EnCodec's trimming
        w = conv.weight.detach()
        # Rows (o, p); columns: the C_in channels of frame u, then those of frame u - 1.
        taps = torch.cat([w[:, :, :s], w[:, :, s:]], dim=0)  # [2*C_in, C_out, s]
        self.register_buffer("weight", taps.permute(1, 2, 0).reshape(c_out * s, 2 * c_in).contiguous())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(c_out, dtype=w.dtype, device=w.device)
        self.register_buffer("bias", bias.repeat_interleave(s)[:, None].contiguous())  # [C_out*s, 1]

    def forward(self, x: Tensor) -> Tensor:
        batch, _, frames = x.shape
        s = self.stride[0]
        stacked = x.new_zeros(batch, 2 * self.in_channels, frames + 1)
        stacked[:, : self.in_channels, :frames] = x  # frame u
        stacked[:, self.in_channels :, 1:] = x  # frame u - 1
        phases = torch.baddbmm(self.bias.expand(batch, -1, -1), self.weight.expand(batch, -1, -1), stacked)
        out = phases.view(batch, self.out_channels, s, frames + 1).transpose(-1, -2)
        return out.reshape(batch, self.out_channels, (frames + 1) * s)


def polyphase_fits(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.ConvTranspose1d) and conv.groups == 1 and conv.padding == (0,)
            and conv.dilation == (1,) and conv.output_padding == (0,) and conv.kernel_size[0] == 2 * conv.stride[0]
            and not torch.nn.utils.parametrize.is_parametrized(conv))

