"""The codec's LSTM unrolled over frames: the same outputs and state as torch's nn.LSTM."""

import pytest
import torch
from torch import nn

from engine.codec import Codec, swap_modules
from engine.unrolled_lstm import UnrolledLSTM, half_recurrent_supported, unrolled_fits
from tests.test_stream_decode import MIN_SNR_DB, one_shot, snr_db, stream, tiny_codec
from engine.stream_decode import StreamingDecoder

MAX_ERROR = 1e-5  # fp32 rounding on gate values in (-1, 1)
HALF_MIN_SNR_DB = 115  # the tiny codec's audio with fp16 recurrent weights against fp32: 123.6 dB measured, bf16 111


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


# fp16 recurrent weights (the CPU default where the native kernel runs). Measured on 2-layer LSTMs of 64 and 256
# with random weights: the output ~5e-5 from fp32's (relative norm); bf16 weights ~4.2e-4. Bound: 3x fp16's.
HALF_BOUND = 1.5e-4
needs_f16 = pytest.mark.skipif(not half_recurrent_supported(), reason="the fp16 recurrent kernel needs AVX2")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _rounded(lstm: nn.LSTM, dtype: torch.dtype) -> UnrolledLSTM:
    """The exact LSTM with its recurrent weights rounded to `dtype` (and computed in fp32)."""
    m = UnrolledLSTM(lstm)
    for name, w in m.named_buffers():
        if name.startswith("w_hh"):
            w.copy_(w.to(dtype).float())
    return m


@needs_f16
@pytest.mark.parametrize("wdtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("batch, k, n", [(1, 1024, 4096), (3, 20, 6), (2, 64, 257)])
def test_lstm_addmm_is_the_fp32_product_of_the_widened_weights(batch, k, n, wdtype):
    g = torch.Generator().manual_seed(k + n)
    x, bias, w = torch.randn(batch, k, generator=g), torch.randn(batch, n, generator=g), torch.randn(n, k, generator=g).to(wdtype)
    got = torch.ops.musicgen_bridge.lstm_addmm(bias, x, w)
    want = torch.addmm(bias, x, w.float().t())
    assert got.dtype == torch.float32 and got.shape == (batch, n)
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())  # fp32 sums in another order
    # Negative control: a tail the kernel skipped (k not a multiple of 8, n not of 4) would show.
    assert float((torch.addmm(bias, x[:, :-1], w[:, :-1].float().t()) - want).abs().max()) > 1e-4


@needs_f16
def test_lstm_addmm_gives_the_same_bits_on_any_thread_count():
    # Why the input projection runs on it too: a seed's audio must come again in another process.
    g = torch.Generator().manual_seed(0)
    x, bias, w = torch.randn(22, 1024, generator=g), torch.randn(22, 4096, generator=g), torch.randn(4096, 1024, generator=g)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(torch.ops.musicgen_bridge.lstm_addmm(bias, x, w))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


@needs_f16
def test_half_recurrent_weights_stay_within_their_bound_and_bf16_ones_do_not():
    torch.manual_seed(1)
    lstm = nn.LSTM(128, 128, 2).eval()
    x = torch.randn(30, 2, 128)
    state = (torch.randn(2, 2, 128), torch.randn(2, 2, 128))
    with torch.no_grad():
        want, (want_h, want_c) = UnrolledLSTM(lstm)(x, state)
        half = UnrolledLSTM(lstm, half_recurrent=True)
        got, (got_h, got_c) = half(x, state)
        same, _ = _rounded(lstm, torch.float16)(x, state)
        coarse, _ = _rounded(lstm, torch.bfloat16)(x, state)
    assert half.w_hh0.dtype == torch.float16 and half.w_ih0.dtype == torch.float32  # only the recurrent weights
    assert max(_relative(got, want), _relative(got_h, want_h), _relative(got_c, want_c)) < HALF_BOUND
    assert float((got - same).abs().max()) < MAX_ERROR  # the kernel is the rounded weights' fp32 product
    assert _relative(coarse, want) > HALF_BOUND  # negative control


@needs_f16
def test_the_codec_takes_half_recurrent_weights_on_cpu_and_keeps_its_audio():
    codes = torch.randint(0, 2048, (4, 41), generator=torch.Generator().manual_seed(5))
    exact = Codec(tiny_codec(), channels=1, n_codebooks=4, half_recurrent=False)
    default = Codec(tiny_codec(), channels=1, n_codebooks=4)
    assert default.half_recurrent and not exact.half_recurrent
    lstms = [m for m in default.model.decoder.modules() if isinstance(m, UnrolledLSTM)]
    assert lstms and all(m.w_hh0.dtype == torch.float16 for m in lstms)
    want = one_shot(exact.model, codes, 1)
    assert snr_db(one_shot(default.model, codes, 1), want) >= HALF_MIN_SNR_DB
    assert snr_db(stream(StreamingDecoder(default.model, 1), codes, 4), want) >= HALF_MIN_SNR_DB
    # Negative control: bf16-rounded recurrent weights miss the bound.
    for m in exact.model.decoder.modules():
        if isinstance(m, UnrolledLSTM):
            m.w_hh0.copy_(m.w_hh0.bfloat16().float())
            m.w_hh1.copy_(m.w_hh1.bfloat16().float())
    assert snr_db(one_shot(exact.model, codes, 1), want) < HALF_MIN_SNR_DB


def test_without_the_kernel_the_codec_keeps_fp32_and_asking_for_fp16_says_why(monkeypatch):
    monkeypatch.setattr("engine.unrolled_lstm.half_recurrent_supported", lambda: False)
    monkeypatch.setattr("engine.codec.half_recurrent_supported", lambda: False)
    assert not Codec(tiny_codec(), channels=1, n_codebooks=4).half_recurrent
    with pytest.raises(RuntimeError, match="AVX2"):
        UnrolledLSTM(nn.LSTM(8, 8), half_recurrent=True)
