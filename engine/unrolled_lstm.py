"""The codec's LSTM as a plain loop over frames: the input projection for all frames in one matmul, then one
matrix-vector product with the recurrent weights per frame.

A streamed push runs a few dozen frames through a 2-layer, 1024-wide LSTM, so the cost is reading the recurrent
weights (16 MB per layer in fp32) once per frame. torch's CPU LSTM (oneDNN) reads them at a lower rate than a
plain fp32 matmul does (benchmarks/RESULTS.md); the arithmetic is the same, so the output is too up to float
rounding (tests/test_unrolled_lstm.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class UnrolledLSTM(nn.Module):
    """Drop-in for a unidirectional, time-major `nn.LSTM` with biases and no projection: (x [T, B, C],
    state (h, c) [layers, B, H] or None) -> (y [T, B, H], (h, c)).

    `half_recurrent`: the recurrent weights stored in fp16, and both matmuls on the native `lstm_addmm` (CPUs with
    AVX2): half the bytes each frame reads; the arithmetic stays fp32, the weights move by their fp16 rounding. The
    input projection goes there too because MKL's matmul of a push's few rows rounded differently in two processes
    fed the same rows (its state differed), so a seed's audio did not come again; the native op's sums have one
    order."""

    def __init__(self, lstm: nn.LSTM, half_recurrent: bool = False):
        super().__init__()
        if not unrolled_fits(lstm):
            raise ValueError(f"not a unidirectional time-major LSTM with biases and no projection: {lstm}")
        if half_recurrent and not half_recurrent_supported():
            raise RuntimeError("fp16 recurrent weights need the native lstm_addmm kernel (a CPU with AVX2): "
                               "build the codec's LSTM with half_recurrent=False")
        self.num_layers, self.hidden_size = lstm.num_layers, lstm.hidden_size
        self.native = half_recurrent
        for layer in range(lstm.num_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            self.register_buffer(f"w_ih{layer}", w_ih.detach().clone())
            w_hh = w_hh.detach().clone()
            self.register_buffer(f"w_hh{layer}", w_hh.half() if half_recurrent else w_hh)
            self.register_buffer(f"bias{layer}", bias.detach().clone())

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        frames, batch, _ = x.shape
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih, w_hh, bias = (getattr(self, f"{n}{layer}") for n in ("w_ih", "w_hh", "bias"))
            gates_in = self._project(bias, x.reshape(frames * batch, -1), w_ih).view(frames, batch, -1)
            h, c = state[0][layer], state[1][layer]
            out = x.new_empty(frames, batch, self.hidden_size)
            for t in range(frames):
                h, c = self._cell(self._recurrent(gates_in[t], h, w_hh), c)
                out[t] = h
            hs.append(h)
            cs.append(c)
            x = out
        return x, (torch.stack(hs), torch.stack(cs))

    def _project(self, bias: Tensor, x: Tensor, w_ih: Tensor) -> Tensor:
        if self.native and w_ih.device.type == "cpu":
            return torch.ops.musicgen_bridge.lstm_addmm(bias.expand(x.shape[0], -1), x, w_ih)
        return torch.addmm(bias, x, w_ih.t())

    def _recurrent(self, gates_in: Tensor, h: Tensor, w_hh: Tensor) -> Tensor:
        if self.native and w_hh.device.type == "cpu":
            return torch.ops.musicgen_bridge.lstm_addmm(gates_in, h, w_hh)
        return torch.addmm(gates_in, h, w_hh.t().to(h.dtype))  # fp16 weights moved off the CPU: widened

    @staticmethod
    def _cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = gates.chunk(4, dim=-1)  # torch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def half_recurrent_supported() -> bool:
    """The native LSTM matmul (fp16 recurrent weights) runs here (loading the native library if it has not been)."""
    from engine import native

    return native.supports("lstm_addmm")


def unrolled_fits(lstm: nn.Module) -> bool:
    return (type(lstm) is nn.LSTM and not lstm.bidirectional and not lstm.batch_first and lstm.bias
            and lstm.proj_size == 0)

