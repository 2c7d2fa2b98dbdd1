"""Melody files → chroma for MusicGen-melody, a picture of it, and the `musicgen-bridge chroma` command.

By extension: .mid/.midi → `midi_chroma` (``bpm`` replaces the file's tempo map when given, ``track`` picks a
track by index or name); any other file is read as audio → the recipe's chroma (`engine.chroma`), or pYIN pitch
tracking with ``hum=True`` (`humming`). ``bpm`` and ``track`` mean nothing for audio and ``hum`` nothing for
MIDI: passing them there is an error rather than silently ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.chroma import CHROMA_HOP, CHROMA_SR, NOTE_NAMES, N_CHROMA, chroma_from_audio, melody_summary
from engine.errors import UserError

from .audio_io import atomic_output, load_audio
from .humming import chroma_from_humming
from .midi_chroma import chroma_from_midi

log = logging.getLogger(__name__)

MIDI_EXTENSIONS = (".mid", ".midi")


def melody_chroma_from_file(
    path: str | Path, *, hum: bool = False, bpm: float | None = None, track: int | str | None = None
) -> np.ndarray:
    """One-hot [frames, 12] melody chroma of a MIDI or audio file."""
    path = Path(path)
    if path.suffix.lower() in MIDI_EXTENSIONS:
        if hum:
            raise UserError(f"--hum is for voice recordings, but {path.name} is a MIDI file; leave --hum out")
        return chroma_from_midi(path, track=track, bpm=bpm)
    if bpm is not None:
        raise UserError(f"--bpm applies to MIDI files only; {path.name} is audio and keeps its own timing")
    if track is not None:
        raise UserError(f"--track applies to MIDI files only; {path.name} is audio")
    audio, sr = load_audio(path)
    return chroma_from_humming(audio, sr) if hum else chroma_from_audio(audio, sr)


def plot_chroma(chroma: np.ndarray, path: str | Path, *, title: str | None = None) -> None:
    """Save a PNG of a chromagram: note names up the y axis, seconds along x (frame centers)."""
    try:
        from matplotlib.figure import Figure  # pyplot-free: Agg canvas, no GUI, no global state
    except ImportError:
        raise UserError("plotting needs matplotlib; install it with `pip install matplotlib`") from None
    chroma = np.asarray(chroma, dtype=np.float32)
    if chroma.ndim != 2 or chroma.shape[1] != N_CHROMA or chroma.shape[0] == 0:
        raise UserError(f"a chromagram must have shape [frames, 12] with frames > 0, got {chroma.shape}")
    hop_s = CHROMA_HOP / CHROMA_SR
    fig = Figure(figsize=(max(6.0, min(24.0, chroma.shape[0] * 0.06)), 3.2), dpi=100)
    ax = fig.subplots()
    ax.imshow(
        chroma.T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest", vmin=0.0,
        extent=(-hop_s / 2, (chroma.shape[0] - 0.5) * hop_s, -0.5, N_CHROMA - 0.5),
    )
    ax.set_yticks(range(N_CHROMA), NOTE_NAMES)
    ax.set_xlabel("seconds")
    ax.set_ylabel("pitch class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")


def chroma_command(
    input: str,
    out: str,
    hum: bool = False,
    bpm: float | None = None,
    plot: str | None = None,
    track: int | str | None = None,
) -> np.ndarray:
    """`musicgen-bridge chroma INPUT --out X.npy [--hum] [--bpm B] [--track T] [--plot X.png]`."""
    chroma = melody_chroma_from_file(input, hum=hum, bpm=bpm, track=track)
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npy" to the temp name
            np.save(f, chroma)
    if plot:
        plot_chroma(chroma, plot, title=Path(input).name)
    log.info("%s: %d chroma frames (%.1f s); most frames: %s", input, len(chroma),
             (len(chroma) - 1) * CHROMA_HOP / CHROMA_SR, melody_summary(chroma))
    return chroma
