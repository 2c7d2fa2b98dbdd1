"""Reduced precision against fp32 on musicgen-small's shape (random weights): per-step logits, teacher-forced.

For bf16, int8, w8a8 and int4 weights (`--dtypes`, each with the KV cache it ships with: int8 or bf16, `narrow_kv_dtype`)
and for a KV cache alone (fp32 weights; `--kv-cache`, bf16 or int8): mean cosine similarity of the logits, mean KL(p_fp32 || p) of their softmax (nats per
token) and top-1 agreement, over `--steps` steps of one fixed token sequence, both guidance rows, all codebooks.
Then the text encoder: T5 (t5-base's shape) in bf16, as bf16 and int8 models load it, against fp32: cosine of
its output states per token.

    python benchmarks/quality.py [--steps 100] [--dtypes bfloat16,int8,w8a8,int4] [--kv-cache bfloat16] [--model FOLDER]

With `--model` (a local Hugging Face MusicGen folder, e.g. a downloaded facebook/musicgen-small) it measures that
checkpoint instead of random weights: what a user should run before trusting int4, w8a8 or int8 on real weights.
"""

from __future__ import annotations

import argparse

import torch

from bridge.bench import small_shape_model
from engine.assemble import build_lm, lm_config, lm_state_from_hf
from engine.devices import resolve_dtype
from engine.quantize import logit_agreement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dtypes", default="bfloat16,int8,w8a8,int4", help="comma-separated weight formats to compare with fp32")
    p.add_argument("--no-t5", action="store_true", help="skip the text encoder comparison")
    p.add_argument("--kv-cache", default="bfloat16", help="KV cache dtype to compare alone, with fp32 weights ('' skips)")
    p.add_argument("--model", default=None, help="a local Hugging Face MusicGen folder (default: random small shape)")
    a = p.parse_args()
    if a.model:
        from transformers import MusicgenForConditionalGeneration

        ref = MusicgenForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    else:
        ref = small_shape_model()
    t5 = ref.text_encoder
    cfg = lm_config(ref.config.decoder.to_dict(), cross_attention=True)
    state = lm_state_from_hf({k: v for k, v in ref.state_dict().items() if k.startswith("decoder.")}, cfg)
    del ref
    cpu = torch.device("cpu")
    fp32 = build_lm(cfg, dict(state), cpu, torch.float32)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.card, (2, cfg.n_codebooks, a.steps), generator=g)
    cond = torch.randn(2, 12, cfg.dim, generator=g)
    cond[1] = 0  # the unconditional row
    what = a.model or "small shape, random weights"
    print(f"| weights | KV cache | mean cosine | mean KL (nats) | top-1 agreement |  ({a.steps} steps, {what})")
    print("|---|---|---:|---:|---:|")
    rows = [(name, None) for name in a.dtypes.split(",") if name] + ([("float32", a.kv_cache)] if a.kv_cache else [])
    for name, kv in rows:
        lm = build_lm(cfg, dict(state), cpu, resolve_dtype(name))
        if kv:
            lm.kv_dtype = getattr(torch, kv)
        r = logit_agreement(fp32, lm, tokens, cond)
        print(f"| {name} | {str(lm.cache_dtype).removeprefix('torch.')} | {r['cosine']:.6f} | {r['kl']:.2e} | {r['top1']:.3f} |", flush=True)
        del lm
    if not a.no_t5:
        text_encoder_agreement(t5)


@torch.inference_mode()
def text_encoder_agreement(t5) -> None:
    import copy

    from engine.assemble import narrow_text_encoder

    ids = torch.randint(3, 32128, (4, 24), generator=torch.Generator().manual_seed(1))  # 4 prompts of 24 tokens
    wide = t5(input_ids=ids).last_hidden_state
    narrow = narrow_text_encoder(copy.deepcopy(t5), torch.bfloat16)(input_ids=ids).last_hidden_state.float()
    cos = torch.nn.functional.cosine_similarity(wide, narrow, dim=-1)
    print(f"\nT5 in bf16 against fp32, {ids.numel()} tokens: cosine of the output states mean {cos.mean():.6f}, "
          f"min {cos.min():.6f}")


if __name__ == "__main__":
    main()
