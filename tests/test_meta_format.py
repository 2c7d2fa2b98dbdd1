"""Meta (audiocraft) exports read into Hugging Face names: exact weights, right config, clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from engine.errors import ModelNotFound, UserError
from engine.meta_format import (
    load_meta_pickle,
    meta_compression_to_hf,
    meta_lm_to_hf,
    read_meta_folder,
)
from tests.meta_checkpoint import hf_to_meta_lm, lm_xp_cfg, write_meta_checkpoint


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (LayerNorms start at 1/0 and codebooks at 0, which would hide swaps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _tiny_encodec_config(**kw):
    from transformers import EncodecConfig

    # The 32 kHz MusicGen codec's shape (ratios 8·5·4·4, 2048 bins, 4 codebooks = 2.2 kbps), tiny widths.
    args = dict(sampling_rate=32000, target_bandwidths=[2.2], upsampling_ratios=[8, 5, 4, 4], num_filters=2,
                hidden_size=8, codebook_size=2048, use_causal_conv=False, use_conv_shortcut=False,
                pad_mode="constant", num_lstm_layers=2, normalize=False)
    args.update(kw)
    return EncodecConfig(**args)


def _tiny_musicgen(channels: int = 1, melody: bool = False, seed: int = 0):
    """A tiny transformers MusicGen (or MusicGen Melody) with random weights; returns (model, decoder config)."""
    from transformers import (MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, T5Config)

    t5 = T5Config(vocab_size=32, d_model=768, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    dec_cls = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    dec = dec_cls(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, vocab_size=2048,
                  num_codebooks=4 * channels, audio_channels=channels)
    parts = dict(text_encoder=t5.to_dict(), audio_encoder=_tiny_encodec_config().to_dict(), decoder=dec.to_dict())
    torch.manual_seed(seed)
    if melody:
        model = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(**parts))
    else:
        model = MusicgenForConditionalGeneration(MusicgenConfig(**parts))
    _perturb(model, seed)
    return model.eval(), model.config.decoder


def _lm_part(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("text_encoder.", "audio_encoder."))}


@pytest.fixture(scope="module")
def text_cfg_and_state():
    """A text model's Meta config (as a mapping) and best_state, for direct meta_lm_to_hf calls."""
    model, dec_cfg = _tiny_musicgen(seed=5)
    return lm_xp_cfg(dec_cfg, "t5-base", melody=False), hf_to_meta_lm(_lm_part(model), dec_cfg)


def _check_lm_round_trip(tmp_path, model, dec_cfg) -> tuple[dict, dict]:
    original = _lm_part(model)
    write_meta_checkpoint(tmp_path, original, dec_cfg, "t5-base", pretrained_name="facebook/encodec_32khz")
    ckpt = read_meta_folder(tmp_path)
    assert set(ckpt.lm_state) == set(original)
    for key, value in original.items():
        assert torch.equal(ckpt.lm_state[key], value.half()), key  # Meta ships fp16: exact after rounding
    # The names fit the real transformers model: nothing missing but the encoders, nothing unexpected.
    fresh = type(model)(model.config)
    missing, unexpected = fresh.load_state_dict({k: v.float() for k, v in ckpt.lm_state.items()}, strict=False)
    assert unexpected == []
    assert [k for k in missing if not k.startswith(("text_encoder.", "audio_encoder."))] == []
    return ckpt, original


def test_mono_text_model_round_trips(tmp_path):
    model, dec_cfg = _tiny_musicgen()
    ckpt, original = _check_lm_round_trip(tmp_path, model, dec_cfg)

    # Anchor the file itself to audiocraft's naming, independently of both mappings.
    best = torch.load(tmp_path / "state_dict.bin", weights_only=True)["best_state"]
    fused = best["transformer.layers.1.self_attn.in_proj_weight"]
    p = "decoder.model.decoder.layers.1"
    assert torch.equal(fused[:16], original[f"{p}.self_attn.q_proj.weight"].half())
    assert torch.equal(fused[16:32], original[f"{p}.self_attn.k_proj.weight"].half())
    assert torch.equal(fused[32:], original[f"{p}.self_attn.v_proj.weight"].half())
    assert torch.equal(best["transformer.layers.1.norm_cross.weight"],
                       original[f"{p}.encoder_attn_layer_norm.weight"].half())
    assert torch.equal(best["transformer.layers.1.norm1.bias"], original[f"{p}.self_attn_layer_norm.bias"].half())
    assert torch.equal(best["emb.3.weight"], original["decoder.model.decoder.embed_tokens.3.weight"].half())
    assert torch.equal(best["linears.2.weight"], original["decoder.lm_heads.2.weight"].half())

    cfg = ckpt.lm_cfg
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["ffn_dim"]) == (16, 2, 2, 64)
    assert (cfg["num_codebooks"], cfg["vocab_size"], cfg["audio_channels"]) == (4, 2048, 1)
    assert cfg["delays"] == [0, 1, 2, 3]
    assert (cfg["sample_rate"], cfg["frame_rate"], cfg["max_duration"]) == (32000, 50, 30)
    assert (cfg["text_encoder"], cfg["text_encoder_hidden_size"]) == ("t5-base", 768)
    assert cfg["cross_attention"] and not cfg["melody"] and cfg["chroma"] is None
    assert cfg["cfg_coef"] == 3.0 and cfg["layer_norm_eps"] == 1e-5 and cfg["norm_first"] and not cfg["bias"]
    assert ckpt.codec_state is None and ckpt.codec_pretrained == "facebook/encodec_32khz"
    assert ckpt.version == "1.3.0"


