"""Streaming EnCodec decode: audio out chunk by chunk while codes are still being generated, at a cost per
chunk that does not grow with the length of the stream.

The 32 kHz MusicGen decoder (transformers' `EncodecDecoder`) is three stages, handled differently:

1. `pre`: a non-causal conv (kernel 7, at the frame rate) on the summed codebook embeddings. Its output for
   frame t needs frames t-3..t+3, so it is computed for a frame only once the 3 frames after it have arrived
   (or at flush, where the true end's padding applies, as in a one-shot decode).
2. `lstm`: 2 LSTM layers over frames, with a residual. Because stage 1 only ever hands it final values, its
   (h, c) state can be carried from push to push and is exact: no left context needed, whatever the LSTM's
   memory (random weights or real).
3. `synth`: ELU, transposed convs (x8, x5, x4, x4) with residual blocks, final conv. Finite support: an LSTM
   frame moves samples less than a frame before and after its own 640 (benchmarks/RESULTS.md). So each
   push re-runs this stage on a small window: `left_context` frames before the first new frame (their samples
   are trimmed) and the `holdback - 3` newest frames, whose audio waits for the next push (their right edge
   sees the window's padding instead of real data).

With left_context >= 1 and holdback >= 4 the streamed audio equals a one-shot decode up to float rounding
(benchmarks/stream_decode.py measures it). Holdback is the decoder's latency: 4 frames = 80 ms.

Codes are [K * channels, n]; a stereo model's 8 interleaved codebooks [k0L, k0R, k1L, ...] are decoded as two
mono streams, codes[0::2] and codes[1::2], batched together. Audio scales are not used (the 32 kHz codec has
normalize=False).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import EncodecModel
from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecLSTM

from engine.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_LEFT_CONTEXT_FRAMES = 2  # 1 is exact (support < 1 frame); 1 more guards rounding at a small cost (RESULTS.md)
DEFAULT_HOLDBACK_FRAMES = 4  # 3 for the pre-LSTM conv's right reach + 1 for the synthesis stage's: 80 ms


class StreamingDecoder:
    """Decode EnCodec codes pushed a few frames at a time; `push` returns only audio that will not change.

    Call `flush()` at the end of the stream for the held-back tail; it also resets the decoder for a new
    stream. Each push decodes at most left_context + new + holdback frames through the synthesis stage.
    """

    def __init__(
        self,
        codec: EncodecModel,
        channels: int = 1,
        left_context_frames: int = DEFAULT_LEFT_CONTEXT_FRAMES,
        holdback_frames: int = DEFAULT_HOLDBACK_FRAMES,
    ):
        layers = codec.decoder.layers
        if not (isinstance(layers[0], EncodecConv1d) and isinstance(layers[1], EncodecLSTM)):
            raise ValueError("expected transformers' EnCodec decoder layout: conv, LSTM, upsampling stack")
        if channels not in (1, 2):
            raise UserError(f"channels must be 1 (mono) or 2 (stereo), got {channels}")
        self.codec = codec
        self.channels = channels
        self.hop = int(np.prod(codec.config.upsampling_ratios))
        self.codebook_size = codec.config.codebook_size
        self.num_codebooks = codec.quantizer.num_quantizers  # per channel: 4 for the 32 kHz codec
        self._pre, self._lstm, self._synth = layers[0], layers[1].lstm, layers[2:]

        # The pre-LSTM conv's reach in frames on either side (no right reach if the codec is causal).
        pad = int(self._pre.padding_total)
        self.pre_right = 0 if self._pre.causal else pad // 2
        self.pre_left = pad - self.pre_right
        if left_context_frames < 0:
            raise UserError(f"left context must be >= 0 frames, got {left_context_frames}")
        if holdback_frames < self.pre_right:
            raise UserError(
                f"holdback must be at least {self.pre_right} frames (the codec's first conv looks "
                f"{self.pre_right} frames ahead), got {holdback_frames}"
            )
        self.left_context = left_context_frames
        self.holdback = holdback_frames
        self.last_frames_decoded = 0  # frames run through the synthesis stage by the last push/flush
        self.reset()

    @property
    def latency_ms(self) -> float:
        """Audio held back behind the newest code frame."""
        return 1000.0 * self.holdback * self.hop / self.codec.config.sampling_rate

    def reset(self) -> None:
        """Forget the stream; the next push starts a new one."""
        self._codes: torch.Tensor | None = None  # [streams, K, m]: frames from _codes_start to received
        self._codes_start = 0
        self._received = 0
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None  # LSTM (h, c)
        self._lstm_out: torch.Tensor | None = None  # [streams, C, m]: frames from _lstm_out_start to _lstm_done
        self._lstm_out_start = 0
        self._lstm_done = 0
        self._emitted = 0  # frames whose audio has been returned

    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    @property
    def buffered_frames(self) -> int:
        """Frames of codes plus LSTM outputs kept between pushes (bounded by the window sizes, not the stream)."""
        return sum(t.shape[-1] for t in (self._codes, self._lstm_out) if t is not None)

    def push(self, codes: torch.Tensor) -> np.ndarray:
        """Add codes [num_codebooks * channels, n] (n may be 0); returns the audio [channels, samples] now final."""
        streams = self._split(codes)
        self._codes = streams if self._codes is None else torch.cat([self._codes, streams], dim=-1)
        self._received += streams.shape[-1]
        return self._advance(final=False)

    def flush(self) -> np.ndarray:
        """The rest of the audio, decoded with the true end of the stream; then resets for a new stream."""
        audio = self._advance(final=True)
        self.reset()
        return audio

    def _split(self, codes: torch.Tensor) -> torch.Tensor:
        """[K * channels, n] -> [channels, K, n] on the codec's device, checked."""
        rows = self.num_codebooks * self.channels
        if codes.dim() != 2 or codes.shape[0] != rows:
            raise ValueError(f"codes must have shape [{rows}, frames], got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in 0..{self.codebook_size - 1} (undo the delay pattern and drop special tokens "
                f"first), got {int(codes.min())}..{int(codes.max())}"
            )
        device = next(self.codec.parameters()).device
        codes = codes.to(device=device, dtype=torch.long)
        if self.channels == 1:
            return codes[None]
        return torch.stack([codes[0::2], codes[1::2]])

    def state_key(self) -> tuple:
        """What decides the shapes of the next push or flush: decoders with equal keys can run as one batch."""
        return (id(self.codec), self.channels, self.left_context, self.holdback, self._received, self._codes_start,
                self._lstm_done, self._lstm_out_start, self._emitted, self._state is None)

    @torch.inference_mode()
    def _advance(self, final: bool) -> np.ndarray:
        self._run_lstm(final)
        return self._synthesize(final)

    def _run_lstm(self, final: bool) -> None:
        """Stages 1-2 for every frame whose conv output is now final."""
        ready = self._received if final else self._received - self.pre_right
        if ready <= self._lstm_done:
            return
        # The conv window starts pre_left frames before the first frame to compute (or at the true start,
        # which then gets the same edge padding as a one-shot decode) and ends at the newest frame.
        start = max(0, self._lstm_done - self.pre_left)
        codes = self._codes[..., start - self._codes_start :]
        embeddings = self.codec.quantizer.decode(codes.transpose(0, 1))  # [streams, D, frames]
        hidden = self._pre(embeddings)[..., self._lstm_done - start : ready - start]
        x = hidden.permute(2, 0, 1)  # [time, streams, C]
        y, self._state = self._lstm(x, self._state)
        y = (y + x).permute(1, 2, 0)
        self._lstm_out = y if self._lstm_out is None else torch.cat([self._lstm_out, y], dim=-1)
        self._lstm_done = ready
        # Keep only the codes the next conv window can reach.
        keep_from = max(0, self._lstm_done - self.pre_left)
        self._codes = self._codes[..., keep_from - self._codes_start :]
        self._codes_start = keep_from

    def _synthesize(self, final: bool) -> np.ndarray:
        """Stage 3 on a bounded window; returns the new final samples."""
        target = self._lstm_done if final else self._received - self.holdback
        if target <= self._emitted:
            self.last_frames_decoded = 0
            return np.zeros((self.channels, 0), dtype=np.float32)
        start = max(self._lstm_out_start, self._emitted - self.left_context)
        window = self._lstm_out[..., start - self._lstm_out_start :]
        self.last_frames_decoded = window.shape[-1]
        for layer in self._synth:
            window = layer(window)
        audio = window[:, 0, (self._emitted - start) * self.hop : (target - start) * self.hop]
        self._emitted = target
        keep_from = max(0, self._emitted - self.left_context)
        self._lstm_out = self._lstm_out[..., keep_from - self._lstm_out_start :]
        self._lstm_out_start = keep_from
        return np.ascontiguousarray(audio.float().cpu().numpy())


