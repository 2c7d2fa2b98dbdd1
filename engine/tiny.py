"""Tiny MusicGen configurations with the real structure, for `--model random-tiny` and for the test suite.

The shapes are small but every part is the published one: T5 narrower than the decoder (so the projection
exists), EnCodec at 32 kHz with ratios 8·5·4·4 (50 frames/s) and 2048-entry codebooks, 4 codebooks mono or
8 interleaved stereo.
"""

from __future__ import annotations

import torch

WORDS = (
    "a an and the with of in on for to from at by lo fi lofi hip hop house techno trance ambient pad drums drum "
    "bass dnb jungle jazz trio piano keys rhodes organ guitar strings synth lead arp pluck cinematic orchestral "
    "epic dark warm bright soft hard slow fast chill groove beat loop melody chords minimal deep dub reggae funk "
    "soul disco rock metal pop vocal choir bpm major minor c d e f g b sharp flat 60 70 80 90 100 110 120 128 "
    "130 140 150 160 170 174"
).split()


def tiny_tokenizer():
    """A word-level tokenizer over a small music vocabulary, shaped like T5's (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_config(channels: int = 1, melody: bool = False, dim: int = 32, layers: int = 2, heads: int = 4,
                max_positions: int = 512):
    """A transformers MusicgenConfig (or MusicgenMelodyConfig) of the real structure and a tiny size."""
    from transformers import MusicgenDecoderConfig, T5Config

    from engine.codec import musicgen_codec_config

    t5 = T5Config(vocab_size=len(WORDS) + 3, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    # The real codec's geometry (rate, hop, codebooks), narrow; with the shortcut convs the tiny checkpoints were
    # always built with (the real one has none).
    codec = musicgen_codec_config(num_filters=4, codebook_dim=8, hidden_size=8, use_conv_shortcut=True)
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=dim, num_hidden_layers=layers,
                                    num_attention_heads=heads, ffn_dim=4 * dim, num_codebooks=4 * channels,
                                    max_position_embeddings=max_positions, audio_channels=channels)
    if melody:
        from transformers import MusicgenMelodyConfig

        return MusicgenMelodyConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict(),
                                    num_chroma=12, chroma_length=235)
    from transformers import MusicgenConfig

    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())


def tiny_reference_model(config, seed: int = 0):
    """transformers' own model with seeded random weights (the reference the tests compare against)."""
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    torch.manual_seed(seed)
    cls = MusicgenMelodyForConditionalGeneration if config.model_type == "musicgen_melody" else MusicgenForConditionalGeneration
    model = cls(config).eval()
    # Random init leaves the LM near-uniform; larger weights make greedy choices decisive and logits varied.
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 if "embed" in name else 0.15)
        _seed_codebooks(model.audio_encoder, seed)
    return model


def _seed_codebooks(encodec, seed: int) -> None:
    """transformers initializes EnCodec's codebooks to zeros: every input would encode to code 0 and every code
    decode to the same audio. Seed each residual codebook from the encoder's own outputs on noise (as EnCodec's
    k-means initialization does), so that codes vary with the audio and audio varies with the codes."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.3 * torch.randn(1, 1, 32000 * 4, generator=g)
    # A random encoder's output is nearly constant (its biases dominate): centre it and give it unit spread.
    last = encodec.encoder.layers[-1].conv
    out = encodec.encoder(noise)[0]
    last.bias.sub_(out.mean(1))
    last.bias.div_(out.std(1))
    last.parametrizations.weight.original0.div_(out.std(1)[:, None, None])
    residual = encodec.encoder(noise)[0].T  # [frames, dim]
    for layer in encodec.quantizer.layers:
        picks = residual[torch.randint(0, residual.shape[0], (layer.codebook.embed.shape[0],), generator=g)]
        spread = residual.std(0, keepdim=True) * torch.randn(picks.shape, generator=g)
        layer.codebook.embed.copy_(picks + spread)
        residual = residual - layer.codebook.embed[layer.codebook.quantize(residual)]
    # Likewise the decoder's biases drown what the codes say: without them its output follows the codes.
    for name, p in encodec.decoder.named_parameters():
        if name.endswith("conv.bias"):
            p.zero_()


def random_tiny_state(seed: int = 0):
    """(config dict, Hugging Face-named tensors, tokenizer) of a random tiny mono text model."""
    cfg = tiny_config()
    model = tiny_reference_model(cfg, seed)
    return cfg.to_dict(), model.state_dict(), tiny_tokenizer()
