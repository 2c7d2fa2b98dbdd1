"""A Meta (audiocraft) export of the same weights loads to the same model: same greedy tokens."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.checkpoint import load_model
from engine.errors import ModelNotFound
from engine.generate import open_stream
from engine.sampling import SamplingSettings
from engine.tiny import tiny_tokenizer
from tests.meta_checkpoint import write_meta_checkpoint


def _fp16_rounded_model(ref, folder):
    """Our model loaded from the Hugging Face weights rounded to fp16, as Meta's export ships the LM."""
    ref = copy.deepcopy(ref)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.")):
                p.copy_(p.half().float())
    ref.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def _cache_entry(cache, repo_id, save):
    snap = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    save(snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("b" * 40)


@pytest.mark.parametrize("codec_form", ["full", "pretrained"])
def test_meta_export_gives_the_same_tokens(codec_form, tmp_path, monkeypatch, tiny_mono, mono_model):
    import huggingface_hub.constants as hc

    _, ref = tiny_mono
    cache = tmp_path / "hub"
    # Meta's export names its T5 (e.g. 't5-base') and, in one form, its codec; both resolve like hub ids.
    _cache_entry(cache, "test-org/tiny-t5", lambda d: (ref.text_encoder.save_pretrained(d), tiny_tokenizer().save_pretrained(d)))
    if codec_form == "pretrained":
        _cache_entry(cache, "facebook/encodec_32khz", ref.audio_encoder.save_pretrained)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)

    sd = ref.state_dict()
    decoder_state = {k: v for k, v in sd.items() if k.startswith(("decoder.", "enc_to_dec_proj."))}
    folder = tmp_path / "meta"
    if codec_form == "full":
        write_meta_checkpoint(folder, decoder_state, ref.config.decoder, text_encoder_name="test-org/tiny-t5",
                              encodec_state=ref.audio_encoder.state_dict(), encodec_config=ref.config.audio_encoder,
                              pretrained_name=None)
    else:
        write_meta_checkpoint(folder, decoder_state, ref.config.decoder, text_encoder_name="test-org/tiny-t5",
                              pretrained_name="facebook/encodec_32khz")
    assert sorted(p.name for p in folder.iterdir()) == ["compression_state_dict.bin", "state_dict.bin"]

    meta = load_model(str(folder), device="cpu")
    greedy = SamplingSettings(greedy=True)
    ours = open_stream(meta, "lo fi piano", greedy, frames=100).run()
    # Meta ships fp16 weights: compare with the HF-format model given the same fp16-rounded weights.
    expected = open_stream(_fp16_rounded_model(ref, tmp_path / "rounded"), "lo fi piano", greedy, frames=100).run()
    assert torch.equal(ours, expected)
    wav = torch.randn(1, 6400) * 0.2
    assert torch.equal(meta.codec.encode(wav), mono_model.codec.encode(wav))


def test_meta_export_without_its_t5_says_so(tmp_path, monkeypatch, tiny_mono):
    import huggingface_hub.constants as hc

    _, ref = tiny_mono
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    sd = {k: v for k, v in ref.state_dict().items() if k.startswith(("decoder.", "enc_to_dec_proj."))}
    write_meta_checkpoint(tmp_path / "meta", sd, ref.config.decoder, text_encoder_name="test-org/tiny-t5")
    with pytest.raises(ModelNotFound, match="test-org/tiny-t5"):
        load_model(str(tmp_path / "meta"), device="cpu")


@pytest.mark.parametrize("segment_seconds,chroma_frames", [(30, 235), (10, 79)])
def test_meta_melody_export_gives_the_same_tokens(segment_seconds, chroma_frames, tmp_path, monkeypatch, tiny_melody):
    """The chroma length comes from the export's segment duration: a centred STFT with hop 4096 at 32 kHz gives
    floor(32000 x seconds / 4096) + 1 frames (235 for Meta's 30 s, 79 for 10 s). The 10 s case is the one that
    catches a loader falling back to the default of 235."""
    import huggingface_hub.constants as hc
    import numpy as np

    _, ref = tiny_melody
    cache = tmp_path / "hub"
    _cache_entry(cache, "test-org/tiny-t5", lambda d: (ref.text_encoder.save_pretrained(d), tiny_tokenizer().save_pretrained(d)))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    sd = {k: v for k, v in ref.state_dict().items() if k.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj."))}
    write_meta_checkpoint(tmp_path / "meta", sd, ref.config.decoder, text_encoder_name="test-org/tiny-t5",
                          encodec_state=ref.audio_encoder.state_dict(), encodec_config=ref.config.audio_encoder,
                          pretrained_name=None, segment_duration=segment_seconds)
    meta = load_model(str(tmp_path / "meta"), device="cpu")
    assert meta.melody is not None and meta.melody.chroma_frames == chroma_frames
    chroma = np.eye(12, dtype=np.float32)[np.random.default_rng(0).integers(0, 12, 60)]
    greedy = SamplingSettings(greedy=True)
    ours = open_stream(meta, "jazz piano", greedy, frames=60, melody=chroma).run()
    # The same model in Hugging Face format, told the same chroma length in its config.
    same = copy.deepcopy(ref)
    same.config.chroma_length = chroma_frames
    expected = open_stream(_fp16_rounded_model(same, tmp_path / "rounded"), "jazz piano", greedy, frames=60,
                           melody=chroma).run()
    assert torch.equal(ours, expected)
