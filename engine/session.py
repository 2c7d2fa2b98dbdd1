"""A streaming session: audio out chunk by chunk while the LM generates, on the bar lines of the song.

The token stream settles one frame per decoder call; the streaming decoder turns settled frames into final audio
at a bounded cost per chunk; the session cuts that audio at chunk boundaries. Boundaries in bars are exact:
chunk j starts at round(j x bars_per_chunk x samples_per_bar), a pure function of j, so bar lines never drift
however the audio was cut. Nothing is recomputed between chunks: the KV cache lives as long as the stream.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np
import torch

from engine.bars import Tempo, tempo_text
from engine.codec_worker import CodecWorker
from engine.errors import UserError
from engine.generate import check_seconds, frames_for_seconds, open_stream
from engine.model import MusicGen
from engine.resample import resample
from engine.sampling import SamplingSettings
from engine.stream_decode import StreamingDecoder
from engine.token_stream import TokenStream

log = logging.getLogger(__name__)

PROMPT_DECODE_CONTEXT = 25  # prompt frames decoded (and discarded) first so new audio joins the prompt seamlessly
# Each decoder push re-runs the codec's synthesis stage over its context and holdback (a fixed cost per push,
# measured in benchmarks/RESULTS.md): settled frames are pushed in groups, and at once when a chunk can be completed.
DECODE_EVERY_FRAMES = 25


@dataclass
class Chunk:
    index: int
    audio: np.ndarray  # [channels, samples] float32
    start_sample: int  # from the first sample of new audio
    start_beat: Fraction | None  # beats from the start of new audio (None without a tempo)
    beats: Fraction | None
    last: bool


class StreamSession:
    """One streaming request. Iterate it for `Chunk`s; `cancel()` from any thread stops it within one step.

    Length: `seconds`, or `bars` with a `tempo`, or neither for endless (until cancelled or `stop()`).
    Chunks: `chunk_bars` (needs a tempo) or `chunk_seconds`. `open_tokens` opens the token stream
    (`engine.generate.open_stream`'s signature; a batching engine gives its own). `codec`: a worker that decodes
    off this thread (`engine.codec_worker`) while this one goes on stepping the token stream; None decodes here.
    """

    def __init__(
        self,
        model: MusicGen,
        prompt: str,
        settings: SamplingSettings = SamplingSettings(),
        *,
        seconds: float | None = None,
        bars: float | None = None,
        tempo: Tempo | None = None,
        chunk_seconds: float | None = None,
        chunk_bars: float | None = None,
        audio_prompt: tuple[np.ndarray, int] | None = None,
        melody: np.ndarray | None = None,
        context_seconds: float | None = None,
        keep_seconds: float | None = None,
        tempo_in_prompt: bool = True,
        open_tokens: Callable[..., TokenStream] = open_stream,
        codec: CodecWorker | None = None,
    ):
        self.model, self.tempo = model, tempo
        sr = model.sample_rate
        if (bars is not None or chunk_bars is not None) and tempo is None:
            raise UserError("a length in bars needs a tempo (bpm and time signature)", code="bad_args")
        if bars is not None and seconds is not None:
            raise UserError("give the length in seconds or in bars, not both", code="bad_args")
        for name, v in (("bars", bars), ("chunk_bars", chunk_bars), ("chunk_seconds", chunk_seconds),
                        ("context_seconds", context_seconds)):
            if v is not None and not (v > 0 and v < 1e6):
                raise UserError(f"{name} must be a positive number, got {v!r}", code="bad_args")
        if bars is not None:
            self.total_samples = tempo.bars_to_samples(Fraction(bars), sr)
        elif seconds is not None:
            self.total_samples = round(seconds * sr)
        else:
            self.total_samples = None  # endless
        if self.total_samples is not None:
            check_seconds(model, self.total_samples / sr, slide=context_seconds is not None)
        self._beat = None  # exact song beat of chunk boundary j, when chunks are in bars
        if chunk_bars is not None:
            self._boundary = lambda j: tempo.bars_to_samples(Fraction(chunk_bars) * j, sr)
            self._beat = lambda j: Fraction(chunk_bars) * j * tempo.beats_per_bar
        else:
            step = Fraction(chunk_seconds if chunk_seconds is not None else 1.0).limit_denominator(10**6) * sr
            self._boundary = lambda j: round(step * j)

        self.prompt_text = tempo_text(prompt, tempo, enabled=tempo_in_prompt) if tempo is not None else prompt
        prompt_codes = None
        if audio_prompt is not None:
            wav, wav_sr = audio_prompt
            wav = resample(np.atleast_2d(wav), wav_sr, sr)
            if wav.shape[-1] < model.hop:
                raise UserError("the audio prompt is shorter than one codec frame (20 ms)", code="bad_audio")
            prompt_codes = model.codec.encode(torch.from_numpy(wav))
        self.prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[1]
        self.prompt_codes = prompt_codes

        window = model.max_frames if context_seconds is None else min(model.max_frames, frames_for_seconds(model, context_seconds))
        keep = None if keep_seconds is None else frames_for_seconds(model, keep_seconds)
        self.cancel_event = threading.Event()
        frames = None if self.total_samples is None else -(-self.total_samples // model.hop)
        self.stream = open_tokens(model, self.prompt_text, settings, frames=frames, prompt_codes=prompt_codes,
                                  melody=melody, window_frames=window, keep_frames=keep, align=self._align,
                                  cancel=self.cancel_event)
        self.seed = self.stream.seed
        self.decoder = StreamingDecoder(model.codec.model, channels=model.channels)
        self.codec = codec
        self._buf = np.zeros((model.channels, 0), np.float32)  # decoded new audio not yet handed out
        self._skip = 0
        # What the decoder will have been given and will have returned once every push so far is decoded (frames,
        # prompt context included): pushes are decided from these, so they are the same with or without a worker.
        self._sent = self._out = 0
        self._skip0 = 0  # samples of prompt context at the start of the decoder's audio
        self._jobs: deque[tuple[Future, bool]] = deque()  # (audio to come, is the flush), in order
        self._pending = 0  # settled frames not yet pushed
        self._target = 0  # the chunk whose end the next covering push aims at
        self._flushed = self._finished = False
        # Stepping ahead while the codec works only helps where the LM steps on this thread (a batching engine's
        # scheduler steps on its own), and only finite streams do it: a jam reads its real-time factor from the
        # steps taken per chunk (bridge/jam.py), which steps taken ahead would inflate.
        self._steps_here = isinstance(self.stream, TokenStream) and self.total_samples is not None
        if prompt_codes is not None:
            # Decode the end of the prompt first so the new audio continues it without a seam; drop its samples.
            ctx = prompt_codes[:, -PROMPT_DECODE_CONTEXT:]
            self._skip = self._skip0 = ctx.shape[1] * model.hop
            self._sent, self._out = ctx.shape[1], max(0, ctx.shape[1] - self.decoder.holdback)
            self._feed(self.decoder.push(ctx))
        self._stop = False

    def _expected(self, extra: int = 0) -> int:
        """Samples of new audio out of the decoder once every push so far, and `extra` more frames, are decoded."""
        out = self._sent if self._flushed else max(self._out, self._sent + extra - self.decoder.holdback)
        return max(0, out * self.model.hop - self._skip0)

    def _push(self, n: int) -> None:
        """Decode the last `n` settled frames of the stream (on the codec worker when there is one)."""
        if n:
            total = self.stream.new_frames
            codes = self.stream.codes(total - n, total)
            self._sent += n
            self._out = max(self._out, self._sent - self.decoder.holdback)
            if self.codec is None:
                self._feed(self.decoder.push(codes))
            else:
                self._jobs.append((self.codec.submit(self.decoder, codes.clone()), False))

    def _flush(self) -> None:
        self._flushed = True
        if self.codec is None:
            self._feed(self.decoder.flush())
            self._finished = True
        else:
            self._jobs.append((self.codec.submit(self.decoder, None), True))

    def _collect(self, wait: bool) -> None:
        """Feed the worker's finished decodes, in order (waiting for the oldest when `wait`)."""
        while self._jobs and (wait or self._jobs[0][0].done()):
            fut, last = self._jobs.popleft()
            self._feed(fut.result())
            self._finished |= last
            wait = False

    def _feed(self, audio: np.ndarray) -> None:
        cut = min(self._skip, audio.shape[1])
        self._skip -= cut
        if audio.shape[1] > cut:
            self._buf = np.concatenate([self._buf, audio[:, cut:]], axis=1)

    # Window slides start on a bar line when a tempo is known (frame of the first bar line at or after `frame`).
    def _align(self, frame: int) -> int:
        if self.tempo is None:
            return frame
        hop, sr, P = self.model.hop, self.model.sample_rate, self.prompt_frames
        spb = self.tempo.samples_per_bar(sr)
        k = int((Fraction(frame - P) * hop) // spb)
        while P + round(self.tempo.bar_start_sample(k, sr) / hop) < frame:
            k += 1
        return P + round(self.tempo.bar_start_sample(k, sr) / hop)

    def cancel(self) -> None:
        """Stop from any thread; iteration raises `engine.errors.Cancelled` within one decoder step."""
        self.cancel_event.set()

    def stop(self) -> None:
        """End an endless stream gracefully after the chunk in progress."""
        self._stop = True

    @property
    def steps(self) -> int:
        return self.stream.steps

    @property
    def busy_seconds(self) -> float | None:
        """The token stream's own stepping time where it steps on its own (`BatchedStream`), else None."""
        return getattr(self.stream, "busy_seconds", None)

    def _end(self, j: int) -> int:
        """Where chunk j ends (samples of new audio)."""
        end = self._boundary(j + 1)
        return end if self.total_samples is None else min(end, self.total_samples)

    def _advance(self) -> None:
        """One frame from the token stream (or the flush at its end), pushed to the decoder in groups."""
        if self.stream.done:
            self._push(self._pending)
            self._pending = 0
            self._flush()
            return
        self._pending += self.stream.step().shape[1]
        # Push when the first chunk not yet covered can be completed (the decoder keeps `holdback` frames back),
        # or when enough frames wait: a function of frame counts only, so the groups, and the audio, do not depend
        # on how fast the codec runs.
        have = self._expected()
        while self._end(self._target) <= have and (self.total_samples is None or self._end(self._target) < self.total_samples):
            self._target += 1
        covers = self._expected(self._pending) >= self._end(self._target)
        if self._pending and (covers or self._pending >= DECODE_EVERY_FRAMES):
            self._push(self._pending)
            self._pending = 0

    def __iter__(self) -> Iterator[Chunk]:
        try:
            yield from self._chunks()
        finally:
            self.stream.release()  # however the iteration ended (an error, a cancellation), the tokens are done with

    def _chunks(self) -> Iterator[Chunk]:
        emitted, j = 0, 0  # samples of new audio handed out; chunk index
        while True:
            end = self._end(j)
            while emitted + self._buf.shape[1] < end and not self._finished:
                if self._jobs and self._jobs[0][0].done():
                    self._collect(wait=False)
                elif self._expected() >= end or self._flushed:
                    # All of this chunk's audio is being decoded: step the LM meanwhile (up to the next chunk's
                    # frames), which is what takes the codec off the critical path, or else wait for it.
                    ahead = self._steps_here and not (self._flushed or self._stop or self.stream.done)
                    if self._jobs and not (ahead and self._expected(self._pending) < self._end(j + 1)):
                        self._collect(wait=True)
                    else:
                        self._advance()
                else:
                    self._advance()
            n = min(end - emitted, self._buf.shape[1])
            last = self.total_samples is not None and emitted + n >= self.total_samples
            if n > 0:
                yield self._chunk(j, self._buf[:, :n], emitted, last, on_boundary=emitted + n == end)
                self._buf = self._buf[:, n:]
                emitted += n
                j += 1
            if last or self._stop or (self._finished and self._buf.shape[1] == 0):
                return

    def _chunk(self, index: int, audio: np.ndarray, start: int, last: bool, on_boundary: bool) -> Chunk:
        sr = self.model.sample_rate
        beat = beats = None
        if self._beat is not None:  # bar chunks: the exact beats of their bar lines, not of rounded samples
            beat = self._beat(index)
            end = self._beat(index + 1) if on_boundary else self.tempo.samples_to_beats(start + audio.shape[1], sr)
            beats = end - beat
        elif self.tempo is not None:
            beat = self.tempo.samples_to_beats(start, sr)
            beats = self.tempo.samples_to_beats(start + audio.shape[1], sr) - beat
        return Chunk(index, np.ascontiguousarray(audio, dtype=np.float32), start, beat, beats, last)