def test_stereo_model_has_eight_interleaved_codebooks(tmp_path):
    model, dec_cfg = _tiny_musicgen(channels=2, seed=1)
    ckpt, _ = _check_lm_round_trip(tmp_path, model, dec_cfg)
    cfg = ckpt.lm_cfg
    assert (cfg["num_codebooks"], cfg["audio_channels"], cfg["codec_num_codebooks"]) == (8, 2, 4)
    assert cfg["delays"] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_melody_model_prepends_chroma_and_drops_the_stft_window(tmp_path):
    model, dec_cfg = _tiny_musicgen(melody=True, seed=2)
    ckpt, original = _check_lm_round_trip(tmp_path, model, dec_cfg)
    best = torch.load(tmp_path / "state_dict.bin", weights_only=True)["best_state"]
    assert "condition_provider.conditioners.self_wav.chroma.spec.window" in best  # present in Meta's files
    assert not any("encoder_attn" in k for k in ckpt.lm_state)
    assert torch.equal(ckpt.lm_state["audio_enc_to_dec_proj.weight"], original["audio_enc_to_dec_proj.weight"].half())
    cfg = ckpt.lm_cfg
    assert cfg["melody"] and not cfg["cross_attention"]
    chroma = cfg["chroma"]
    assert (chroma["n_chroma"], chroma["n_fft"], chroma["win_length"], chroma["hop_length"]) == (12, 16384, 16384, 4096)
    assert chroma["argmax"] and chroma["sample_rate"] == 32000  # resolved from ${sample_rate}
    assert (chroma["duration"], chroma["length"]) == (30, 235)


