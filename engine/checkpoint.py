"""Loading MusicGen from a published checkpoint, given one `--model` string.

Accepted: a local folder in Hugging Face format (config.json + safetensors or .bin, sharded too, tokenizer files);
a hub id such as `facebook/musicgen-small` (the local Hugging Face cache first, then the hub); a folder in Meta's
audiocraft export format (`state_dict.bin` + `compression_state_dict.bin`); or `random-tiny`, a small random
model for wiring tests that makes noise.

Our LM is built empty (on the meta device) and takes the checkpoint's tensors directly, cast once to the target
dtype: no transformers decoder is ever instantiated. T5 and EnCodec are transformers' own classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from engine.codec import Codec
from engine.devices import auto_dtype, resolve_device, resolve_dtype
from engine.errors import ModelNotFound, UserError
from engine.lm import LMConfig, MusicGenLM
from engine.model import MusicGen
from engine.pattern import DelayPattern
from engine.text import TextConditioner

log = logging.getLogger(__name__)

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
META_FILES = ("state_dict.bin", "compression_state_dict.bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DEC = "decoder.model.decoder."


# ----------------------------------------------------------------------------------------------- where it is
def resolve(spec: str, what: str = "model") -> Path:
    """A local folder as given, or the snapshot folder of a hub id (cache first, then the network)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"--model {spec!r} is a file; give the folder that holds config.json and the weights")
        return path
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1) or not HUB_ID.match(spec):
        raise ModelNotFound(f"no {what} folder at {str(path)!r}: check the path, or give a hub id such as facebook/musicgen-small")
    return _from_hub(spec, what)


def _from_hub(repo_id: str, what: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as cached_err:  # not in the cache: try the network
        log.info("%s %s not in the local cache (%s); trying the hub", what, repo_id, type(cached_err).__name__)
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "state_dict.bin", "compression_state_dict.bin"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:
        raise ModelNotFound(
            f"{what} {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and could not be "
            f"downloaded ({type(err).__name__}). On a connected machine run `hf download {repo_id}` (or "
            f"`huggingface-cli download {repo_id}`) and copy the cache here, or pass --model /path/to/folder"
        ) from None


# ------------------------------------------------------------------------------------------ reading weights
def read_hf_tensors(folder: Path, prefixes: tuple[str, ...], convert=None) -> dict[str, Tensor]:
    """Every tensor whose name starts with one of `prefixes`, from safetensors (sharded or not) or .bin.

    `convert(name, tensor)`, when given, is applied to each tensor as it is read, so that a narrower copy never
    waits for the whole checkpoint at full width (peak memory).
    """
    files = _weight_files(folder)
    convert = convert or (lambda name, t: t)
    out: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                for name, tensor in _read_safetensors(f, prefixes):
                    out[name] = convert(name, tensor)
            except Exception as err:
                raise UserError(f"{f} is not a readable safetensors file ({err}): download it again", code="no_model") from None
        else:
            state = _load_pickle(f)
            out.update({k: convert(k, v) for k, v in state.items() if k.startswith(prefixes)})
    return out


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _read_safetensors(path: Path, prefixes: tuple[str, ...]):
    """Yield (name, tensor) for the tensors whose names start with `prefixes`, one at a time, with plain reads.

    The safetensors package maps the whole file into memory, and every page it touched counts in the process's
    resident memory for as long as any tensor from it lives: reading a 2 GB fp32 checkpoint into bf16 would peak
    at the file's size on top of the model. Plain reads of one tensor at a time leave only what is kept.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= size - 8:
            raise ValueError("bad header length")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__" or not name.startswith(prefixes):
                continue
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
            numel = math.prod(shape)
            if not (0 <= start <= end and base + end <= size and end - start == numel * dtype.itemsize):
                raise ValueError(f"tensor {name} lies outside the file or does not fit its shape")
            raw = torch.empty(end - start, dtype=torch.uint8)
            f.seek(base + start)
            if f.readinto(raw.numpy()) != end - start:
                raise ValueError(f"tensor {name} is truncated")
            yield name, raw.view(dtype).reshape(shape)


DECODER_LINEAR = re.compile(r"^decoder\..*(_proj|fc1|fc2|lm_heads\.\d+)\.weight$")


def _narrow_while_reading(linear_dtype: torch.dtype, t5_dtype: torch.dtype = torch.float32):
    """A `read_hf_tensors` converter: decoder linear weights straight to `linear_dtype`, T5's to `t5_dtype` (but
    for the layers transformers keeps in fp32), everything else as stored. Converting as each tensor is read
    keeps the wide copies from ever being in memory together (a t5-base in fp32 is 440 MB)."""
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


def _weight_files(folder: Path) -> list[Path]:
    for name in HF_WEIGHTS:
        p = folder / name
        if not p.exists():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(p.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as err:
                raise UserError(f"{p} is not a valid shard index ({err})", code="no_model") from None
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise ModelNotFound(f"{folder} lists weight shards that are missing: {', '.join(missing)}")
            return [folder / s for s in shards]
        return [p]
    raise ModelNotFound(
        f"{folder} has a config.json but no weights (looked for {', '.join(HF_WEIGHTS)}): download the whole "
        "model folder"
    )


def _load_pickle(path: Path) -> dict:
    # Pickles can run code when loaded: weights_only refuses everything but tensors and plain containers.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise UserError(f"{path} could not be loaded as a weights-only torch file ({err}); it is not trusted", code="no_model") from None


def _read_config(folder: Path) -> dict:
    p = folder / "config.json"
    try:
        cfg = json.loads(p.read_text())
    except ValueError as err:
        raise UserError(f"{p} is not valid JSON ({err}): download the model folder again", code="no_model") from None
    if not isinstance(cfg, dict) or "decoder" not in cfg or "audio_encoder" not in cfg or "text_encoder" not in cfg:
        raise UserError(f"{p} is not a MusicGen config (it needs decoder, text_encoder and audio_encoder sections)", code="no_model")
    return cfg


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
    are prepacked in the asked precision (engine/quantize.py says why).
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
    return lm


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


def _no_init():
    """transformers' switch that skips random init (the weights are replaced at once); its home moved in 5.x."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            import contextlib

            return contextlib.nullcontext()
    return no_init_weights()


