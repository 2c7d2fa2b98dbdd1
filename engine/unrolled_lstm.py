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
    state (h, c) [layers, B, H] or None) -> (y [T, B, H], (h, c))."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if not unrolled_fits(lstm):
            raise ValueError(f"not a unidirectional time-major LSTM with biases and no projection: {lstm}")
        self.num_layers, self.hidden_size = lstm.num_layers, lstm.hidden_size
        for layer in range(lstm.num_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            self.register_buffer(f"w_ih{layer}", w_ih.detach().clone())
            self.register_buffer(f"w_hh{layer}", w_hh.detach().clone())
            self.register_buffer(f"bias{layer}", bias.detach().clone())

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        frames, batch, _ = x.shape
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih, w_hh, bias = (getattr(self, f"{n}{layer}") for n in ("w_ih", "w_hh", "bias"))
            gates_in = torch.addmm(bias, x.reshape(frames * batch, -1), w_ih.t()).view(frames, batch, -1)
            h, c = state[0][layer], state[1][layer]
            out = x.new_empty(frames, batch, self.hidden_size)
            for t in range(frames):
                h, c = self._cell(torch.addmm(gates_in[t], h, w_hh.t()), c)
                out[t] = h
            hs.append(h)
            cs.append(c)
            x = out
        return x, (torch.stack(hs), torch.stack(cs))

    @staticmethod
    def _cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = gates.chunk(4, dim=-1)  # torch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def unrolled_fits(lstm: nn.Module) -> bool:
    return (type(lstm) is nn.LSTM and not lstm.bidirectional and not lstm.batch_first and lstm.bias
            and lstm.proj_size == 0)

