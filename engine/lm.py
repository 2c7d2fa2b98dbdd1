"""The MusicGen language model: a pre-norm transformer decoder over summed codebook embeddings.

Written for reading and for speed, after gpt-fast's model.py: one file, a static KV cache allocated once per
generation and indexed by position, cross-attention keys/values computed once per generation, and nothing but
tensor ops on the per-step path. Parameter names are our own; `engine/checkpoint.py` maps the published
checkpoints onto them. `engine/quantize.py` swaps the `nn.Linear`s for prepacked or int8 ones (CPU speed).

Two ways to call a step:
- sliced (`kv_len` given): the new positions are the last `kv_len` cache entries' tail; attention reads only
  cache[:kv_len]. Least memory traffic: the default everywhere.
- static (`kv_len=None`): attention reads the whole cache under a causal mask, so every step has the same
  shapes. That is what CUDA graphs need (`engine.steps.GraphedStep`); on CPU it gives the same numbers, more slowly.

Generation's one-column steps run as a graph (`engine/steps.py`): a CUDA graph over the static step on a GPU, a
TorchScript trace of the sliced step on a CPU. Both compute what `forward` computes; they only remove per-op
launch and dispatch costs.

Shapes: B batch (2 with guidance: [cond; uncond]), K codebooks, T new positions, S conditioning length,
D model width, H heads, L cache length.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.hugepages import huge_zeros

log = logging.getLogger(__name__)


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


def same_dtype(y: Tensor, x: Tensor) -> Tensor:
    """y in x's dtype: linears may answer in a narrower one (engine/quantize.py). No op where it already is, so a
    traced step has no node for it."""
    return y if y.dtype == x.dtype else y.to(x.dtype)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over [B, H, T|L, d]; `mask` is boolean (True = attend), additive
    (float, 0 or -inf, broadcastable to [B, H, T, L]: per-row lengths in a batch of streams) or None.

    Keys and values narrower than the queries (a bf16 KV cache under fp32 activations, `MusicGenLM.kv_dtype`)
    go through SDPA in their own dtype: its CPU kernel reads bf16 keys and values at the memory's rate and
    accumulates in fp32, where a bf16 bmm copies the strided cache view before multiplying. The result comes
    back in the queries' dtype. One query goes to the native decode kernel where it runs (`_native_decode`); the
    packed int8 cache only there, or unpacked to the queries' dtype (a prefill)."""
    if _native_decode(q, k, mask):  # one query against a bf16 or packed int8 cache: the project's kernel
        mask = None if mask is None else mask.float()
        return torch.ops.musicgen_bridge.decode_attention(q, k, v, mask, 1.0 / math.sqrt(q.shape[-1]))
    if k.dtype == torch.int8:  # the packed int8 cache (KVCache) in a prefill: attend in q's dtype
        k, v = unpack_int8_rows(k).to(q.dtype), unpack_int8_rows(v).to(q.dtype)
    if k.dtype != q.dtype:
        if mask is not None and mask.is_floating_point():
            mask = mask.to(k.dtype)  # 0 and -inf are exact in bf16
        return F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask).to(q.dtype)
    if q.shape[-2] == 1 and q.device.type == "cpu" and (mask is None or mask.is_floating_point()):
        # One query: two batched matmuls over [B*H] views of the cache (no copies), the 1/sqrt(d) scale folded
        # into the first one's alpha. SDPA's CPU kernel costs more in setup than this math at T=1 in fp32.
        B, H, _, d = q.shape
        L = k.shape[-2]
        # An additive mask rides in baddbmm's added term; masked keys get exactly zero weight, and a row's result
        # is bit-identical to attending to its own keys alone.
        bias, beta = (_NO_BIAS.to(q.dtype), 0) if mask is None else (mask.to(q.dtype).expand(B, H, 1, L).reshape(B * H, 1, L), 1)
        scores = torch.baddbmm(bias, q.reshape(B * H, 1, d), k.reshape(B * H, L, d).transpose(1, 2), beta=beta, alpha=1.0 / math.sqrt(d))
        return torch.bmm(torch.softmax(scores, dim=-1), v.reshape(B * H, L, d)).view(B, H, 1, d)
    with _sdpa_backends(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _sdpa_backends(q: Tensor):
    """CUDA SDPA skips cuDNN's kernel unless `static_shapes` says otherwise: cuDNN builds a plan for each new key
    length, and an eager step's length grows by one every step (the batching engine's steps, a prefill): planning
    made those steps several times slower (benchmarks/RESULTS.md)."""
    if q.device.type != "cuda" or _STATIC_SHAPES.get():
        return contextlib.nullcontext()
    return sdpa_kernel(_EAGER_CUDA_BACKENDS)


_EAGER_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_STATIC_SHAPES = contextvars.ContextVar("static_shapes", default=False)


@contextlib.contextmanager
def static_shapes():
    """On this thread, attention runs at one shape again and again (a CUDA graph's warm-up and capture): cuDNN's
    SDPA may take it, planning once in the warm-up for every replay."""
    token = _STATIC_SHAPES.set(True)
    try:
        yield
    finally:
        _STATIC_SHAPES.reset(token)
_NO_BIAS = torch.zeros(1, 1, 1)  # baddbmm's added term, ignored with beta=0


def _native_decode(q: Tensor, k: Tensor, mask: Tensor | None) -> bool:
    """`decode_attention` (engine/native) takes this call: one fp32 query per row on CPU, a bf16 cache (a CPU with
    AVX512_BF16: the same numbers as SDPA's bf16 path, without SDPA's casts around it) or the packed int8 one
    (AVX2), heads of a multiple of 32 up to 256, an additive mask or none."""
    if not (q.shape[-2] == 1 and q.device.type == "cpu" and q.dtype == torch.float32
            and k.dtype in (torch.bfloat16, torch.int8) and q.shape[-1] % 32 == 0 and q.shape[-1] <= 256
            and k.stride(-1) == 1 and (mask is None or mask.is_floating_point())):
        return False
    from engine import native

    return native.supports("decode_attention" if k.dtype == torch.bfloat16 else "decode_attention_int8")


def _native_write(cache: Tensor, kv: Tensor) -> bool:
    """`kv_write` (engine/native) takes this write: fp32 keys and values into a narrow CPU cache."""
    if not (cache.device.type == "cpu" and kv.dtype == torch.float32 and cache.dtype in (torch.bfloat16, torch.int8)
            and cache.stride(-1) == 1):
        return False
    from engine import native

    return native.load()


FOLDED_MAX_DIM = 2048  # the widest row the native folded cross-attention takes (engine/native/decode_attention.cpp)
INT8_ROW_EXTRA = 4  # a packed int8 cache row: head_dim int8 values, then their fp32 scale


def cache_row_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements per position and head in a KV cache of `dtype`: the packed int8 rows carry their scale."""
    return head_dim + INT8_ROW_EXTRA if dtype == torch.int8 else head_dim


def pack_int8_rows(x: Tensor) -> Tensor:
    """[..., d] -> [..., d + 4] int8: each row round(127 x / max|x|), then its scale max|x| / 127 as fp32 bytes."""
    from engine import native

    if not native.load():
        raise RuntimeError(f"an int8 KV cache needs the native kernels: {native.why_not()}")
    return torch.ops.musicgen_bridge.kv_pack_int8(x.float())


def to_cache_rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Keys or values [..., d] as a cache of `dtype` stores them: packed int8 rows (`pack_int8_rows`), else cast."""
    return pack_int8_rows(x) if dtype == torch.int8 else x.to(dtype)


def unpack_int8_rows(p: Tensor) -> Tensor:
    """`pack_int8_rows` undone: [..., d + 4] int8 -> [..., d] fp32."""
    return torch.ops.musicgen_bridge.kv_unpack_int8(p)


class KVCache(nn.Module):
    """Keys and values for every position of one generation, one buffer [2 (k, v), B, H, L, d] written in place
    at `input_pos` (one copy per step for both). An int8 cache packs each position's head as d int8 values and
    their fp32 scale ([..., d + 4], `pack_int8_rows`): ~half of bf16's bytes, read by the native decode kernel."""

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (2, batch, n_heads, max_len, cache_row_width(head_dim, dtype))
        # On CPU on 2 MB pages: a step reads the whole filled cache (engine/hugepages.py)
        self.register_buffer("kv", huge_zeros(shape, dtype, device), persistent=False)

    @property
    def k(self) -> Tensor:
        return self.kv[0]

    @property
    def v(self) -> Tensor:
        return self.kv[1]

    def update(self, input_pos: Tensor, kv: Tensor) -> Tensor:
        """Write kv [2, B, H, T, d] at positions `input_pos`: [T] for every row, or [B, T] one per row (a batch of
        streams), rounded to the cache's dtype; returns the whole cache."""
        if _native_write(self.kv, kv):  # rounding and writing in one op
            return torch.ops.musicgen_bridge.kv_write(self.kv, input_pos, kv)
        kv = to_cache_rows(kv, self.kv.dtype)
        if input_pos.dim() == 1:
            return self.kv.index_copy_(3, input_pos, kv)
        # Per-row positions by index_put_: it writes only the B*T columns. scatter_ along the position axis copies
        # the whole cache (twice, when it is a view of a larger batch cache): most of a batched step's time.
        rows = torch.arange(kv.shape[1], device=input_pos.device)[:, None]
        self.kv[:, rows, :, input_pos] = kv.permute(1, 3, 0, 2, 4)  # indexed shape: [B, T, 2, H, d]
        return self.kv


class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)  # rows q | k | v, as Meta stores them
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, input_pos: Tensor, mask: Tensor | None, kv_len: int | None) -> Tensor:
        # Shapes by unflatten/flatten and narrow rather than sizes read from x: a traced step then has no size,
        # list or full-slice nodes for them (a few hundred interpreter steps fewer per decode step).
        qkv = same_dtype(self.wqkv(x), x).unflatten(-1, (3, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        kv = self.kv_cache.update(input_pos, qkv[1:])
        if kv_len is not None:  # only the filled part of the cache takes part
            kv = kv.narrow(3, 0, kv_len)
        y = attend(qkv[0], kv[0], kv[1], mask)
        return self.wo(y.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Attention to the projected text states. No key mask for one stream, as Meta's code: the null condition is
    all zeros, so its keys and values are zero and it contributes nothing (the same as Hugging Face's masked
    version). A batch of streams pads prompts of different lengths to one S: zero keys are not neutral under
    softmax (they score 0, not -inf), so the batch sets `mask`, an additive key mask [B, 1, 1, S].

    Folded (`folded`; one query per row, on CPU): the query and output projections move into the text, p[h, s] =
    wq_h^T k[h, s] / sqrt(d) and u[h, s] = wo_h v[h, s], so a step's cross-attention is sum_h softmax(x p_h) u_h.
    A step then reads S x H x 2 rows of the model's width per row with a prompt, where `wq` and `wo` are two
    D x D matrices: for a prompt of tens of tokens, a fraction of the bytes (`MusicGenLM.folds_cross` decides,
    per request, so a request computes alike alone or in a batch). Only `live` rows are folded: the null
    condition reads nothing. In a batch, the rows of requests that are not folded have `std_rows` 1 (else 0) and
    attend as above."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wkv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.mask: Tensor | None = None
        # The folded form (None: not folded): packed int8 rows [B, H, S, D + 4], the rows it serves [B] bool, and
        # in a batch with requests that are not folded, the rows that attend as above [B, 1, 1] (else None).
        self.p: Tensor | None = None
        self.u: Tensor | None = None
        self.live: Tensor | None = None
        self.std_rows: Tensor | None = None

    def keys_values(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Projected text states [B, S, D] -> keys, values [B, H, S, d] (views of one projection)."""
        B, S, D = cond.shape
        k, v = self.wkv(cond).to(cond.dtype).view(B, S, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def set_condition(self, cond: Tensor, dtype: torch.dtype | None = None, live: Tensor | None = None) -> None:
        """Keys and values from projected text states [B, S, D], stored in `dtype` (default: the states'; int8: packed
        rows, `pack_int8_rows`); folded too (`folded`) for the rows `live` ([B] bool) when it is given."""
        k, v = self.keys_values(cond)
        self.p, self.u, self.live = (*self.folded(k, v), live) if live is not None else (None, None, None)
        self.std_rows = None
        if dtype is not None:
            k, v = to_cache_rows(k, dtype), to_cache_rows(v, dtype)
        if self.k is not None and self.k.shape == k.shape and self.k.dtype == k.dtype and self.k.device == k.device:
            # Same shape: write in place, so a captured CUDA graph that reads these buffers stays valid.
            self.k.copy_(k)
            self.v.copy_(v)
        else:
            self.k, self.v = k.contiguous(), v.contiguous()

    def folded(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, S, d] -> the folded rows p, u [B, H, S, D + 4] (packed int8, `pack_int8_rows`)."""
        H, d = self.n_heads, self.head_dim
        wq, wo = linear_weight(self.wq), linear_weight(self.wo)  # [D, D] fp32: out x in
        D = wq.shape[1]
        p = torch.einsum("bhsd,hdD->bhsD", k.float(), wq.view(H, d, D)) * (1.0 / math.sqrt(d))
        u = torch.einsum("bhsd,Dhd->bhsD", v.float(), wo.view(D, H, d))
        return pack_int8_rows(p), pack_int8_rows(u)

    def forward(self, x: Tensor) -> Tensor:
        if self.p is None or x.shape[1] != 1:
            return self.projected(x)
        norm = getattr(self.wq, "norm_weight", None)  # a LayerNorm the native linear took in (fuse_into_native_linears)
        normed = x if norm is None else F.layer_norm(x, (x.shape[-1],), norm, self.wq.norm_bias, self.wq.eps)
        y = torch.ops.musicgen_bridge.cross_attention_folded(normed, self.p, self.u, self.mask, self.live)
        # Rows not folded: exactly their own result (times 1, plus the op's exact zero); folded rows: plus 0.
        return y if self.std_rows is None else y + self.projected(x) * self.std_rows

    def projected(self, x: Tensor) -> Tensor:
        """The cross-attention through the projections, as the model defines it."""
        q = same_dtype(self.wq(x), x).unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        y = attend(q, self.k, self.v, self.mask)
        return self.wo(y.transpose(1, 2).flatten(2))


CROSS_STATE = ("k", "v", "mask", "p", "u", "live", "std_rows")  # what a CrossAttention attends with, per call


def prompt_rows(cond: Tensor) -> Tensor:
    """The rows of projected text states [B, S, D] that carry a prompt ([B] bool): guidance's null condition is
    all zeros."""
    return cond.flatten(1).ne(0).any(1)


def linear_weight(linear: nn.Module) -> Tensor:
    """The weight a linear multiplies by, [out, in] fp32: a quantized one's (engine/quantize.py) dequantized."""
    if hasattr(linear, "dequantized"):
        return linear.dequantized()
    w = linear.weight
    return (w.to_dense() if w.is_mkldnn else w).float()


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        if cfg.cross_attention:
            self.norm_cross = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
            self.cross = CrossAttention(cfg)
        else:
            self.cross = None
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.act = nn.GELU()  # a module, so a kernel can take it over (engine/quantize.fuse_into_native_linears)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, input_pos: Tensor, mask: Tensor | None, kv_len: int | None) -> Tensor:
        # The residual stream keeps its dtype: narrower linear outputs are promoted by the adds.
        x = x + self.attn(self.norm1(x), input_pos, mask, kv_len)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class MusicGenLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_codebooks))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self._slots: list[tuple[KVCache, CrossAttention | None]] = []  # `attention_slots`
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        # One bias-free head per codebook, stacked [K * card, D]: all K heads are one matmul.
        self.heads = nn.Linear(cfg.dim, cfg.n_codebooks * cfg.card, bias=False)
        self.max_len = 0
        self.weight_dtype: torch.dtype | None = None  # set when the linear weights differ from the activations
        # The self-attention KV cache's dtype when it differs from the activations: int8 or bf16 for narrow weights
        # on CPUs where the native decode kernel reads it (engine/assemble.py sets it): fewer bytes per position.
        self.kv_dtype: torch.dtype | None = None
        self.compiled_steps: dict = {}  # engine.steps keeps its traced / captured decode steps here

    @property
    def dtype(self) -> torch.dtype:
        """The precision the LM was loaded in (torch.int8 for int8 weights); see `act_dtype` for the compute."""
        return self.weight_dtype or self.act_dtype

    @property
    def act_dtype(self) -> torch.dtype:
        """The activations' dtype (and the cross-attention keys'). On CPU it stays fp32 while the linear weights
        narrow."""
        return self.out_norm.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The self-attention KV cache's dtype: `kv_dtype` when set, else the activations'."""
        return self.kv_dtype or self.act_dtype

    @property
    def cross_dtype(self) -> torch.dtype:
        """The text keys' and values' dtype: a narrow cache makes them bf16 where the bf16 decode kernel runs, packed
        int8 rows (as the int8 cache's) where only the int8 one does (CPUs with AVX2 alone), so one query's
        cross-attention is one native op (`attend`); else the activations'."""
        from engine import native

        if self.kv_dtype == torch.bfloat16 or (self.kv_dtype == torch.int8 and native.supports("decode_attention")):
            return torch.bfloat16
        if self.kv_dtype == torch.int8 and native.supports("decode_attention_int8"):
            return torch.int8
        return self.act_dtype

    @property
    def device(self) -> torch.device:
        return self.out_norm.weight.device

    def attention_slots(self) -> list[tuple[KVCache, CrossAttention | None]]:
        """Each layer's KV cache module and cross-attention (None without text), listed once per `setup_caches`:
        what a batch binds and the traced step reads every step, where looking them up through nn.Module's
        attribute hooks cost ~0.1 ms a step."""
        if not self._slots or self._slots[0][0] is not self.layers[0].attn.kv_cache:  # new caches, set by hand
            self._slots = [(layer.attn.kv_cache, layer.cross) for layer in self.layers]
        return self._slots

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Allocate the KV cache for one generation (positions 0 .. max_len-1), reused across its windows."""
        kv = self.layers[0].attn.kv_cache
        if self.max_len == max_len and kv.k.shape[0] == batch and kv.kv.dtype == self.cache_dtype:
            return
        self._slots = []  # would keep the old caches alive
        for layer in self.layers:
            layer.attn.kv_cache = KVCache(batch, self.cfg.n_heads, max_len, self.cfg.head_dim, self.cache_dtype, self.device)
        self.register_buffer("causal", torch.ones(max_len, max_len, dtype=torch.bool, device=self.device).tril(), persistent=False)
        self.register_buffer("pos_table", sinusoids(torch.arange(max_len, device=self.device), self.cfg.dim), persistent=False)
        self.max_len = max_len

    @torch.inference_mode()
    def set_condition(self, cond: Tensor) -> None:
        """Cross-attention keys/values for the whole generation, from projected text states [B, S, D], folded
        (CrossAttention) where `folds_cross` says so. A row of zeros is guidance's null condition."""
        cond = cond.to(self.act_dtype)
        live = prompt_rows(cond)
        fold = self.folds_cross(int(live.sum()), cond.shape[1])
        for layer in self.layers:
            layer.cross.set_condition(cond, self.cross_dtype, live if fold else None)

    def can_fold(self) -> bool:
        """The folded cross-attention runs here: CPU, fp32 activations, the narrow weights' int8 KV cache, the
        native kernel, a width it takes."""
        if not (self.cfg.cross_attention and self.kv_dtype == torch.int8 and self.act_dtype == torch.float32
                and self.device.type == "cpu" and self.cfg.dim % 32 == 0 and self.cfg.dim <= FOLDED_MAX_DIM):
            return False
        from engine import native

        return native.supports("cross_attention_folded")

    def folds_cross(self, live_rows: int, keys: int) -> bool:
        """Whether a request with `live_rows` rows with a prompt of `keys` text keys folds its cross-attention:
        where it can, and when its folded rows are fewer bytes than the query and output projections they replace.
        A property of the request alone, so its codes do not depend on the company it keeps in a batch."""
        if not self.can_fold():
            return False
        from engine.quantize import module_bytes

        cross = self.layers[0].cross
        folded = live_rows * keys * self.cfg.n_heads * 2 * (self.cfg.dim + INT8_ROW_EXTRA)
        return folded < module_bytes(cross.wq) + module_bytes(cross.wo)

    def embed(self, tokens: Tensor) -> Tensor:
        """[B, K, T] codes (special = card) -> [B, T, D]: the sum of the codebooks' embeddings."""
        h = self.embeddings[0](tokens[:, 0])
        for k in range(1, self.cfg.n_codebooks):
            h = h + self.embeddings[k](tokens[:, k])
        return h

    def forward(self, h: Tensor, input_pos: Tensor, kv_len: int | None, last_only: bool = True) -> Tensor:
        """Run embedded inputs [B, T, D] at cache positions `input_pos` [T], or one column per row at `input_pos`
        [B, 1] (a batch of streams, each row at its own position, sliced only).

        Sliced (`kv_len` given): `input_pos` must be the last T positions before `kv_len` (what generation does),
        so a single new position attends to everything before it and needs no mask. Static (`kv_len=None`):
        attends to the whole cache under the causal mask rows of `input_pos`.
        Returns logits [B, K, T', card] in float32, T' = 1 (the last position) when `last_only`.
        """
        h = self.positioned(h, input_pos)
        T = h.shape[1]
        if input_pos.dim() == 2:
            mask = self.row_mask(input_pos, kv_len)
        elif kv_len is None:
            mask = self.causal[input_pos][None, None]
        else:
            mask = None if T == 1 else self.causal[input_pos, :kv_len][None, None]
        return self.layers_and_heads(h, input_pos, mask, kv_len, last_only)

    def row_mask(self, input_pos: Tensor, kv_len: int) -> Tensor:
        """Additive mask [B, 1, 1, kv_len] for one column per row at `input_pos` [B, 1]: row b attends to cache
        positions 0 .. input_pos[b] (its own length), whatever the longest row's `kv_len`."""
        keys = torch.arange(kv_len, device=input_pos.device)
        # In the activations' dtype: SDPA on CUDA wants the mask in the queries' (0 and -inf are exact in any).
        mask = torch.zeros(input_pos.shape[0], 1, 1, kv_len, dtype=self.act_dtype, device=input_pos.device)
        return mask.masked_fill_(keys > input_pos.view(-1, 1, 1, 1), float("-inf"))

    def positioned(self, h: Tensor, input_pos: Tensor) -> Tensor:
        """Embedded inputs [B, T, D] plus the position table rows of `input_pos` ([T] or [B, T]), in `act_dtype`."""
        return (h.float() + self.pos_table[input_pos]).to(self.act_dtype)

    def layers_and_heads(self, h: Tensor, input_pos: Tensor, mask: Tensor | None, kv_len: int | None, last_only: bool = True) -> Tensor:
        """The decoder proper, from positioned inputs [B, T, D] in `act_dtype` to logits (see `forward`)."""
        B = h.shape[0]
        for layer in self.layers:
            h = layer(h, input_pos, mask, kv_len)
        if last_only:
            h = h[:, -1:]
        logits = self.heads(self.out_norm(h))  # [B, T', K * card]
        return logits.view(B, h.shape[1], self.cfg.n_codebooks, self.cfg.card).transpose(1, 2).float()
