"""From Hugging Face-named tensors to a MusicGen: our LM's names and fused layout, transformers' T5 and EnCodec,
each tensor cast once on its way in to the precision it will run in.

Our LM is built empty (on the meta device) and takes the checkpoint's tensors directly: no transformers decoder is
ever instantiated. T5 and EnCodec are transformers' own classes, built empty too and handed the tensors.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor

from engine.codec import Codec
from engine.errors import UserError
from engine.lm import LMConfig, MusicGenLM
from engine.model import MusicGen
from engine.pattern import DelayPattern
from engine.text import TextConditioner

log = logging.getLogger(__name__)

DEC = "decoder.model.decoder."


# ------------------------------------------------------------------------------------------ precision
DECODER_LINEAR = re.compile(r"^decoder\..*(_proj|fc1|fc2|lm_heads\.\d+)\.weight$")


def text_dtype(dtype: torch.dtype) -> torch.dtype:
    """The T5 encoder's precision for an LM loaded in `dtype`: bf16 for bf16, int8 and int4 models (weights
    straight into the target dtype; T5 was trained in bf16; w8a8 too), fp32 otherwise (fp16 overflows in T5's feed-forward)."""
    return torch.bfloat16 if dtype in (torch.bfloat16, torch.int8, torch.qint8, torch.int4) else torch.float32


def _keeps_fp32(cls, name: str) -> bool:
    """Whether transformers keeps the weight `name` of `cls` in fp32 whatever the model's dtype (T5: `wo`)."""
    keep = getattr(cls, "_keep_in_fp32_modules", None) or []
    return any(part in keep for part in name.split("."))


def narrow_while_reading(linear_dtype: torch.dtype, t5_dtype: torch.dtype = torch.float32):
    """A `read_hf_tensors` converter: decoder linear weights straight to `linear_dtype`, T5's to `t5_dtype` (but
    for the layers transformers keeps in fp32), everything else as stored. Converting as each tensor is read
    keeps the wide copies from ever being in memory together (t5-base's 110M parameters are 440 MB in fp32)."""
    from transformers import T5EncoderModel

    def convert(name: str, t: Tensor) -> Tensor:
        if not t.is_floating_point():
            return t
        if DECODER_LINEAR.match(name):
            return t.to(linear_dtype)
        if name.startswith("text_encoder.") and t5_dtype != torch.float32 and not _keeps_fp32(T5EncoderModel, name):
            return t.to(t5_dtype)
        return t

    return convert


def narrow_text_encoder(t5, dtype: torch.dtype):
    """A ready-made T5 in `dtype`, its keep-in-fp32 layers left in fp32 (in place)."""
    with torch.no_grad():
        for name, p in t5.named_parameters():
            p.data = p.data.float() if _keeps_fp32(type(t5), name) else p.data.to(dtype)
    return t5


# ---------------------------------------------------------------------------------------- the LM's tensors
def lm_config(decoder: dict, cross_attention: bool) -> LMConfig:
    try:
        return LMConfig(
            dim=int(decoder["hidden_size"]),
            n_layers=int(decoder["num_hidden_layers"]),
            n_heads=int(decoder["num_attention_heads"]),
            ffn_dim=int(decoder["ffn_dim"]),
            n_codebooks=int(decoder["num_codebooks"]),
            card=int(decoder.get("vocab_size", 2048)),
            cross_attention=cross_attention,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"the decoder config is missing or has a bad {err}", code="no_model") from None


def lm_state_from_hf(sd: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    """Hugging Face decoder names -> ours (q, k, v fused; the K heads stacked), taken out of `sd` as they go
    (each fused original is freed at once: peak memory)."""
    try:
        out = {f"embeddings.{k}.weight": sd.pop(f"{DEC}embed_tokens.{k}.weight") for k in range(cfg.n_codebooks)}
        for n in range(cfg.n_layers):
            src, dst = f"{DEC}layers.{n}.", f"layers.{n}."
            a = src + "self_attn."
            out[dst + "attn.wqkv.weight"] = torch.cat([sd.pop(a + f"{p}_proj.weight") for p in "qkv"])
            out[dst + "attn.wo.weight"] = sd.pop(a + "out_proj.weight")
            norms = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
            if cfg.cross_attention:
                c = src + "encoder_attn."
                out[dst + "cross.wq.weight"] = sd.pop(c + "q_proj.weight")
                out[dst + "cross.wkv.weight"] = torch.cat([sd.pop(c + "k_proj.weight"), sd.pop(c + "v_proj.weight")])
                out[dst + "cross.wo.weight"] = sd.pop(c + "out_proj.weight")
                norms["norm_cross"] = "encoder_attn_layer_norm"
            for ours, theirs in norms.items():
                for p in ("weight", "bias"):
                    out[f"{dst}{ours}.{p}"] = sd.pop(f"{src}{theirs}.{p}")
            out[dst + "fc1.weight"] = sd.pop(src + "fc1.weight")
            out[dst + "fc2.weight"] = sd.pop(src + "fc2.weight")
        out["out_norm.weight"] = sd.pop(DEC + "layer_norm.weight")
        out["out_norm.bias"] = sd.pop(DEC + "layer_norm.bias")
        out["heads.weight"] = torch.cat([sd.pop(f"decoder.lm_heads.{k}.weight") for k in range(cfg.n_codebooks)])
    except KeyError as err:
        raise UserError(f"the checkpoint lacks the decoder tensor {err}: it is incomplete or not MusicGen", code="no_model") from None
    return out


def build_lm(cfg: LMConfig, state: dict[str, Tensor], device: torch.device, dtype: torch.dtype) -> MusicGenLM:
    """Our LM from our-named tensors; `state` is consumed (emptied) so no second copy of the weights survives.

    `dtype` may be torch.int8 (weight-only int8, CPU). On CPU the activations stay fp32 and the linear weights
    are prepacked in the asked precision (engine/quantize.py says why); with narrow weights the KV cache narrows
    (`narrow_kv_dtype`).
    """
    from engine.quantize import plan_precision, prepare_for_cpu

    precision = plan_precision(device, dtype)
    with torch.device("meta"):
        lm = MusicGenLM(cfg)
    linear = {f"{name}.weight" for name, m in lm.named_modules() if isinstance(m, torch.nn.Linear)}
    # Cast each tensor once on its way in; `assign` makes these the parameters (no second copy).
    cast = {k: v.to(device=device, dtype=precision.storage if k in linear else precision.activations) for k, v in state.items()}
    state.clear()
    try:
        lm.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError as err:
        raise UserError(f"the checkpoint's decoder does not fit its config: {str(err).splitlines()[0]}", code="no_model") from None
    del cast
    lm = lm.eval().requires_grad_(False)  # inference only: no autograd bookkeeping
    if precision.weights is not None:
        prepare_for_cpu(lm, precision.weights)  # one matrix at a time: each original is freed as it is replaced
    lm.weight_dtype = dtype
    if device.type == "cpu" and precision.weights in ("bfloat16", "int8", "w8a8", "int4"):
        # Narrow weights: the KV cache narrows too (fewer bytes a step reads per position of context, so a step at a
        # long context costs little more than at a short one: benchmarks/RESULTS.md). fp32 models keep an fp32
        # cache, exact against transformers.
        lm.kv_dtype = narrow_kv_dtype(precision.weights, cfg.head_dim)
    return lm


def narrow_kv_dtype(weights: str, head_dim: int = 64) -> torch.dtype | None:
    """The KV cache for a CPU model with `weights` linears: int8 (~a quarter of fp32's bytes per position) for
    integer weights where the native decode kernel reads it (AVX2; heads of a multiple of 32 up to 256); bf16 where
    bf16 attention is fast; else None (the activations' fp32)."""
    from engine import native

    kernel_fits = head_dim % 32 == 0 and head_dim <= 256
    if weights in ("int8", "w8a8", "int4") and kernel_fits and native.supports("decode_attention_int8"):
        return torch.int8
    return torch.bfloat16 if bf16_kv_cache_fast() else None


def bf16_kv_cache_fast() -> bool:
    """bf16 attention (SDPA) beats the fp32 path where it was measured: CPUs with AMX tiles and native bf16. On
    CPUs with avx512_bf16 alone an earlier round measured bf16 attention slower (benchmarks/RESULTS.md), so
    they keep the fp32 cache until `benchmarks/kv_context.py` says otherwise there."""
    from engine.quantize import bf16_supported

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bf16_supported() and bool(amx())


# ------------------------------------------------------------------------------ T5, EnCodec and projections
def submodel(cls, config, sd: dict[str, Tensor], prefix: str, what: str, dtype: torch.dtype = torch.float32):
    """transformers' `cls` holding the `prefix` tensors of `sd` (taken out of `sd`: the model owns them now), in
    `dtype` except for the layers transformers keeps in fp32."""
    state = {k[len(prefix):]: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}
    for k, t in state.items():  # one tensor at a time: the stored copy is freed as its converted one is made
        state[k] = t.float() if dtype == torch.float32 or _keeps_fp32(cls, k) else t.to(dtype)
    # Built empty and handed the tensors themselves: no random init, no second copy (peak memory).
    with torch.device("meta"):
        model = cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m != "encoder.embed_tokens.weight"]  # tied to `shared` in T5
    if missing or unexpected:
        raise UserError(f"the checkpoint's {what} weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})", code="no_model")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # buffers the checkpoint does not hold
        from transformers.initialization import no_init_weights  # random init skipped: replaced at once

        with no_init_weights():  # (EnCodec's conv geometry): built for real, uninitialized, then handed the tensors
            model = cls(config)
        model.load_state_dict(state, strict=False, assign=True)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    return model.eval()


def _linear(sd: dict[str, Tensor], name: str) -> torch.nn.Linear | None:
    if f"{name}.weight" not in sd:
        return None
    w = sd[f"{name}.weight"].float()
    proj = torch.nn.Linear(w.shape[1], w.shape[0], bias=f"{name}.bias" in sd)
    with torch.no_grad():
        proj.weight.copy_(w)
        if proj.bias is not None:
            proj.bias.copy_(sd[f"{name}.bias"].float())
    return proj


def _to(module, device):
    return module.to(device) if module is not None else None


# ------------------------------------------------------------------------------------------------ assembly
def assemble(name: str, cfg: dict, sd: dict[str, Tensor], tokenizer, device, dtype, t5=None, encodec=None) -> MusicGen:
    """Build the pieces from Hugging Face-named tensors (T5 and EnCodec may come ready-made)."""
    from transformers import EncodecConfig, EncodecModel, T5Config, T5EncoderModel

    melody = cfg.get("model_type") == "musicgen_melody"
    lmcfg = lm_config(cfg["decoder"], cross_attention=not melody)
    lm_state = lm_state_from_hf(sd, lmcfg)
    for k in [k for k in sd if k.startswith("decoder.")]:
        del sd[k]  # the LM owns these now: dropping them here lets build_lm free each as it is converted
    lm = build_lm(lmcfg, lm_state, device, dtype)
    channels = int(cfg["decoder"].get("audio_channels", 1))
    if t5 is None:
        t5 = submodel(T5EncoderModel, T5Config.from_dict(cfg["text_encoder"]), sd, "text_encoder.", "T5 text encoder",
                       dtype=text_dtype(dtype))
    else:
        t5 = narrow_text_encoder(t5, text_dtype(dtype))
    text = TextConditioner(tokenizer, t5.to(device), _to(_linear(sd, "enc_to_dec_proj"), device))
    if encodec is None:
        encodec = submodel(EncodecModel, EncodecConfig.from_dict(cfg["audio_encoder"]), sd, "audio_encoder.", "EnCodec")
    codec = Codec(encodec.to(device), channels, lmcfg.n_codebooks)
    model = MusicGen(
        name=name,
        lm=lm,
        pattern=DelayPattern.for_codebooks(lmcfg.n_codebooks, channels),
        text=text,
        codec=codec,
        max_positions=int(cfg["decoder"].get("max_position_embeddings", 2048)),
    )
    if melody:
        from engine.melody import MelodyConditioner

        model.melody = MelodyConditioner.from_hf(cfg, _to(_linear(sd, "audio_enc_to_dec_proj"), device))
    log.info("loaded %s: %d layers, dim %d, %d codebooks, %d channel(s), on %s in %s", name, lmcfg.n_layers,
             lmcfg.dim, lmcfg.n_codebooks, channels, device, str(dtype).replace("torch.", ""))
    return model
