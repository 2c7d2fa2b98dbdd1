"""Meta's audiocraft MusicGen exports, read into Hugging Face names.

An export folder holds two torch pickles (audiocraft `utils/export.py`, read by `models/loaders.py`):
- `state_dict.bin`: {'xp.cfg': the Hydra experiment config as YAML text, 'best_state': the LM state dict in fp16,
  and, since audiocraft 1.0, 'version' and 'exported'}.
- `compression_state_dict.bin`: either a full EnCodec export {'xp.cfg', 'best_state', ...} in audiocraft's SEANet
  naming, or {'pretrained': 'facebook/encodec_32khz', ...}, which names a Hugging Face EnCodec instead.

The YAML comes from `OmegaConf.to_yaml` without resolving, so values can be `${other.key}` interpolations.
The key renames follow transformers' `convert_musicgen_transformers.py`, `convert_musicgen_melody_transformers.py`
and `convert_encodec_checkpoint_to_pytorch.py`. Anything this reader cannot map exactly is refused with a
`UserError` rather than loaded approximately.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from engine.codec import MUSICGEN_CODEC, codec_facts
from engine.errors import ModelNotFound, UserError

log = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"

# Meta's exports hold only dicts and OrderedDicts of tensors, strings and booleans: the config is YAML text,
# not an OmegaConf object. torch's weights-only unpickler accepts all of that by default, so no class needs
# adding. The list stays, empty, so that any future addition is a visible, reviewed decision.
EXTRA_SAFE_GLOBALS: list = []

# What a `//pretrained/NAME` or {'pretrained': NAME} codec is, for the names Meta's MusicGen releases use.
KNOWN_CODECS = {"facebook/encodec_32khz": codec_facts(MUSICGEN_CODEC)}

# T5Conditioner.MODELS_DIMS in audiocraft: the width of each text encoder's hidden states.
T5_DIMS = {
    "t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
    "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
    "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096,
}

# Buffers audiocraft saves that are rebuilt from the config (the chroma extractor's STFT window).
_IGNORED_LM_KEYS = re.compile(r"^condition_provider\.conditioners\.self_wav\.chroma\.(spec\.window|fbanks)$")


@dataclass
class MetaCheckpoint:
    """One Meta export folder, already renamed: what `engine/checkpoint.py` needs to build the models."""

    folder: Path
    lm_state: dict[str, Tensor]  # Hugging Face names, tensors as stored (fp16 for Meta's releases)
    lm_cfg: dict  # see `meta_lm_to_hf`
    codec_state: dict[str, Tensor] | None  # transformers EncodecModel state dict, or None for a pretrained codec
    codec_cfg: dict  # transformers.EncodecConfig kwargs, or {'pretrained': NAME}
    version: str | None = None  # audiocraft version that exported it (absent from the first releases)

    @property
    def codec_pretrained(self) -> str | None:
        return self.codec_cfg.get("pretrained") if self.codec_state is None else None


# ---------------------------------------------------------------------------------------------------- pickles


def load_meta_pickle(path: str | Path) -> dict:
    """Load one of Meta's export files without running code from it (weights-only unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"{path} does not exist; a Meta MusicGen export folder holds {LM_FILE} and {CODEC_FILE}.")
    try:
        with torch.serialization.safe_globals(EXTRA_SAFE_GLOBALS):
            # mmap keeps a 3.3B-parameter file out of RAM until its tensors are used; only zip files support it.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UserError(
                f"{path} needs the class or function '{found.group(1)}' to load, which is not trusted: it is not a "
                "Meta MusicGen export. Use the state_dict.bin / compression_state_dict.bin from Meta's release."
            ) from None
        raise UserError(
            f"{path} is not a readable torch file (corrupt or not a checkpoint); download it again."
        ) from None
    except Exception as e:  # truncated or foreign files fail in many ways (EOFError, RuntimeError, ...)
        raise UserError(f"{path} is not a readable torch file ({type(e).__name__}); download it again.") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a Meta MusicGen export (a dict with 'best_state').")
    return obj


# ---------------------------------------------------------------------------------------------------- config

_MISSING = object()
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