def test_encodec_full_state_decodes_like_the_original(tmp_path):
    from transformers import EncodecConfig, EncodecModel

    model, dec_cfg = _tiny_musicgen(seed=3)
    enc_cfg = _tiny_encodec_config()
    torch.manual_seed(3)
    codec = EncodecModel(enc_cfg).eval()
    _perturb(codec, 3)
    write_meta_checkpoint(tmp_path, _lm_part(model), dec_cfg, "t5-base", encodec_state=codec.state_dict(),
                          encodec_config=enc_cfg)

    raw = torch.load(tmp_path / "compression_state_dict.bin", weights_only=True)["best_state"]
    for key in ("encoder.model.0.conv.conv.weight_g", "decoder.model.3.convtr.convtr.weight_v",
                "encoder.model.13.lstm.weight_ih_l1", "quantizer.vq.layers.3._codebook.embed"):
        assert key in raw, key  # audiocraft's names (transformers' EnCodec conversion mapping)

    ckpt = read_meta_folder(tmp_path)
    cfg = EncodecConfig(**ckpt.codec_cfg)
    assert list(cfg.upsampling_ratios) == [8, 5, 4, 4] and cfg.codebook_size == 2048
    assert cfg.num_quantizers == 4 and cfg.frame_rate == 50 and cfg.sampling_rate == 32000
    assert not cfg.normalize and cfg.pad_mode == "constant" and not cfg.use_conv_shortcut
    assert ckpt.lm_cfg["frame_rate"] == 50

    rebuilt = EncodecModel(cfg).eval()
    rebuilt.load_state_dict(ckpt.codec_state, strict=True)
    codes = torch.randint(0, 2048, (1, 1, 4, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = codec.decode(codes, [None]).audio_values
        got = rebuilt.decode(codes, [None]).audio_values
    assert want.shape == (1, 1, 7 * 640) and want.abs().max() > 0
    torch.testing.assert_close(got, want)


def test_pretrained_codec_form():
    assert meta_compression_to_hf({"pretrained": "facebook/encodec_32khz", "exported": True}) == (
        None, {"pretrained": "facebook/encodec_32khz"})
    with pytest.raises(UserError):
        meta_compression_to_hf({"exported": True})


def test_missing_compression_file_falls_back_to_the_named_codec(tmp_path):
    model, dec_cfg = _tiny_musicgen(seed=4)
    _, codec_path = write_meta_checkpoint(tmp_path, _lm_part(model), dec_cfg)
    codec_path.unlink()
    assert read_meta_folder(tmp_path).codec_pretrained == "facebook/encodec_32khz"
    write_meta_checkpoint(tmp_path, _lm_part(model), dec_cfg, compression_checkpoint="/checkpoint/mine.th")
    codec_path.unlink()
    with pytest.raises(ModelNotFound, match="compression_state_dict.bin"):
        read_meta_folder(tmp_path)


def test_interpolations_resolve_like_omegaconf():
    from transformers import EncodecModel

    from tests.meta_checkpoint import hf_to_meta_encodec

    # As OmegaConf.to_yaml writes it: interpolations left unresolved, one of them chained.
    text = ("sample_rate: 32000\nchannels: 1\ncompression_model: encodec\n"
            "encodec:\n  autoencoder: seanet\n  quantizer: rvq\n  sample_rate: ${sample_rate}\n"
            "  channels: ${channels}\n  causal: false\n  renormalize: false\n"
            "seanet:\n  dimension: 8\n  channels: ${encodec.channels}\n  causal: ${encodec.causal}\n"
            "  n_filters: 2\n  n_residual_layers: 1\n  ratios: [8, 5, 4, 4]\n  norm: weight_norm\n  lstm: 2\n"
            "  pad_mode: constant\n  decoder:\n    trim_right_ratio: 1.0\n    final_activation: null\n"
            "  encoder: {}\nrvq:\n  n_q: 4\n  bins: 2048\n")
    enc_cfg = _tiny_encodec_config()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in EncodecModel(enc_cfg).state_dict().items()}
    meta_state = hf_to_meta_encodec({k: torch.zeros(s) for k, s in shapes.items()}, enc_cfg)
    _, kwargs = meta_compression_to_hf({"best_state": meta_state, "xp.cfg": text})
    assert kwargs["sampling_rate"] == 32000 and kwargs["audio_channels"] == 1 and kwargs["use_causal_conv"] is False


def test_other_spellings_found_in_exports(text_cfg_and_state):
    cfg, best = text_cfg_and_state
    # Attention saved through nn.MultiheadAttention (custom=False) nests its weights under `mha.`.
    renamed = {k.replace("layers.0.self_attn.", "layers.0.self_attn.mha."): v for k, v in best.items()}
    state, _ = meta_lm_to_hf(renamed, cfg)
    assert torch.equal(state["decoder.model.decoder.layers.0.self_attn.k_proj.weight"],
                       best["transformer.layers.0.self_attn.in_proj_weight"][16:32])
    # A T5 fine-tuned with the LM (finetune: true) is saved inside the LM state.
    t5 = torch.randn(32, 768)
    state, info = meta_lm_to_hf(dict(best, **{"condition_provider.conditioners.description.t5.shared.weight": t5}), cfg)
    assert info["text_encoder_in_state"] and torch.equal(state["text_encoder.shared.weight"], t5)


# -------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("edits, words", [
    ({"codebooks_pattern.modeling": "parallel"}, "codebooks_pattern.modeling"),
    ({"codebooks_pattern.delay.delays": [0, 0, 0, 0]}, "delays"),
    ({"transformer_lm.positional_embedding": "rope"}, "positional_embedding"),
    ({"transformer_lm.bias_attn": True}, "bias_attn"),
    ({"transformer_lm.norm_first": False}, "norm_first"),
    ({"lm_model": "transformer_lm_magnet"}, "lm_model"),
    ({"channels": 2}, "interleave_stereo_codebooks.use"),
    ({"interleave_stereo_codebooks.use": True, "interleave_stereo_codebooks.per_timestep": True}, "per_timestep"),
    ({"fuser.cross": []}, "fuser"),
    ({"conditioners.description.t5.name": "t5-small"}, "t5-small gives 512"),
])
def test_unsupported_variants_are_refused(text_cfg_and_state, edits, words):
    cfg, best = text_cfg_and_state
    meta_lm_to_hf(best, cfg)  # the unmodified config loads
    bad = copy.deepcopy(cfg)
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = bad
        for part in parents:
            node = node[part]
        node[last] = value
    with pytest.raises(UserError, match=words):
        meta_lm_to_hf(best, yaml.safe_dump(bad))


def test_missing_or_misshapen_weights_are_refused(text_cfg_and_state):
    cfg, best = text_cfg_and_state
    partial = {k: v for k, v in best.items() if k != "transformer.layers.1.linear2.weight"}
    with pytest.raises(UserError, match="fc2"):
        meta_lm_to_hf(partial, cfg)
    wrong = dict(best, **{"linears.0.weight": torch.zeros(100, 16, dtype=torch.float16)})
    with pytest.raises(UserError, match="lm_heads.0"):
        meta_lm_to_hf(wrong, cfg)
    extra = dict(best, **{"transformer.layers.0.self_attn.in_proj_bias": torch.zeros(48)})
    with pytest.raises(UserError, match="in_proj_bias"):
        meta_lm_to_hf(extra, cfg)