@torch.inference_mode()
def decode_together(decoders: list[StreamingDecoder], codes: list[torch.Tensor | None]) -> list[np.ndarray]:
    """One push (codes [K * channels, n]) or flush (None) for each of several decoders in the same state (equal
    `state_key()`, equal n), run as one batch through the codec: each stream's audio equals its own push's up to
    float rounding (tests/test_stream_decode.py), for one call's fixed costs instead of one per stream. Decoders
    in different states, or pushes of different lengths, run one by one."""
    final = codes[0] is None
    same = len({d.state_key() for d in decoders}) == 1 and len({None if c is None else c.shape[1] for c in codes}) == 1
    if len(decoders) == 1 or not same:
        return [d.flush() if c is None else d.push(c) for d, c in zip(decoders, codes)]
    lead = decoders[0]
    together = StreamingDecoder(lead.codec, channels=lead.channels, left_context_frames=lead.left_context,
                                holdback_frames=lead.holdback)
    cat = lambda ts, dim: None if ts[0] is None else torch.cat(ts, dim=dim)  # noqa: E731
    parts = [d._codes for d in decoders]
    if not final:
        split = [d._split(c) for d, c in zip(decoders, codes)]
        parts = split if parts[0] is None else [torch.cat([p, n], dim=-1) for p, n in zip(parts, split)]
    together._codes = cat(parts, 0)
    together._codes_start, together._lstm_done, together._lstm_out_start = lead._codes_start, lead._lstm_done, lead._lstm_out_start
    together._emitted = lead._emitted
    together._received = lead._received + (0 if final else codes[0].shape[1])
    together._lstm_out = cat([d._lstm_out for d in decoders], 0)
    if lead._state is not None:  # LSTM (h, c): [layers, streams, hidden]
        together._state = tuple(torch.cat([d._state[i] for d in decoders], dim=1) for i in range(2))
    audio = together._advance(final)
    n = lead.channels
    out = []
    for i, d in enumerate(decoders):
        if final:
            d.reset()
        else:
            rows = slice(i * n, (i + 1) * n)
            d._codes, d._received = together._codes[rows], together._received
            d._codes_start, d._lstm_done, d._emitted = together._codes_start, together._lstm_done, together._emitted
            d._lstm_out = None if together._lstm_out is None else together._lstm_out[rows]  # a push too short to reach the LSTM
            d._lstm_out_start = together._lstm_out_start
            d._state = None if together._state is None else tuple(t[:, rows] for t in together._state)
        d.last_frames_decoded = together.last_frames_decoded
        out.append(audio[i * n : (i + 1) * n] if audio.shape[1] else np.zeros((n, 0), np.float32))  # no new audio
    return out