class _Cfg:
    """Dotted look-ups in an experiment config, following whole-value `${a.b}` interpolations like OmegaConf."""

    def __init__(self, raw: dict | str, where: str):
        if isinstance(raw, str):
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise UserError(f"{where}: its 'xp.cfg' is not valid YAML ({e}); the export is damaged.") from None
        if not isinstance(raw, dict):
            raise UserError(f"{where}: its 'xp.cfg' is not a config mapping; this is not a Meta MusicGen export.")
        self.root = raw
        self.where = where

    def get(self, dotted: str, default=_MISSING, _depth: int = 0):
        node = self.root
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise UserError(
                        f"{self.where}: its config has no '{dotted}'; this is not a MusicGen export we can read."
                    )
                return default
            node = node[part]
        if isinstance(node, str):
            found = _INTERPOLATION.fullmatch(node.strip())
            if found:
                if _depth > 10:
                    raise UserError(f"{self.where}: config value '{dotted}' interpolates in a loop.")
                return self.get(found.group(1), default, _depth + 1)
            if node == "???":  # OmegaConf's mark for a value never set
                if default is _MISSING:
                    raise UserError(f"{self.where}: config value '{dotted}' was never set ('???').")
                return default
        return node

    def section(self, dotted: str) -> dict:
        """A sub-mapping with each of its own values resolved (one level deep)."""
        node = self.get(dotted, None) or {}
        if not isinstance(node, dict):
            raise UserError(f"{self.where}: config value '{dotted}' should be a mapping.")
        return {k: self.get(f"{dotted}.{k}") for k in node}


def _require(ok: bool, where: str, what: str, value, expected: str) -> None:
    if not ok:
        raise UserError(
            f"{where}: this export uses {what}={value!r}, but only {expected} is supported "
            "(the MusicGen layout the engine runs). Use one of Meta's MusicGen checkpoints or a fine-tune of one."
        )


# ---------------------------------------------------------------------------------------------------- the LM


