"""The codec's transposed convs as one polyphase matmul: the same output as torch's conv_transpose1d."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from engine.codec import Codec, fold_weight_norm, swap_modules
from engine.polyphase import PolyphaseConvTranspose1d, polyphase_fits
from tests.test_stream_decode import MIN_SNR_DB, one_shot, snr_db, stream, tiny_codec
from engine.stream_decode import StreamingDecoder

# fp32 rounding of a sum over 2 * C_in terms of ~1: a few 1e-6 relative to the output's scale.
MAX_RELATIVE_ERROR = 1e-5


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


class SwappedTaps(PolyphaseConvTranspose1d):
    """Negative control: each frame multiplied by the other frame's taps."""

    def __init__(self, conv: nn.ConvTranspose1d):
        super().__init__(conv)
        c_in = self.in_channels
        self.weight = torch.cat([self.weight[:, c_in:], self.weight[:, :c_in]], dim=1)


@pytest.mark.parametrize("c_in, c_out, stride, frames, batch", [
    (32, 16, 8, 5, 1), (16, 8, 5, 12, 2), (8, 4, 4, 30, 3), (6, 3, 1, 7, 1), (12, 1, 2, 1, 2)])
def test_equals_torch_conv_transpose(c_in, c_out, stride, frames, batch):
    torch.manual_seed(stride + frames)
    conv = nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride)
    x = torch.randn(batch, c_in, frames)
    with torch.no_grad():
        want = conv(x)
        got = PolyphaseConvTranspose1d(conv)(x)
        swapped = SwappedTaps(conv)(x)
    assert got.shape == want.shape
    assert relative_error(got, want) < MAX_RELATIVE_ERROR
    assert relative_error(swapped, want) > 100 * MAX_RELATIVE_ERROR


def test_only_plain_double_stride_convs_fit():
    assert polyphase_fits(nn.ConvTranspose1d(4, 4, 8, 4))
    assert not polyphase_fits(nn.ConvTranspose1d(4, 4, 7, 4))  # kernel != 2 x stride
    assert not polyphase_fits(nn.ConvTranspose1d(4, 4, 8, 4, padding=1))
    assert not polyphase_fits(nn.ConvTranspose1d(4, 4, 8, 4, groups=2))
    assert not polyphase_fits(nn.Conv1d(4, 4, 8, 4))
    with pytest.raises(ValueError, match="kernel = 2 x stride"):
        PolyphaseConvTranspose1d(nn.ConvTranspose1d(4, 4, 3, 1))
    weight_normed = nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(4, 4, 8, 4))
    assert not polyphase_fits(weight_normed)  # fold first: the parametrization would be frozen silently


def test_codec_decodes_as_before():
    codec = tiny_codec()
    reference = copy.deepcopy(codec)
    fold_weight_norm(codec)
    assert swap_modules(codec.decoder, polyphase_fits, PolyphaseConvTranspose1d) == 4  # one per upsampling ratio
    assert not any(isinstance(m, nn.ConvTranspose1d) for m in codec.modules())
    codes = torch.randint(0, 2048, (4, 37), generator=torch.Generator().manual_seed(3))
    want = one_shot(reference, codes, 1)
    assert snr_db(one_shot(codec, codes, 1), want) >= MIN_SNR_DB
    assert snr_db(stream(StreamingDecoder(codec, 1), codes, 5), want) >= MIN_SNR_DB


def test_codec_wrapper_uses_it():
    wrapped = Codec(tiny_codec(), channels=1, n_codebooks=4)
    swapped = [m for m in wrapped.model.decoder.modules() if isinstance(m, PolyphaseConvTranspose1d)]
    assert len(swapped) == 4
    codes = torch.randint(0, 2048, (4, 9), generator=torch.Generator().manual_seed(4))
    want = one_shot(tiny_codec(), codes, 1)
    assert snr_db(wrapped.decode(codes).numpy(), want) >= MIN_SNR_DB
