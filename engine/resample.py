"""The project's one sample-rate converter for whole clips (prompts, melodies, humming): librosa's soxr_hq.

Live output converts while it plays, chunk by chunk, with soxr's streaming resampler (bridge/audio_out.py); that
needs state carried between chunks, which this does not.
"""

from __future__ import annotations

import numpy as np


def resample(wav: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """`wav` [..., samples] at `sample_rate` -> float32 [..., samples'] at `target_rate` (each channel alone)."""
    wav = np.asarray(wav, dtype=np.float32)
    if sample_rate == target_rate:
        return wav
    import librosa  # slow to import: only when a clip needs converting

    return librosa.resample(wav, orig_sr=sample_rate, target_sr=target_rate, axis=-1).astype(np.float32, copy=False)