def _lm_cfg(c: _Cfg, best_state: dict) -> dict:
    w = c.where
    lm_model = c.get("lm_model", "transformer_lm")
    _require(lm_model == "transformer_lm", w, "lm_model", lm_model, "'transformer_lm' (MusicGen, not MAGNeT)")

    t = "transformer_lm"
    dim = int(c.get(f"{t}.dim"))
    n_heads = int(c.get(f"{t}.num_heads"))
    n_layers = int(c.get(f"{t}.num_layers"))
    n_q = int(c.get(f"{t}.n_q"))
    card = int(c.get(f"{t}.card"))
    ffn_dim = int(float(c.get(f"{t}.hidden_scale", 4)) * dim)
    _require(dim % n_heads == 0, w, f"{t}.num_heads", n_heads, f"a divisor of dim={dim}")

    # Each setting the Hugging Face layout hard-wires; audiocraft's defaults where the key is absent.
    fixed = [
        ("norm", "layer_norm", "layer_norm"), ("norm_first", False, True), ("bias_ff", True, False),
        ("bias_attn", True, False), ("bias_proj", True, False), ("positional_embedding", "sin", "sin"),
        ("max_period", 10000, 10000), ("positional_scale", 1.0, 1.0), ("layer_scale", None, None),
        ("qk_layer_norm", False, False), ("qk_layer_norm_cross", False, False), ("kv_repeat", 1, 1),
        ("past_context", None, None), ("causal", True, True), ("activation", "gelu", "gelu"),
    ]
    for key, default, expected in fixed:
        value = c.get(f"{t}.{key}", default)
        _require(value == expected, w, f"{t}.{key}", value, repr(expected))

    # Codebook pattern: only the delay pattern exists in Hugging Face's MusicGen.
    modeling = c.get("codebooks_pattern.modeling", None)
    if modeling is None:  # builders.get_lm_model falls back to transformer_lm.q_modeling
        modeling = c.get(f"{t}.q_modeling", None)
        delays = None
    else:
        delays = c.get("codebooks_pattern.delay.delays", None)
        for key in ("flatten_first", "empty_initial"):
            value = c.get(f"codebooks_pattern.delay.{key}", 0)
            _require(value == 0, w, f"codebooks_pattern.delay.{key}", value, "0")
    _require(modeling == "delay", w, "codebooks_pattern.modeling", modeling, "'delay'")
    delays = [int(d) for d in (delays if delays is not None else range(n_q))]

    # Stereo: two mono EnCodec streams interleaved per codebook, [k0L, k0R, k1L, k1R, ...].
    channels = int(c.get("channels", 1))
    interleave = bool(c.get("interleave_stereo_codebooks.use", False))
    per_timestep = bool(c.get("interleave_stereo_codebooks.per_timestep", False))
    _require(channels in (1, 2), w, "channels", channels, "1 or 2")
    _require(channels == 1 or interleave, w, "interleave_stereo_codebooks.use", interleave, "True for stereo")
    _require(not (interleave and per_timestep), w, "interleave_stereo_codebooks.per_timestep", per_timestep, "False")
    audio_channels = 2 if interleave else 1
    _require(n_q % audio_channels == 0, w, f"{t}.n_q", n_q, "an even number for stereo")
    expected_delays = [k // audio_channels for k in range(n_q)]
    _require(delays == expected_delays, w, "codebooks_pattern.delay.delays", delays, repr(expected_delays))

    # Conditioning: T5 text by cross-attention, or (melody) chroma then T5 prepended to the sequence.
    conds = c.get("conditioners", None) or {}
    _require(isinstance(conds, dict) and "description" in conds, w, "conditioners", list(conds),
             "a 'description' (T5) conditioner")
    cond_model = c.get("conditioners.description.model")
    _require(cond_model == "t5", w, "conditioners.description.model", cond_model, "'t5'")
    text_encoder = c.get("conditioners.description.t5.name")
    melody = "self_wav" in conds
    _require(set(conds) <= {"description", "self_wav"}, w, "conditioners", sorted(conds),
             "'description' and optionally 'self_wav' (chroma)")
    cross = list(c.get("fuser.cross", []) or [])
    prepend = list(c.get("fuser.prepend", []) or [])
    for key in ("sum", "input_interpolate"):
        value = list(c.get(f"fuser.{key}", []) or [])
        _require(not value, w, f"fuser.{key}", value, "[]")
    pos_emb = c.get("fuser.cross_attention_pos_emb", False)
    _require(not pos_emb, w, "fuser.cross_attention_pos_emb", pos_emb, "False")
    if melody:
        _require(cross == [] and prepend == ["self_wav", "description"], w, "fuser (cross, prepend)",
                 (cross, prepend), "([], ['self_wav', 'description']) for a melody model")
    else:
        _require(cross == ["description"] and prepend == [], w, "fuser (cross, prepend)", (cross, prepend),
                 "(['description'], [])")
    cross_attention = bool(cross) or bool(c.get(f"{t}.cross_attention", False))
    _require(cross_attention != melody, w, f"{t}.cross_attention", cross_attention, repr(not melody))

    proj = best_state.get("condition_provider.conditioners.description.output_proj.weight")
    if proj is None:
        raise UserError(f"{w}: the weights lack the text projection (condition_provider.conditioners.description."
                        "output_proj.weight); the export is incomplete.")
    text_hidden = int(proj.shape[1])
    if text_encoder in T5_DIMS and T5_DIMS[text_encoder] != text_hidden:
        raise UserError(f"{w}: the text projection takes {text_hidden} features but {text_encoder} gives "
                        f"{T5_DIMS[text_encoder]}; config and weights disagree.")

    sample_rate = int(c.get("sample_rate"))
    duration = float(c.get("dataset.segment_duration", 30))
    chroma = None
    if melody:
        s = "conditioners.self_wav.chroma_stem"
        model = c.get("conditioners.self_wav.model")
        _require(model == "chroma_stem", w, "conditioners.self_wav.model", model, "'chroma_stem'")
        radix2_exp = int(c.get(f"{s}.radix2_exp", 12))  # ChromaExtractor's defaults where keys are absent
        win_length = int(c.get(f"{s}.winlen", None) or 2**radix2_exp)
        hop_length = int(c.get(f"{s}.winhop", None) or win_length // 4)
        chroma_rate = int(c.get(f"{s}.sample_rate", sample_rate))
        chroma = {
            "n_chroma": int(c.get(f"{s}.n_chroma", 12)),
            "radix2_exp": radix2_exp,
            "n_fft": int(c.get(f"{s}.nfft", None) or win_length),
            "win_length": win_length,
            "hop_length": hop_length,
            "argmax": bool(c.get(f"{s}.argmax", False)),
            "sample_rate": chroma_rate,
            "duration": duration,
            # A centred STFT of `duration` seconds: one frame per hop plus one (235 for 30 s).
            "length": int(chroma_rate * duration) // hop_length + 1,
        }

    codec = c.get("compression_model_checkpoint", None)
    codec_name = codec[len("//pretrained/"):] if isinstance(codec, str) and codec.startswith("//pretrained/") else None
    known = KNOWN_CODECS.get(codec_name or "")
    codec_n_q = c.get("compression_model_n_q", None)
    return {
        "hidden_size": dim,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "ffn_dim": ffn_dim,
        "num_codebooks": n_q,
        "vocab_size": card,
        "audio_channels": audio_channels,
        "delays": delays,
        "sample_rate": sample_rate,
        "frame_rate": known["frame_rate"] if known else None,  # filled from the codec by read_meta_folder
        "max_duration": duration,
        "text_encoder": text_encoder,
        "text_encoder_hidden_size": text_hidden,
        "text_encoder_in_state": False,
        "normalize_text": bool(c.get("conditioners.description.t5.normalize_text", False)),
        "cross_attention": cross_attention,
        "melody": melody,
        "chroma": chroma,
        "cfg_coef": float(c.get("classifier_free_guidance.inference_coef", 3.0)),
        "two_step_cfg": bool(c.get(f"{t}.two_step_cfg", False)),
        "layer_norm_eps": 1e-5,  # audiocraft's create_norm_fn hard-codes it
        "norm_first": True,
        "bias": False,
        "activation": "gelu",
        "positional_embedding": "sin",
        "max_period": 10000.0,
        "compression_model": codec,
        "codec_num_codebooks": int(codec_n_q) if codec_n_q is not None else n_q // audio_channels,
    }


_LAYER_RENAMES = {
    "self_attn.out_proj.weight": "self_attn.out_proj.weight",
    "cross_attention.out_proj.weight": "encoder_attn.out_proj.weight",
    "norm1.weight": "self_attn_layer_norm.weight",
    "norm1.bias": "self_attn_layer_norm.bias",
    "norm_cross.weight": "encoder_attn_layer_norm.weight",
    "norm_cross.bias": "encoder_attn_layer_norm.bias",
    "norm2.weight": "final_layer_norm.weight",
    "norm2.bias": "final_layer_norm.bias",
    "linear1.weight": "fc1.weight",
    "linear2.weight": "fc2.weight",
}
_FUSED_QKV = {"self_attn.in_proj_weight": "self_attn", "cross_attention.in_proj_weight": "encoder_attn"}
_TOP_RENAMES = {
    "out_norm.weight": "decoder.model.decoder.layer_norm.weight",
    "out_norm.bias": "decoder.model.decoder.layer_norm.bias",
    "condition_provider.conditioners.description.output_proj.weight": "enc_to_dec_proj.weight",
    "condition_provider.conditioners.description.output_proj.bias": "enc_to_dec_proj.bias",
    "condition_provider.conditioners.self_wav.output_proj.weight": "audio_enc_to_dec_proj.weight",
    "condition_provider.conditioners.self_wav.output_proj.bias": "audio_enc_to_dec_proj.bias",
}
_T5_PREFIX = "condition_provider.conditioners.description.t5."


def _expected_lm_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    d, f, card, k = cfg["hidden_size"], cfg["ffn_dim"], cfg["vocab_size"], cfg["num_codebooks"]
    shapes: dict[str, tuple[int, ...]] = {}
    base = "decoder.model.decoder"
    for i in range(k):
        shapes[f"{base}.embed_tokens.{i}.weight"] = (card + 1, d)  # + the special token
        shapes[f"decoder.lm_heads.{i}.weight"] = (card, d)
    attns = ["self_attn"] + (["encoder_attn"] if cfg["cross_attention"] else [])
    for n in range(cfg["num_hidden_layers"]):
        p = f"{base}.layers.{n}"
        for a in attns:
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes[f"{p}.{a}.{proj}.weight"] = (d, d)
        norms = ["self_attn_layer_norm", "final_layer_norm"]
        norms += ["encoder_attn_layer_norm"] if cfg["cross_attention"] else []
        for norm in norms:
            shapes[f"{p}.{norm}.weight"] = shapes[f"{p}.{norm}.bias"] = (d,)
        shapes[f"{p}.fc1.weight"] = (f, d)
        shapes[f"{p}.fc2.weight"] = (d, f)
    shapes[f"{base}.layer_norm.weight"] = shapes[f"{base}.layer_norm.bias"] = (d,)
    shapes["enc_to_dec_proj.weight"] = (d, cfg["text_encoder_hidden_size"])
    shapes["enc_to_dec_proj.bias"] = (d,)
    if cfg["melody"]:
        shapes["audio_enc_to_dec_proj.weight"] = (d, cfg["chroma"]["n_chroma"])
        shapes["audio_enc_to_dec_proj.bias"] = (d,)
    return shapes


def meta_lm_to_hf(best_state: dict, cfg: dict | str) -> tuple[dict[str, Tensor], dict]:
    """Rename an audiocraft LM state dict to Hugging Face MusicGen names; summarise its config.

    `cfg` is the export's 'xp.cfg' (YAML text or the parsed mapping). Returns (state, info) where state holds
    `decoder.*`, `enc_to_dec_proj.*` (and `audio_enc_to_dec_proj.*` for melody, `text_encoder.*` if T5 was
    fine-tuned) with tensors in their stored dtype, and info is a plain dict: hidden_size, num_hidden_layers,
    num_attention_heads, ffn_dim, num_codebooks, vocab_size, audio_channels, delays, sample_rate, frame_rate
    (None if the codec is not known from the config alone), max_duration, text_encoder,
    text_encoder_hidden_size, melody, cross_attention, chroma (dict or None), cfg_coef, layer_norm_eps, ...
    """
    where = LM_FILE
    if not isinstance(best_state, dict) or not best_state:
        raise UserError(f"{where}: 'best_state' is not a state dict; this is not a Meta MusicGen export.")
    c = _Cfg(cfg, where)
    try:
        info = _lm_cfg(c, best_state)
    except (TypeError, ValueError) as e:  # e.g. a number written as text
        raise UserError(f"{where}: a config value has the wrong type ({e}); the export is damaged.") from None
    d = info["hidden_size"]

    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in best_state.items():
        if not isinstance(value, Tensor):
            raise UserError(f"{where}: '{key}' is a {type(value).__name__}, not a tensor; the export is damaged.")
        key = key.replace(".mha.", ".")  # non-custom attention saves through nn.MultiheadAttention
        if _IGNORED_LM_KEYS.match(key):
            continue
        if key.startswith(_T5_PREFIX):  # T5 fine-tuned with the LM: its weights travel in the LM state
            out["text_encoder." + key[len(_T5_PREFIX):]] = value
            info["text_encoder_in_state"] = True
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        m = re.fullmatch(r"emb\.(\d+)\.weight", key)
        if m:
            out[f"decoder.model.decoder.embed_tokens.{m.group(1)}.weight"] = value
            continue
        m = re.fullmatch(r"linears\.(\d+)\.weight", key)
        if m:
            out[f"decoder.lm_heads.{m.group(1)}.weight"] = value
            continue
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", key)
        if m:
            prefix, local = f"decoder.model.decoder.layers.{m.group(1)}", m.group(2)
            if local in _LAYER_RENAMES:
                out[f"{prefix}.{_LAYER_RENAMES[local]}"] = value
                continue
            if local in _FUSED_QKV:
                if value.shape[0] != 3 * d:
                    raise UserError(f"{where}: '{key}' has {value.shape[0]} rows, expected 3 x {d} (q | k | v).")
                attn = _FUSED_QKV[local]
                # Rows are q | k | v (PyTorch's MultiheadAttention convention). Clones, so that the three do not
                # share one storage (safetensors refuses shared tensors) and the fused tensor can be freed.
                for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[f"{prefix}.{attn}.{name}.weight"] = value[i * d:(i + 1) * d].clone()
                continue
        unknown.append(key)
    if unknown:
        raise UserError(f"{where}: weights this reader does not know: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}; the model is not a standard MusicGen.")

    expected = _expected_lm_shapes(info)
    missing = [k for k in expected if k not in out]
    if missing:
        raise UserError(f"{where}: missing weights for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''};"
                        " the export is incomplete or its config does not match its weights.")
    for key, shape in expected.items():
        if tuple(out[key].shape) != shape:
            raise UserError(f"{where}: '{key}' has shape {tuple(out[key].shape)} but the config implies {shape}; "
                            "config and weights disagree.")
    extra = [k for k in out if k not in expected and not k.startswith("text_encoder.")]
    if extra:  # e.g. cross-attention weights in a melody model
        raise UserError(f"{where}: weights the config does not account for: {', '.join(extra[:5])}.")
    return out, info


# ---------------------------------------------------------------------------------------------------- EnCodec

# SEANetEncoder/Decoder keyword defaults, for keys a config leaves out.
_SEANET_DEFAULTS = {
    "channels": 1, "dimension": 128, "n_filters": 32, "n_residual_layers": 3, "ratios": [8, 5, 4, 2],
    "activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "none", "norm_params": {},
    "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2, "causal": False,
    "pad_mode": "reflect", "true_skip": True, "compress": 2, "lstm": 0, "disable_norm_outer_blocks": 0,
}


def _codec_cfg(c: _Cfg) -> dict:
    w = c.where
    for key, expected in (("compression_model", "encodec"), ("encodec.autoencoder", "seanet"),
                          ("encodec.quantizer", "rvq")):
        value = c.get(key)
        _require(value == expected, w, key, value, repr(expected))
    # builders.get_encodec_autoencoder: shared seanet.* keys, then per-side overrides.
    shared = {k: v for k, v in c.section("seanet").items() if k not in ("encoder", "decoder")}
    enc = {**_SEANET_DEFAULTS, **shared, **c.section("seanet.encoder")}
    dec = {**_SEANET_DEFAULTS, "final_activation": None, "trim_right_ratio": 1.0, **shared,
           **c.section("seanet.decoder")}
    for key in _SEANET_DEFAULTS:  # transformers builds both sides from one config
        _require(enc[key] == dec[key], w, f"seanet.encoder/decoder.{key}", (enc[key], dec[key]),
                 "the same value on both sides")
    _require(enc["norm"] == "weight_norm", w, "seanet.norm", enc["norm"], "'weight_norm'")
    outer = enc["disable_norm_outer_blocks"]
    _require(outer == 0, w, "seanet.disable_norm_outer_blocks", outer, "0")
    _require(enc["activation"] == "ELU" and float((enc["activation_params"] or {}).get("alpha", 1.0)) == 1.0, w,
             "seanet.activation", (enc["activation"], enc["activation_params"]), "ELU with alpha 1")
    _require(int(enc["lstm"]) >= 1, w, "seanet.lstm", enc["lstm"], "at least 1 LSTM layer")
    _require(dec["final_activation"] is None, w, "seanet.decoder.final_activation", dec["final_activation"], "None")
    codebook_dim = c.get("rvq.codebook_dim", None)
    _require(codebook_dim in (None, enc["dimension"]), w, "rvq.codebook_dim", codebook_dim, "the SEANet dimension")

    ratios = [int(r) for r in enc["ratios"]]
    sample_rate = int(c.get("encodec.sample_rate", None) or c.get("sample_rate"))
    channels = int(c.get("encodec.channels", enc["channels"]))
    causal = bool(c.get("encodec.causal", enc["causal"]))
    n_q, bins = int(c.get("rvq.n_q")), int(c.get("rvq.bins"))
    hop = math.prod(ratios)
    frame_rate = math.ceil(sample_rate / hop)  # transformers' EncodecConfig.frame_rate
    bits = math.ceil(math.log2(bins))
    kwargs = {
        "sampling_rate": sample_rate,
        "audio_channels": channels,
        "normalize": bool(c.get("encodec.renormalize", False)),
        "chunk_length_s": None,
        "overlap": None,
        "hidden_size": int(enc["dimension"]),
        "num_filters": int(enc["n_filters"]),
        "num_residual_layers": int(enc["n_residual_layers"]),
        "upsampling_ratios": ratios,
        "norm_type": "weight_norm",
        "kernel_size": int(enc["kernel_size"]),
        "last_kernel_size": int(enc["last_kernel_size"]),
        "residual_kernel_size": int(enc["residual_kernel_size"]),
        "dilation_growth_rate": int(enc["dilation_base"]),
        "use_causal_conv": causal,
        "pad_mode": str(enc["pad_mode"]),
        "compress": int(enc["compress"]),
        "num_lstm_layers": int(enc["lstm"]),
        "trim_right_ratio": float(dec["trim_right_ratio"]),
        "codebook_size": bins,
        "codebook_dim": int(enc["dimension"]),
        "use_conv_shortcut": not bool(enc["true_skip"]),
        # transformers derives the number of quantizers from the top bandwidth: n_q * frame_rate * bits / 1000.
        "target_bandwidths": [n_q * frame_rate * bits / 1000],
    }
    if int(1000 * kwargs["target_bandwidths"][-1] // (frame_rate * bits)) != n_q:  # float rounding down
        kwargs["target_bandwidths"] = [(n_q + 0.5) * frame_rate * bits / 1000]
    return kwargs


def _rename_conv_param(name: str) -> str | None:
    """audiocraft's old-style weight norm (weight_g, weight_v) -> torch's parametrization names."""
    return {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1",
            "parametrizations.weight.original0": "parametrizations.weight.original0",
            "parametrizations.weight.original1": "parametrizations.weight.original1", "bias": "bias"}.get(name)


def _rename_codec_key(key: str) -> str | None:
    m = re.fullmatch(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)", key)
    if m:
        return f"quantizer.layers.{m.group(1)}.codebook.{m.group(2)}"
    m = re.fullmatch(r"(encoder|decoder)\.model\.(\d+)\.(.+)", key)
    if not m:
        return None
    prefix, rest = f"{m.group(1)}.layers.{m.group(2)}", m.group(3)
    if rest.startswith("lstm."):
        return f"{prefix}.{rest}"
    # StreamableConv1d -> NormConv1d -> Conv1d is `conv.conv`; transposed ones are `convtr.convtr`.
    m = re.fullmatch(r"((?:block\.\d+\.|shortcut\.)?)(?:conv\.conv|convtr\.convtr)\.(.+)", rest)
    if m:
        param = _rename_conv_param(m.group(2))
        return f"{prefix}.{m.group(1)}conv.{param}" if param else None
    return None


def meta_compression_to_hf(state: dict) -> tuple[dict[str, Tensor] | None, dict]:
    """Turn a loaded `compression_state_dict.bin` into a transformers EncodecModel state dict and config kwargs.

    The {'pretrained': NAME} form gives (None, {'pretrained': NAME}): the codec is a Hugging Face model by name.
    """
    where = CODEC_FILE
    if not isinstance(state, dict):
        raise UserError(f"{where}: not a dict; this is not a Meta MusicGen export.")
    if "pretrained" in state:
        name = state["pretrained"]
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: 'pretrained' should name a codec, found {name!r}.")
        return None, {"pretrained": name}
    if "best_state" not in state or "xp.cfg" not in state:
        raise UserError(f"{where}: has neither 'pretrained' nor 'best_state' with 'xp.cfg'; "
                        "this is not a Meta MusicGen export.")
    try:
        kwargs = _codec_cfg(_Cfg(state["xp.cfg"], where))
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where}: a config value has the wrong type ({e}); the export is damaged.") from None

    if not isinstance(state["best_state"], dict):
        raise UserError(f"{where}: 'best_state' is not a state dict; the export is damaged.")
    out: dict[str, Tensor] = {}
    for key, value in state["best_state"].items():
        new = _rename_codec_key(key)
        if new is None:
            raise UserError(f"{where}: weight '{key}' has no place in a transformers EnCodec; "
                            "the codec is not a standard SEANet EnCodec.")
        out[new] = value

    # Check names and shapes against the model transformers would build (on the meta device: no memory).
    from transformers import EncodecConfig, EncodecModel

    with torch.device("meta"):
        reference = EncodecModel(EncodecConfig(**kwargs)).state_dict()
    missing = [k for k in reference if k not in out]
    extra = [k for k in out if k not in reference]
    if missing or extra:
        raise UserError(f"{where}: weights and config disagree (missing: {missing[:3]}, unexpected: {extra[:3]}); "
                        "the codec export is damaged.")
    for key, ref in reference.items():
        if out[key].shape != ref.shape:
            raise UserError(f"{where}: '{key}' has shape {tuple(out[key].shape)}, config implies {tuple(ref.shape)}.")
    return out, kwargs


# ---------------------------------------------------------------------------------------------------- folders


def _codec_facts(codec_state, codec_cfg: dict) -> dict | None:
    """sample_rate, frame_rate, num_codebooks, codebook_size of the codec, where they can be known."""
    if codec_state is None:
        return KNOWN_CODECS.get(codec_cfg["pretrained"])
    return codec_facts(codec_cfg)


def read_meta_folder(folder: str | Path) -> MetaCheckpoint:
    """Read a Meta export folder (state_dict.bin and compression_state_dict.bin) into Hugging Face names."""
    folder = Path(folder)
    if folder.is_file() and folder.name in (LM_FILE, CODEC_FILE):
        folder = folder.parent
    if not folder.is_dir():
        raise ModelNotFound(f"{folder} is not a folder; point to the folder holding {LM_FILE} and {CODEC_FILE}.")
    lm_path = folder / LM_FILE
    if not lm_path.is_file():
        raise ModelNotFound(
            f"{folder} has no {LM_FILE}: a Meta MusicGen export folder holds {LM_FILE} and {CODEC_FILE}."
        )
    pkg = load_meta_pickle(lm_path)
    if "best_state" not in pkg or "xp.cfg" not in pkg:
        raise UserError(f"{lm_path} lacks 'best_state' or 'xp.cfg': it is not a Meta MusicGen export "
                        "(a Hugging Face checkpoint is a folder with config.json and model.safetensors).")
    lm_state, lm_cfg = meta_lm_to_hf(pkg["best_state"], pkg["xp.cfg"])

    codec_path = folder / CODEC_FILE
    if codec_path.is_file():
        codec_state, codec_cfg = meta_compression_to_hf(load_meta_pickle(codec_path))
    elif isinstance(lm_cfg["compression_model"], str) and lm_cfg["compression_model"].startswith("//pretrained/"):
        # The LM's own config names the codec it was trained on, which is all the short export form says anyway.
        name = lm_cfg["compression_model"][len("//pretrained/"):]
        log.warning("%s has no %s; using the codec its config names: %s", folder, CODEC_FILE, name)
        codec_state, codec_cfg = None, {"pretrained": name}
    else:
        raise ModelNotFound(f"{folder} has no {CODEC_FILE}, and its config names no pretrained codec; "
                            f"copy {CODEC_FILE} from the same export.")

    if codec_state is None and codec_cfg["pretrained"].startswith("dac_"):
        raise UserError(f"{folder}: the codec is {codec_cfg['pretrained']}, a DAC model; only EnCodec is supported.")
    facts = _codec_facts(codec_state, codec_cfg)
    if facts is not None:
        mismatch = []
        if facts["sample_rate"] != lm_cfg["sample_rate"]:
            mismatch.append(f"sample rate {facts['sample_rate']} vs {lm_cfg['sample_rate']}")
        if facts["codebook_size"] != lm_cfg["vocab_size"]:
            mismatch.append(f"codebook size {facts['codebook_size']} vs {lm_cfg['vocab_size']}")
        if facts["num_codebooks"] < lm_cfg["codec_num_codebooks"]:
            mismatch.append(f"{facts['num_codebooks']} codebooks, the LM needs {lm_cfg['codec_num_codebooks']}")
        if mismatch:
            raise UserError(f"{folder}: the codec does not fit the LM ({'; '.join(mismatch)}); "
                            f"use the {CODEC_FILE} exported with this model.")
        lm_cfg["frame_rate"] = facts["frame_rate"]
    version = pkg.get("version")
    return MetaCheckpoint(folder=folder, lm_state=lm_state, lm_cfg=lm_cfg, codec_state=codec_state,
                          codec_cfg=codec_cfg, version=version if isinstance(version, str) else None)
