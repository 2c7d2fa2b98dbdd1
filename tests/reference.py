"""Running transformers' MusicGen (the reference) and reading back its codes and per-step scores."""

from __future__ import annotations

import torch


def reference_generate(ref, tokenizer, prompt: str, new_frames: int, delay: int, guidance: float = 3.0, **kw):
    """Greedy codes [K, frames] (channels interleaved as our engine does) and per-step guided scores."""
    captured = []
    original = ref.audio_encoder.decode

    def capture(codes, *a, **k):
        captured.append(codes[0, 0].clone())
        return original(codes, *a, **k)

    ref.audio_encoder.decode = capture
    try:
        inputs = tokenizer([prompt], return_tensors="pt")
        out = ref.generate(**inputs, **kw, do_sample=False, guidance_scale=guidance, max_new_tokens=new_frames + delay,
                           return_dict_in_generate=True, output_scores=True)
    finally:
        ref.audio_encoder.decode = original
    if len(captured) == 2:  # stereo: left and right decoded apart; interleave [k0L, k0R, k1L, ...]
        codes = torch.stack(captured, dim=1).reshape(-1, captured[0].shape[-1])
    else:
        codes = captured[0]
    return codes, out.scores