def text_dtype(dtype: torch.dtype) -> torch.dtype:
    """The T5 encoder's precision for an LM loaded in `dtype`: bf16 for bf16 and int8 models (weights straight
    into the target dtype; T5 was trained in bf16), fp32 otherwise (fp16 overflows in T5's feed-forward)."""
    return torch.bfloat16 if dtype in (torch.bfloat16, torch.int8, torch.int4) else torch.float32


def _keeps_fp32(cls, name: str) -> bool:
    """Whether transformers keeps the weight `name` of `cls` in fp32 whatever the model's dtype (T5: `wo`)."""
    keep = getattr(cls, "_keep_in_fp32_modules", None) or []
    return any(part in keep for part in name.split("."))


def narrow_text_encoder(t5, dtype: torch.dtype):
    """A ready-made T5 in `dtype`, its keep-in-fp32 layers left in fp32 (in place)."""
    with torch.no_grad():
        for name, p in t5.named_parameters():
            p.data = p.data.float() if _keeps_fp32(type(t5), name) else p.data.to(dtype)
    return t5


def _submodel(cls, config, sd: dict[str, Tensor], prefix: str, what: str, dtype: torch.dtype = torch.float32):
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
        with _no_init():  # (EnCodec's conv geometry): built for real, uninitialized, then handed the tensors
            model = cls(config)
        model.load_state_dict(state, strict=False, assign=True)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    return model.eval()


# -------------------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _returning_freed_memory():
    """While loading, have glibc serve blocks of 1 MiB and more straight from the OS and give them back when freed.

    Loading converts tensors of tens of MB one by one; by default glibc raises its mmap threshold after the first
    such free and keeps every later freed buffer in its heap, so a bf16 load peaked ~400 MB above what it keeps
    (measured, benchmarks/RESULTS.md). Afterwards the threshold goes to 32 MiB, glibc's own ceiling, so that the
    codec's and the prefill's large temporaries are reused rather than mapped afresh each time. A no-op where
    glibc is not the allocator.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also turns off glibc's dynamic raising
    try:
        yield
    finally:
        trim(0)
        mallopt(-3, 32 << 20)


def load_model(spec: str, device: str = "auto", dtype: str = "float32") -> MusicGen:
    """The MusicGen named by `spec` on `device` in `dtype` (int8/int4: weight-only, CPU; "auto", what the CLI and
    the server default to: see `engine.devices.auto_dtype`). EnCodec stays fp32; T5 follows `text_dtype`."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dtype.lower() == "auto":
        log.info("--dtype auto: %s (%s; --dtype float32|bfloat16|float16|int8|int4 overrides)",
                 str(dt).removeprefix("torch."), auto_dtype(dev)[1])
    with _returning_freed_memory():
        return _load_model(spec, dev, dt)


def _load_model(spec: str, dev: torch.device, dt: torch.dtype) -> MusicGen:
    if spec == "random-tiny":
        from engine.tiny import random_tiny_state

        log.warning("random-tiny: a RANDOM model for wiring tests. It makes noise, not music. Use --model facebook/musicgen-small for music.")
        cfg, sd, tokenizer = random_tiny_state()
        return _assemble("random-tiny", cfg, sd, tokenizer, dev, dt)
    folder = resolve(spec)
    if (folder / "config.json").exists():
        from transformers import AutoTokenizer

        from engine.quantize import plan_precision

        cfg = _read_config(folder)
        sd = read_hf_tensors(folder, ("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.", "text_encoder.", "audio_encoder."),
                             convert=_narrow_while_reading(plan_precision(dev, dt).storage, text_dtype(dt)))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:
            raise UserError(f"{folder} has no usable tokenizer files ({type(err).__name__}): download the whole folder", code="no_model") from None
        return _assemble(spec, cfg, sd, tokenizer, dev, dt)
    if all((folder / f).exists() for f in META_FILES):
        return _load_meta(spec, folder, dev, dt)
    raise ModelNotFound(
        f"{folder} is neither a Hugging Face MusicGen folder (config.json + weights) nor a Meta audiocraft export "
        f"({' + '.join(META_FILES)})"
    )


def _assemble(name: str, cfg: dict, sd: dict[str, Tensor], tokenizer, device, dtype, t5=None, encodec=None) -> MusicGen:
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
        t5 = _submodel(T5EncoderModel, T5Config.from_dict(cfg["text_encoder"]), sd, "text_encoder.", "T5 text encoder",
                       dtype=text_dtype(dtype))
    else:
        t5 = narrow_text_encoder(t5, text_dtype(dtype))
    text = TextConditioner(tokenizer, t5.to(device), _to(_linear(sd, "enc_to_dec_proj"), device))
    if encodec is None:
        encodec = _submodel(EncodecModel, EncodecConfig.from_dict(cfg["audio_encoder"]), sd, "audio_encoder.", "EnCodec")
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


def _to(module, device):
    return module.to(device) if module is not None else None


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
        t5 = _submodel(T5EncoderModel, t5.config, ckpt.lm_state, "text_encoder.", "T5 text encoder")
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
    return _assemble(spec, cfg, ckpt.lm_state, tokenizer, device, dtype, t5=t5.eval(), encodec=encodec.eval())
