"""The MusicGen language model: a pre-norm transformer decoder over summed codebook embeddings.

Written for reading and for speed, after gpt-fast's model.py: one file, a static KV cache allocated once per
generation and indexed by position, cross-attention keys/values computed once per generation, and
`scaled_dot_product_attention` everywhere. Parameter names are our own; `engine/checkpoint.py` maps the
published checkpoints onto them.

Shapes: B batch (2 with guidance: [cond; uncond]), K codebooks, T new positions, S conditioning length,
D model width, H heads, L cache length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LMConfig:
    dim: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    ffn_dim: int = 4096
    n_codebooks: int = 4
    card: int = 2048  # codebook size; the special token is `card`, so embeddings have card + 1 rows
    cross_attention: bool = True  # text models attend to T5 states; melody models prepend them instead
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def special_token(self) -> int:
        return self.card


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """MusicGen's position table: cat(cos, sin) with freq_i = exp(-i ln(10000) / (dim/2 - 1)); fp32."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class KVCache(nn.Module):
    """Keys and values for every position of one generation, written in place at `input_pos`."""

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)  # rows q | k | v, as Meta stores them
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, input_pos: Tensor, mask: Tensor, kv_len: int) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = self.kv_cache.update(input_pos, k, v)
        # Only the filled part of the cache takes part; `mask` hides the future inside it.
        y = F.scaled_dot_product_attention(q, k[:, :, :kv_len], v[:, :, :kv_len], attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Attention to the projected text states. No key mask, as Meta's code: the null condition is all zeros,
    so its keys and values are zero and it contributes nothing (the same as Hugging Face's masked version)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wkv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def set_condition(self, cond: Tensor) -> None:
        B, S, D = cond.shape
        self.k, self.v = self.wkv(cond).view(B, S, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, self.k, self.v)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        if cfg.cross_attention:
            self.norm_cross = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
            self.cross = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, input_pos: Tensor, mask: Tensor, kv_len: int) -> Tensor:
        x = x + self.attn(self.norm1(x), input_pos, mask, kv_len)
        if hasattr(self, "cross"):
            x = x + self.cross(self.norm_cross(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MusicGenLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_codebooks))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        # One bias-free head per codebook, stacked so that all K heads are one batched matmul.
        self.heads = nn.Parameter(torch.empty(cfg.n_codebooks, cfg.card, cfg.dim))
        self.max_len = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.out_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.out_norm.weight.device

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Allocate the KV cache for one generation (positions 0 .. max_len-1), reused across its windows."""
        if self.max_len == max_len and self.layers[0].attn.kv_cache.k.shape[0] == batch:
            return
        for layer in self.layers:
            layer.attn.kv_cache = KVCache(batch, self.cfg.n_heads, max_len, self.cfg.head_dim, self.dtype, self.device)
        self.register_buffer("causal", torch.ones(max_len, max_len, dtype=torch.bool, device=self.device).tril(), persistent=False)
        self.register_buffer("pos_table", sinusoids(torch.arange(max_len, device=self.device), self.cfg.dim), persistent=False)
        self.max_len = max_len

    @torch.inference_mode()
    def set_condition(self, cond: Tensor) -> None:
        """Cross-attention keys/values for the whole generation, from projected text states [B, S, D]."""
        for layer in self.layers:
            layer.cross.set_condition(cond.to(self.dtype))

    def embed(self, tokens: Tensor) -> Tensor:
        """[B, K, T] codes (special = card) -> [B, T, D]: the sum of the codebooks' embeddings."""
        h = self.embeddings[0](tokens[:, 0])
        for k in range(1, self.cfg.n_codebooks):
            h = h + self.embeddings[k](tokens[:, k])
        return h

    def forward(self, h: Tensor, input_pos: Tensor, kv_len: int, last_only: bool = True) -> Tensor:
        """Run embedded inputs [B, T, D] at cache positions `input_pos` [T]; attends to cache[:kv_len].

        Returns logits [B, K, T', card] in float32, T' = 1 (the last position) when `last_only`.
        """
        h = (h.float() + self.pos_table[input_pos]).to(self.dtype)
        mask = self.causal[input_pos, :kv_len][None, None]
        for layer in self.layers:
            h = layer(h, input_pos, mask, kv_len)
        if last_only:
            h = h[:, -1:]
        h = self.out_norm(h)
        return torch.einsum("btd,kvd->bktv", h, self.heads).float()
