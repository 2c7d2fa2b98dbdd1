"""Loading MusicGen from a published checkpoint, given one `--model` string.

Accepted: a local folder in Hugging Face format (config.json + safetensors or .bin, sharded too, tokenizer files);
a hub id such as `facebook/musicgen-small` (the local Hugging Face cache first, then the hub); a folder in Meta's
audiocraft export format (`state_dict.bin` + `compression_state_dict.bin`); or `random-tiny`, a small random
model for wiring tests that makes noise.

The steps have their own modules: where the folder is (engine/hub.py), reading its tensors (engine/tensors.py),
renaming them and building the models (engine/assemble.py). Loading sets nothing process-wide: the allocator policy
that keeps its peak memory down is the entry points' (bridge/model_loading.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.assemble import assemble, narrow_while_reading, submodel, text_dtype
from engine.devices import auto_dtype, dtype_name, resolve_device, resolve_dtype
from engine.errors import ModelNotFound, UserError
from engine.hub import resolve
from engine.model import MusicGen
from engine.tensors import read_hf_tensors
from engine.threads import in_own_thread

log = logging.getLogger(__name__)

META_FILES = ("state_dict.bin", "compression_state_dict.bin")
HF_PREFIXES = ("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.", "text_encoder.", "audio_encoder.")


def load_model(spec: str, device: str = "auto", dtype: str = "float32") -> MusicGen:
    """The MusicGen named by `spec` on `device` in `dtype` (int8/int4: weight-only, CPU; "auto", what the CLI and
    the server default to: see `engine.devices.auto_dtype`). EnCodec stays fp32; T5 follows `text_dtype`.
    Loads on a thread of its own, so that the OpenMP team quantizing used ends with it (engine/threads.py)."""
    return in_own_thread(_load_model, spec, device, dtype, name="model-load")


def _load_model(spec: str, device: str, dtype: str) -> MusicGen:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dtype.lower() == "auto":
        log.info("--dtype auto: %s (%s; --dtype float32|bfloat16|float16|int8|w8a8|int4 overrides)",
                 dtype_name(dt), auto_dtype(dev)[1])
    if spec == "random-tiny":
        from engine.tiny import random_tiny_state

        log.warning("random-tiny: a RANDOM model for wiring tests. It makes noise, not music. Use --model facebook/musicgen-small for music.")
        cfg, sd, tokenizer = random_tiny_state()
        return assemble("random-tiny", cfg, sd, tokenizer, dev, dt)
    folder = resolve(spec)
    if (folder / "config.json").exists():
        from transformers import AutoTokenizer

        from engine.quantize import plan_precision

        cfg = _read_config(folder)
        sd = read_hf_tensors(folder, HF_PREFIXES, convert=narrow_while_reading(plan_precision(dev, dt).storage, text_dtype(dt)))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:
            raise UserError(f"{folder} has no usable tokenizer files ({type(err).__name__}): download the whole folder", code="no_model") from None
        return assemble(spec, cfg, sd, tokenizer, dev, dt)
    if all((folder / f).exists() for f in META_FILES):
        return _load_meta(spec, folder, dev, dt)
    raise ModelNotFound(
        f"{folder} is neither a Hugging Face MusicGen folder (config.json + weights) nor a Meta audiocraft export "
        f"({' + '.join(META_FILES)})"
    )


def _read_config(folder: Path) -> dict:
    p = folder / "config.json"
    try:
        cfg = json.loads(p.read_text())
    except ValueError as err:
        raise UserError(f"{p} is not valid JSON ({err}): download the model folder again", code="no_model") from None
    if not isinstance(cfg, dict) or "decoder" not in cfg or "audio_encoder" not in cfg or "text_encoder" not in cfg:
        raise UserError(f"{p} is not a MusicGen config (it needs decoder, text_encoder and audio_encoder sections)", code="no_model")
    return cfg


def _load_meta(spec: str, folder: Path, device, dtype) -> MusicGen:
    """Meta's export: LM weights renamed to Hugging Face's names; T5 and EnCodec resolved as Meta does."""
    from transformers import AutoTokenizer, EncodecConfig, EncodecModel, T5EncoderModel

    from engine.meta_format import read_meta_folder

    ckpt = read_meta_folder(folder)
    c = ckpt.lm_cfg
    text_folder = resolve(c["text_encoder"], what="text encoder")
    t5 = T5EncoderModel.from_pretrained(str(text_folder), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(text_folder))
    if c.get("text_encoder_in_state"):  # a fine-tuned T5 shipped inside the LM state replaces the named one
        t5 = submodel(T5EncoderModel, t5.config, ckpt.lm_state, "text_encoder.", "T5 text encoder")
    if ckpt.codec_state is not None:
        encodec = EncodecModel(EncodecConfig(**ckpt.codec_cfg))
        encodec.load_state_dict(ckpt.codec_state)
    else:
        encodec = EncodecModel.from_pretrained(str(resolve(ckpt.codec_pretrained, what="codec")), dtype=torch.float32)
    cfg = {
        "model_type": "musicgen_melody" if c.get("melody") else "musicgen",
        "decoder": {
            "hidden_size": c["hidden_size"], "num_hidden_layers": c["num_hidden_layers"],
            "num_attention_heads": c["num_attention_heads"], "ffn_dim": c["ffn_dim"],
            "num_codebooks": c["num_codebooks"], "vocab_size": c["vocab_size"],
            "audio_channels": c.get("audio_channels", 1), "max_position_embeddings": 2048,
        },
        "text_encoder": t5.config.to_dict(),
        "audio_encoder": encodec.config.to_dict(),
    }
    if c["chroma"] is not None:  # meta_lm_to_hf names them n_chroma and length (235 frames for 30 s, 79 for 10 s)
        cfg.update(num_chroma=c["chroma"]["n_chroma"], chroma_length=c["chroma"]["length"])
    return assemble(spec, cfg, ckpt.lm_state, tokenizer, device, dtype, t5=t5.eval(), encodec=encodec.eval())
