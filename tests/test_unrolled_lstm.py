"""The codec's LSTM unrolled over frames: the same outputs and state as torch's nn.LSTM."""

import pytest
import torch
from torch import nn

from engine.codec import Codec, swap_modules
from engine.unrolled_lstm import UnrolledLSTM, unrolled_fits
from tests.test_stream_decode import MIN_SNR_DB, one_shot, snr_db, stream, tiny_codec
from engine.stream_decode import StreamingDecoder

MAX_ERROR = 1e-5  # fp32 rounding on gate values in (-1, 1)


class ForgetsState(UnrolledLSTM):
    """Negative control: the state handed in is ignored (each push would restart the recurrence)."""

    def forward(self, x, state=None):
        return super().forward(x, None)


@pytest.mark.parametrize("layers, frames, batch, with_state", [(2, 7, 1, True), (1, 3, 2, False), (3, 1, 3, True)])
def test_equals_torch_lstm(layers, frames, batch, with_state):
    torch.manual_seed(layers * 10 + frames)
    lstm = nn.LSTM(12, 12, layers).eval()
    x = torch.randn(frames, batch, 12)
    state = (torch.randn(layers, batch, 12), torch.randn(layers, batch, 12)) if with_state else None
    with torch.no_grad():
        want, (want_h, want_c) = lstm(x, state)
        got, (got_h, got_c) = UnrolledLSTM(lstm)(x, state)
        forgot, _ = ForgetsState(lstm)(x, state)
    for g, w in ((got, want), (got_h, want_h), (got_c, want_c)):
        assert g.shape == w.shape and float((g - w).abs().max()) < MAX_ERROR
    if with_state:
        assert float((forgot - want).abs().max()) > 100 * MAX_ERROR


def test_only_plain_lstms_fit():
    assert unrolled_fits(nn.LSTM(4, 4, 2))
    assert not unrolled_fits(nn.LSTM(4, 4, 2, bidirectional=True))
    assert not unrolled_fits(nn.LSTM(4, 4, 2, batch_first=True))
    assert not unrolled_fits(nn.LSTM(4, 4, 2, bias=False))
    assert not unrolled_fits(nn.LSTM(4, 8, 1, proj_size=4))
    assert not unrolled_fits(nn.GRU(4, 4))
    with pytest.raises(ValueError, match="unidirectional"):
        UnrolledLSTM(nn.LSTM(4, 4, bidirectional=True))


def test_codec_decodes_as_before():
    reference = tiny_codec()
    codec = tiny_codec()
    assert swap_modules(codec.decoder, unrolled_fits, UnrolledLSTM) == 1
    codes = torch.randint(0, 2048, (4, 41), generator=torch.Generator().manual_seed(5))
    want = one_shot(reference, codes, 1)
    assert snr_db(one_shot(codec, codes, 1), want) >= MIN_SNR_DB
    assert snr_db(stream(StreamingDecoder(codec, 1), codes, 4), want) >= MIN_SNR_DB  # state carried across pushes


def test_codec_wrapper_uses_it():
    wrapped = Codec(tiny_codec(), channels=1, n_codebooks=4)
    assert any(isinstance(m, UnrolledLSTM) for m in wrapped.model.decoder.modules())
    assert not any(isinstance(m, nn.LSTM) for m in wrapped.model.decoder.modules())
