"""One request, start to finish: conditioning, the token stream, the codec.

`open_stream` is the shared entry point: one-shot generation runs the stream to its end, the streaming session
(engine/session.py) pulls frames from it as they become final.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from engine.errors import UserError
from engine.model import MusicGen
from engine.sampling import SamplingSettings, resolve_seed
from engine.token_stream import Conditioning, TokenStream

# Meta's extended generation: re-prefill the last 12 s of a 30 s window (stride 18 s).
KEEP_FRACTION = 12.0 / 30.0


@dataclass
class Generated:
    audio: np.ndarray  # [channels, samples] float32
    codes: Tensor  # [K, frames] int64, delay removed
    sample_rate: int
    seed: int
    steps: int


def make_conditioning(model: MusicGen, prompt: str, settings: SamplingSettings, melody: np.ndarray | None = None) -> Conditioning:
    guidance = settings.uses_guidance
    batch = 2 if guidance else 1
    if model.melody is not None:
        prefix = model.melody.prefix_fn(model, prompt, melody, guidance)
        return Conditioning(prefix=prefix, batch=batch)
    if melody is not None:
        raise UserError(f"{model.name} is not a melody model: use a musicgen-melody checkpoint for --melody", code="bad_args")
    return Conditioning(cross=model.text.condition(prompt, guidance).to(model.device), batch=batch)


def frames_for_seconds(model: MusicGen, seconds: float) -> int:
    return math.ceil(seconds * model.sample_rate / model.hop - 1e-9)


def check_seconds(model: MusicGen, seconds: float, slide: bool = False) -> None:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"seconds must be a positive number, got {seconds!r}", code="bad_args")
    if not slide and seconds > model.max_seconds + 1e-9:
        raise UserError(
            f"{seconds:g} s is past this model's limit of {model.max_seconds:g} s in one window: ask for at most "
            f"{model.max_seconds:g} s, or give --context-seconds to slide the window (endless mode)", code="bad_args"
        )


def open_stream(
    model: MusicGen,
    prompt: str,
    settings: SamplingSettings,
    *,
    frames: int | None,
    prompt_codes: Tensor | None = None,
    melody: np.ndarray | None = None,
    window_frames: int | None = None,
    keep_frames: int | None = None,
    align: Callable[[int], int] | None = None,
    cancel: threading.Event | None = None,
    step_mode: str = "auto",
) -> TokenStream:
    """A token stream for one request; `frames=None` streams without end (sliding windows)."""
    settings = SamplingSettings(**{**settings.__dict__, "seed": resolve_seed(settings.seed)}).validate(model.lm.cfg.card)
    window = min(window_frames or model.max_frames, model.max_frames)
    keep = keep_frames if keep_frames is not None else int(window * KEEP_FRACTION)
    keep = max(1, min(keep, window - 1))
    cond = make_conditioning(model, prompt, settings, melody)
    max_prefix = cond.prefix(0).shape[1] if cond.prefix is not None else 0
    # A long text prompt on a melody model takes positions from the window.
    window = max(2, min(window, model.max_positions - max_prefix - model.pattern.columns(0)))
    keep = max(1, min(keep, window - 1))
    return TokenStream(
        model.lm, model.pattern, settings, cond,
        prompt=prompt_codes, total_frames=frames, window_frames=window, keep_frames=keep, align=align,
        cancel=cancel, max_prefix=max_prefix, step_mode=step_mode,
    )


def warm_up(model: MusicGen) -> float:
    """A few guided decode steps, once after loading, so the first request pays no one-time cost: on CPU the
    decode step is traced here (engine.steps.TracedStep), and oneDNN sets up its kernels.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    open_stream(model, "", SamplingSettings(cfg=3.0, seed=0), frames=2).run()
    return time.perf_counter() - t0


def generate(
    model: MusicGen,
    prompt: str,
    seconds: float,
    settings: SamplingSettings = SamplingSettings(),
    *,
    prompt_codes: Tensor | None = None,
    melody: np.ndarray | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
) -> Generated:
    """`seconds` of new audio for `prompt` (continuing `prompt_codes` if given), in one window."""
    check_seconds(model, seconds)
    frames = frames_for_seconds(model, seconds)
    stream = open_stream(model, prompt, settings, frames=frames, prompt_codes=prompt_codes, melody=melody, cancel=cancel)
    codes = stream.run(on_frames=(lambda n: on_progress(n / frames)) if on_progress else None)
    audio = model.codec.decode(codes).numpy()[:, : round(seconds * model.sample_rate)]
    return Generated(audio=audio, codes=codes.clone(), sample_rate=model.sample_rate, seed=stream.seed, steps=stream.steps)