def test_encodec_variants_are_refused():
    text = yaml.safe_dump({"sample_rate": 32000, "channels": 1, "compression_model": "encodec",
                           "encodec": {"autoencoder": "seanet", "quantizer": "rvq"},
                           "seanet": {"norm": "time_group_norm", "lstm": 2}, "rvq": {"n_q": 4, "bins": 2048}})
    with pytest.raises(UserError, match="weight_norm"):
        meta_compression_to_hf({"best_state": {}, "xp.cfg": text})


class Custom:
    """An arbitrary class: unpickling it would need an import the loader must refuse."""

    def __init__(self):
        self.x = 1


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (str(self.marker), "w"))


def test_bad_files_are_refused_without_running_code(tmp_path):
    with pytest.raises(ModelNotFound):
        read_meta_folder(tmp_path / "nowhere")
    with pytest.raises(ModelNotFound, match="state_dict.bin"):
        read_meta_folder(tmp_path)

    path = tmp_path / "state_dict.bin"
    path.write_bytes(b"definitely not a pickle" * 10)
    with pytest.raises(UserError, match="not a readable torch file"):
        read_meta_folder(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match="not a readable torch file"):
        load_meta_pickle(path)

    torch.save({"best_state": {}, "xp.cfg": Custom()}, path)
    with pytest.raises(UserError, match="not trusted"):
        read_meta_folder(tmp_path)

    marker = tmp_path / "ran"
    torch.save({"best_state": {}, "xp.cfg": RunsCode(marker)}, path)
    with pytest.raises(UserError, match="not trusted"):
        load_meta_pickle(path)
    assert not marker.exists()

    torch.save({"decoder.lm_heads.0.weight": torch.zeros(2, 2)}, path)  # a Hugging Face-style state dict
    with pytest.raises(UserError, match="not a Meta MusicGen export"):
        read_meta_folder(tmp_path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="not a Meta MusicGen export"):
        load_meta_pickle(path)


# An oracle independent of engine/meta_format.py and tests/meta_checkpoint.py: the key renames of transformers' own
# conversion scripts (src/transformers/models/musicgen/convert_musicgen_transformers.py and
# musicgen_melody/convert_musicgen_melody_transformers.py, which read audiocraft's LM state dict), stated as data:
# substring replacements applied in this order, then in_proj_weight split into q | k | v by rows. The scripts
# build the decoder alone (MusicgenForCausalLM) and the projections apart; in the composite model the decoder's
# names sit under `decoder.`.
TRANSFORMERS_RENAMES = (
    ("emb", "model.decoder.embed_tokens"), ("transformer", "model.decoder"), ("cross_attention", "encoder_attn"),
    ("linear1", "fc1"), ("linear2", "fc2"), ("norm1", "self_attn_layer_norm"),
    ("norm_cross", "encoder_attn_layer_norm"), ("norm2", "final_layer_norm"), ("out_norm", "model.decoder.layer_norm"),
    ("linears", "lm_heads"), ("condition_provider.conditioners.description.output_proj", "enc_to_dec_proj"),
    ("condition_provider.conditioners.self_wav.output_proj", "audio_enc_to_dec_proj"),
)


def _as_transformers_converts(best_state: dict, hidden: int) -> dict:
    out = {}
    for key, value in best_state.items():
        if key.endswith("chroma.spec.window"):  # a buffer the scripts drop too (rebuilt from the config)
            continue
        for old, new in TRANSFORMERS_RENAMES:
            key = key.replace(old, new)
        if not key.startswith(("enc_to_dec_proj", "audio_enc_to_dec_proj")):
            key = "decoder." + key
        if key.endswith("in_proj_weight"):
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[key.replace("in_proj_weight", f"{name}.weight")] = value[i * hidden:(i + 1) * hidden]
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("melody", [False, True])
def test_names_agree_with_transformers_conversion_script(melody):
    model, dec_cfg = _tiny_musicgen(melody=melody, seed=6)
    original = _lm_part(model)
    best = hf_to_meta_lm(original, dec_cfg)  # our writer...
    by_script = _as_transformers_converts(best, dec_cfg.hidden_size)
    # ...produces what transformers' script turns back into the original model...
    assert set(by_script) == set(original)
    assert all(torch.equal(by_script[k], original[k].half()) for k in original)
    # ...and our reader renames exactly as the script does.
    ours, _ = meta_lm_to_hf(best, lm_xp_cfg(dec_cfg, "t5-base", melody=melody))
    assert set(ours) == set(by_script)
    assert all(torch.equal(ours[k], by_script[k]) for k in ours)
