"""Test helper: write Hugging Face-format MusicGen weights as a Meta (audiocraft) export folder.

The inverse of engine/meta_format.py, written separately from it so that the tests compare two independent
statements of the same facts (audiocraft key names, q | k | v row order, weight-norm names, config layout).
The YAML config is shaped like audiocraft's composed Hydra config (config.yaml, solver/musicgen/default.yaml,
model/lm/musicgen_lm.yaml, conditioner/text2music.yaml or chroma2music.yaml, model/encodec/*.yaml), trimmed to
the keys a loader could read plus realistic neighbours, and keeps `${...}` interpolations as OmegaConf.to_yaml
writes them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import yaml
from torch import Tensor


def lm_xp_cfg(decoder_cfg, text_encoder_name: str, melody: bool, *, sample_rate: int = 32000,
              segment_duration: float = 30, cfg_coef: float = 3.0,
              compression_checkpoint: str = "//pretrained/facebook/encodec_32khz") -> dict:
    """The experiment config of a MusicGen LM with the shape of `decoder_cfg` (a Musicgen*DecoderConfig)."""
    k = decoder_cfg.num_codebooks
    stereo = decoder_cfg.audio_channels == 2
    conditioners: dict = {
        "description": {"model": "t5", "t5": {"name": text_encoder_name, "finetune": False, "word_dropout": 0.3,
                                              "normalize_text": False}},
    }
    if melody:
        conditioners = {
            "self_wav": {"model": "chroma_stem", "chroma_stem": {
                "sample_rate": "${sample_rate}", "n_chroma": 12, "radix2_exp": 14, "argmax": True,
                "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}},
            **conditioners,
        }
    return {
        "device": "cuda", "dtype": "float32", "autocast": True, "autocast_dtype": "float16", "seed": 2036,
        "solver": "musicgen", "sample_rate": sample_rate, "channels": 2 if stereo else 1,
        "compression_model_checkpoint": compression_checkpoint, "compression_model_n_q": None,
        "tokens": {"padding_with_special_token": False},
        "interleave_stereo_codebooks": {"use": stereo, "per_timestep": False},
        "dataset": {"batch_size": 192, "num_workers": 10, "segment_duration": segment_duration,
                    "min_segment_ratio": 0.8, "return_info": True},
        "generate": {"lm": {"use_sampling": True, "temp": 1.0, "top_k": 250, "top_p": 0.0}},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": [i // decoder_cfg.audio_channels for i in range(k)], "flatten_first": 0,
                      "empty_initial": 0},
            "unroll": {"flattening": [0, 1, 2, 3], "delays": [0, 0, 0, 0]},
            "music_lm": {"group_by": 2},
            "coarse_first": {"delays": [0, 0, 0]},
        },
        "transformer_lm": {
            "dim": decoder_cfg.hidden_size, "num_heads": decoder_cfg.num_attention_heads,
            "num_layers": decoder_cfg.num_hidden_layers,
            "hidden_scale": decoder_cfg.ffn_dim // decoder_cfg.hidden_size,
            "n_q": k, "card": decoder_cfg.vocab_size, "dropout": 0.0, "emb_lr": None, "activation": "gelu",
            "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False, "past_context": None,
            "causal": True, "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False, "checkpointing": "none",
            "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm",
            "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
            "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.2 if melody else 0.3, "inference_coef": cfg_coef},
        "attribute_dropout": (
            {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}} if melody else {}
        ),
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
                  "prepend": ["self_wav", "description"] if melody else [],
                  "cross": [] if melody else ["description"], "input_interpolate": []},
        "conditioners": conditioners,
    }


def hf_to_meta_lm(hf_state: dict[str, Tensor], decoder_cfg, dtype=torch.float16) -> dict[str, Tensor]:
    """HF names -> audiocraft LMModel names, q | k | v fused, in Meta's fp16."""
    d = decoder_cfg.hidden_size
    out: dict[str, Tensor] = {}
    local = {
        "self_attn.out_proj.weight": "self_attn.out_proj.weight",
        "encoder_attn.out_proj.weight": "cross_attention.out_proj.weight",
        "self_attn_layer_norm.weight": "norm1.weight", "self_attn_layer_norm.bias": "norm1.bias",
        "encoder_attn_layer_norm.weight": "norm_cross.weight", "encoder_attn_layer_norm.bias": "norm_cross.bias",
        "final_layer_norm.weight": "norm2.weight", "final_layer_norm.bias": "norm2.bias",
        "fc1.weight": "linear1.weight", "fc2.weight": "linear2.weight",
    }
    top = {
        "decoder.model.decoder.layer_norm.weight": "out_norm.weight",
        "decoder.model.decoder.layer_norm.bias": "out_norm.bias",
        "enc_to_dec_proj.weight": "condition_provider.conditioners.description.output_proj.weight",
        "enc_to_dec_proj.bias": "condition_provider.conditioners.description.output_proj.bias",
        "audio_enc_to_dec_proj.weight": "condition_provider.conditioners.self_wav.output_proj.weight",
        "audio_enc_to_dec_proj.bias": "condition_provider.conditioners.self_wav.output_proj.bias",
    }
    for key, value in hf_state.items():
        value = value.detach().to(dtype)
        if key in top:
            out[top[key]] = value
        elif m := re.fullmatch(r"decoder\.model\.decoder\.embed_tokens\.(\d+)\.weight", key):
            out[f"emb.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"decoder\.lm_heads\.(\d+)\.weight", key):
            out[f"linears.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"decoder\.model\.decoder\.layers\.(\d+)\.(.+)", key):
            n, name = m[1], m[2]
            if name in local:
                out[f"transformer.layers.{n}.{local[name]}"] = value
            elif pm := re.fullmatch(r"(self_attn|encoder_attn)\.q_proj\.weight", name):
                attn = pm[1]
                p = f"decoder.model.decoder.layers.{n}.{attn}"
                fused = torch.cat([hf_state[f"{p}.q_proj.weight"], hf_state[f"{p}.k_proj.weight"],
                                   hf_state[f"{p}.v_proj.weight"]], dim=0).to(dtype)
                assert fused.shape == (3 * d, d)
                meta_attn = "self_attn" if attn == "self_attn" else "cross_attention"
                out[f"transformer.layers.{n}.{meta_attn}.in_proj_weight"] = fused
            elif not re.fullmatch(r"(self_attn|encoder_attn)\.[kv]_proj\.weight", name):
                raise KeyError(key)
        else:
            raise KeyError(key)
    if "audio_enc_to_dec_proj.weight" in hf_state:
        # audiocraft's state dict also carries the chroma STFT window (torchaudio Spectrogram buffer).
        out["condition_provider.conditioners.self_wav.chroma.spec.window"] = torch.hann_window(2**14)
    return out


def encodec_xp_cfg(encodec_config, n_q: int) -> dict:
    """The experiment config of an audiocraft EnCodec with the shape of a transformers EncodecConfig."""
    c = encodec_config
    return {
        "device": "cuda", "dtype": "float32", "solver": "compression",
        "sample_rate": c.sampling_rate, "channels": c.audio_channels,
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": "${sample_rate}",
                    "channels": "${channels}", "causal": c.use_causal_conv, "renormalize": c.normalize},
        "seanet": {
            "dimension": c.hidden_size, "channels": "${channels}", "causal": "${encodec.causal}",
            "n_filters": c.num_filters, "n_residual_layers": c.num_residual_layers,
            "ratios": list(c.upsampling_ratios), "activation": "ELU", "activation_params": {"alpha": 1.0},
            "norm": c.norm_type, "norm_params": {}, "kernel_size": c.kernel_size,
            "residual_kernel_size": c.residual_kernel_size, "last_kernel_size": c.last_kernel_size,
            "dilation_base": c.dilation_growth_rate, "pad_mode": c.pad_mode, "true_skip": not c.use_conv_shortcut,
            "compress": c.compress, "lstm": c.num_lstm_layers, "disable_norm_outer_blocks": 0,
            "decoder": {"trim_right_ratio": c.trim_right_ratio, "final_activation": None,
                        "final_activation_params": None},
            "encoder": {},
        },
        "rvq": {"n_q": n_q, "q_dropout": False, "bins": c.codebook_size, "decay": 0.99, "kmeans_init": True,
                "kmeans_iters": 50, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
                "orthogonal_reg_active_codes_only": False},
        "no_quant": {},
    }


def hf_to_meta_encodec(hf_state: dict[str, Tensor], encodec_config) -> dict[str, Tensor]:
    """transformers EncodecModel names -> audiocraft SEANet/RVQ names (old-style weight_g / weight_v)."""
    c = encodec_config
    n_res = c.num_residual_layers
    # SEANetDecoder: conv, lstm, then per ratio [ELU, transposed conv, residual blocks...].
    transposed = {3 + i * (2 + n_res) for i in range(len(c.upsampling_ratios))}
    params = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v",
              "bias": "bias"}
    out: dict[str, Tensor] = {}
    for key, value in hf_state.items():
        value = value.detach().clone()
        if m := re.fullmatch(r"quantizer\.layers\.(\d+)\.codebook\.(\w+)", key):
            out[f"quantizer.vq.layers.{m[1]}._codebook.{m[2]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.lstm\.(\w+)", key):
            out[f"{m[1]}.model.{m[2]}.lstm.{m[3]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.((?:block\.\d+\.|shortcut\.)?)conv\.(.+)", key):
            side, idx, inner, param = m[1], int(m[2]), m[3], params[m[4]]
            wrap = "convtr.convtr" if side == "decoder" and not inner and idx in transposed else "conv.conv"
            out[f"{side}.model.{idx}.{inner}{wrap}.{param}"] = value
        else:
            raise KeyError(key)
    return out


