"""Microphone capture for humming a melody: `/melody/record/start` opens the input, `/stop` closes it.

The stream is open only while recording, so the bridge does not hold the microphone otherwise. The callback
copies into a buffer allocated before the stream starts (at most MAX_SECONDS; what comes after is dropped and
counted), so it neither allocates nor blocks.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from engine.errors import BadAudio, UserError

from .audio_out import find_device

log = logging.getLogger(__name__)

MAX_SECONDS = 60.0
MIN_SECONDS = 0.25  # less than this is a click, not a melody


class MicRecorder:
    """Records mono audio from one input device, on demand."""

    def __init__(self, device: str, max_seconds: float = MAX_SECONDS):
        import sounddevice as sd

        self._sd = sd
        info = find_device(device, "input")
        self.device_name, self.device_index = info["name"], info["index"]
        self.rate = int(info["default_samplerate"])
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._stream = None
        self._buf = np.zeros((0, 1), np.float32)
        self._n = 0
        self._dropped = 0

    def start(self) -> None:
        """Start recording (UserError if already recording or the device cannot be opened)."""
        sd = self._sd
        with self._lock:
            if self._stream is not None:
                raise UserError("already recording; send /melody/record/stop first", code="bad_input")
            self._buf = np.zeros((int(self.max_seconds * self.rate), 1), np.float32)
            self._n, self._dropped = 0, 0
            try:
                stream = sd.InputStream(device=self.device_index, samplerate=self.rate, channels=1,
                                        dtype="float32", callback=self._callback)
                stream.start()
            except sd.PortAudioError as exc:
                raise UserError(f"cannot open the microphone {self.device_name!r}: {exc}", code="bad_input") from None
            self._stream = stream
        log.info("recording from %s at %d Hz (at most %.0f s)", self.device_name, self.rate, self.max_seconds)

    def stop(self) -> tuple[np.ndarray, int]:
        """Stop and return the recording as ([1, n] float32, rate). BadAudio if it is too short."""
        with self._lock:
            stream, self._stream = self._stream, None
            if stream is None:
                raise UserError("not recording; send /melody/record/start first", code="bad_input")
            try:
                stream.stop()
                stream.close()
            except self._sd.PortAudioError as exc:
                log.warning("closing the microphone: %s", exc)
            audio = self._buf[: self._n, 0].copy()[None, :]
            self._buf = np.zeros((0, 1), np.float32)
        if self._dropped:
            log.warning("the recording was cut at %.0f s; %d samples dropped", self.max_seconds, self._dropped)
        seconds = audio.shape[1] / self.rate
        log.info("recorded %.2f s from %s", seconds, self.device_name)
        if seconds < MIN_SECONDS:
            raise BadAudio(f"the recording is only {seconds:.2f} s long; hum for at least a second")
        return audio, self.rate

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except self._sd.PortAudioError:
                pass

    def _callback(self, indata, frames, time_info, status) -> None:
        try:
            buf, n = self._buf, self._n
            take = min(frames, len(buf) - n)
            if take > 0:
                buf[n:n + take] = indata[:take, :1]
                self._n = n + take
            self._dropped += frames - max(take, 0)
        except Exception:  # an exception would end the stream; losing one block is better
            pass
