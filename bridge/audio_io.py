"""Reading and writing audio files (soundfile/libsndfile), with user-facing errors and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.errors import BadAudio, UserError

# Peak below this counts as silence: under one 16-bit step (3e-5), i.e. nothing was recorded.
SILENCE_PEAK = 1e-5


def load_audio(path: str | Path, *, allow_silence: bool = False) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 [channels, n] and its sample rate.

    Raises BadAudio for a missing, unreadable, non-audio, empty or (unless `allow_silence`) all-silent file.
    """
    path = Path(path)
    try:
        exists = path.exists()  # raises for e.g. a name longer than the file system allows
    except OSError as exc:
        raise BadAudio(f"cannot read {path}: {exc.strerror or exc}") from None
    if not exists:
        raise BadAudio(f"audio file not found: {path}")
    if not path.is_file():
        raise BadAudio(f"{path} is not a file; give the path of an audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(
            f"could not read {path} as audio ({exc}); use WAV, AIFF, FLAC, OGG or MP3"
        ) from None
    except OSError as exc:
        raise BadAudio(f"could not open {path}: {exc.strerror or exc}") from None
    if data.shape[0] == 0:
        raise BadAudio(f"{path} contains no audio (0 samples); record or export it again")
    audio = np.ascontiguousarray(data.T)
    if not np.all(np.isfinite(audio)):
        raise BadAudio(f"{path} contains NaN or infinite samples; export it again")
    if not allow_silence and float(np.abs(audio).max()) < SILENCE_PEAK:
        raise BadAudio(f"{path} is silent; check the recording level or choose another file")
    return audio, int(sr)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step.

    Readers never see a half-written file, and a failed write leaves the old file in place.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_wav_atomic(path: str | Path, audio: np.ndarray, sample_rate: int, *, float32: bool = False) -> None:
    """Write [channels, n] (or mono [n]) audio as WAV: 16-bit PCM (clipped to ±1), or 32-bit float."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or (audio.shape[0] > audio.shape[1] > 0):
        raise BadAudio(f"audio to write must be [channels, samples], got shape {audio.shape}")
    if not float32:
        # libsndfile does not clip float → int by default; out-of-range samples would wrap around.
        audio = np.clip(audio, -1.0, 1.0)
    with atomic_output(path) as tmp:
        sf.write(str(tmp), audio.T, int(sample_rate), subtype="FLOAT" if float32 else "PCM_16", format="WAV")