def write_meta_checkpoint(folder: str | Path, hf_decoder_state: dict[str, Tensor], decoder_cfg,
                          text_encoder_name: str = "t5-base", encodec_state: dict[str, Tensor] | None = None,
                          encodec_config=None, pretrained_name: str | None = "facebook/encodec_32khz",
                          **lm_cfg_kwargs) -> tuple[Path, Path]:
    """Write state_dict.bin and compression_state_dict.bin the way audiocraft's export.py does.

    hf_decoder_state: `decoder.*`, `enc_to_dec_proj.*` (and `audio_enc_to_dec_proj.*` for melody) in HF names.
    Give encodec_state and encodec_config (transformers EncodecModel weights and EncodecConfig) for the full
    codec form, or only pretrained_name for the {'pretrained': NAME} form.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    melody = "audio_enc_to_dec_proj.weight" in hf_decoder_state
    cfg = lm_xp_cfg(decoder_cfg, text_encoder_name, melody, **lm_cfg_kwargs)
    lm_path, codec_path = folder / "state_dict.bin", folder / "compression_state_dict.bin"
    torch.save({"best_state": hf_to_meta_lm(hf_decoder_state, decoder_cfg),
                "xp.cfg": yaml.safe_dump(cfg, sort_keys=False), "version": "1.3.0", "exported": True}, lm_path)
    if encodec_state is not None:
        bits = math.ceil(math.log2(encodec_config.codebook_size))
        n_q = round(1000 * encodec_config.target_bandwidths[-1] / (encodec_config.frame_rate * bits))
        pkg = {"best_state": hf_to_meta_encodec(encodec_state, encodec_config),
               "xp.cfg": yaml.safe_dump(encodec_xp_cfg(encodec_config, n_q), sort_keys=False),
               "version": "1.3.0", "exported": True}
    else:
        pkg = {"pretrained": pretrained_name, "exported": True, "version": "1.3.0"}
    torch.save(pkg, codec_path)
    return lm_path, codec_path
