"""One KV cache for a batch of streams: rows of a static cache, handed out to requests and bound to the LM.

Each layer keeps one self-attention buffer [2, R, H, L, d] and, for text models, cross-attention keys and values
[R, H, S, d] with an additive key mask [R, 1, 1, S] (prompts of different lengths are padded to one S; padded keys
get -inf). Where the LM folds cross-attention (`MusicGenLM.can_fold`), also the folded rows [R, H, S, D + 4] of
the requests that fold theirs, which rows those serve, and which attend through the projections (CrossAttention).
A request owns a contiguous run of rows (2 with guidance: [cond; uncond]); rows stay packed from row 0, so a
batched step runs on views of the first rows and a leaving request's hole is filled by moving the last one.

`bind(lm, start, stop)` points the LM's layers at views of rows [start, stop) for one call, so `MusicGenLM.forward`
and the traced step (`engine.steps`) run on them unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from engine.hugepages import huge_zeros
from engine.lm import CROSS_STATE, MusicGenLM, cache_row_width, prompt_rows, to_cache_rows


def kv_bytes_per_row(lm: MusicGenLM, length: int) -> int:
    """Self-attention cache bytes of one row holding `length` positions (keys and values, every layer)."""
    cfg, dt = lm.cfg, lm.cache_dtype
    return 2 * cfg.n_layers * cfg.n_heads * cache_row_width(cfg.head_dim, dt) * length * torch.empty(0, dtype=dt).element_size()


class BatchCache:
    def __init__(self, lm: MusicGenLM):
        self.lm = lm
        self.rows = 0  # rows allocated
        self.length = 0  # positions per row
        self.cross_len = 0  # text keys per row
        self.kvs: list[Tensor] = []
        self.cross_k: list[Tensor] = []
        self.cross_v: list[Tensor] = []
        self.cross_mask: Tensor | None = None
        self.cross_p: list[Tensor] = []  # folded rows (CrossAttention), where the LM folds
        self.cross_u: list[Tensor] = []
        self.folded_rows: Tensor | None = None  # [R] bool: rows the folded rows serve (a folded request's prompt)
        self.std_rows: Tensor | None = None  # [R, 1, 1]: 1 for the rows of requests that do not fold, else 0
        self._folds: list[bool] = []  # per row: its request folds (a Python copy, for bind)
        self._bound: dict[tuple, list[tuple]] = {}  # bind's views by rows

    @property
    def has_cross(self) -> bool:
        return self.lm.cfg.cross_attention

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in self.kvs + self.cross_k + self.cross_v + self.cross_p + self.cross_u)
        return n + (0 if self.cross_mask is None else self.cross_mask.numel() * self.cross_mask.element_size())

    def ensure(self, rows: int, length: int, cross_len: int, used: int) -> None:
        """Grow to at least `rows` rows of `length` positions and `cross_len` text keys, keeping rows [0, used)."""
        if rows <= self.rows and length <= self.length and cross_len <= self.cross_len:
            return
        lm, cfg = self.lm, self.lm.cfg
        R, L, S = max(rows, self.rows), max(length, self.length), max(cross_len, self.cross_len)
        dev, dt = lm.device, lm.act_dtype
        shape = (2, R, cfg.n_heads, L, cache_row_width(cfg.head_dim, lm.cache_dtype))
        # On CPU on 2 MB pages: a step reads the whole filled cache (engine/hugepages.py)
        kvs = [huge_zeros(shape, lm.cache_dtype, dev) for _ in range(cfg.n_layers)]
        for new, old in zip(kvs, self.kvs):
            new[:, :used, :, : self.length] = old[:, :used]
        self.kvs = kvs
        if self.has_cross:
            # Text keys in the dtype `MusicGenLM.set_condition` stores them in for one stream.
            width = cache_row_width(cfg.head_dim, lm.cross_dtype)
            ks = [torch.zeros(R, cfg.n_heads, S, width, dtype=lm.cross_dtype, device=dev) for _ in range(cfg.n_layers)]
            vs = [torch.zeros_like(k) for k in ks]
            mask = torch.full((R, 1, 1, S), float("-inf"), dtype=dt, device=dev)
            for new, old in zip(ks + vs, self.cross_k + self.cross_v):
                new[:used, :, : self.cross_len] = old[:used]
            if self.cross_mask is not None:
                mask[:used, :, :, : self.cross_len] = self.cross_mask[:used]
            self.cross_k, self.cross_v, self.cross_mask = ks, vs, mask
            if lm.can_fold():
                width = cache_row_width(cfg.dim, torch.int8)
                ps = [torch.zeros(R, cfg.n_heads, S, width, dtype=torch.int8, device=dev) for _ in range(cfg.n_layers)]
                us = [torch.zeros_like(p) for p in ps]
                for new, old in zip(ps + us, self.cross_p + self.cross_u):
                    new[:used, :, : self.cross_len] = old[:used]
                folded, std = torch.zeros(R, dtype=torch.bool, device=dev), torch.zeros(R, 1, 1, dtype=dt, device=dev)
                if self.folded_rows is not None:
                    folded[:used], std[:used] = self.folded_rows[:used], self.std_rows[:used]
                self.cross_p, self.cross_u, self.folded_rows, self.std_rows = ps, us, folded, std
                self._folds = self._folds[:used] + [False] * (R - used)
        self.rows, self.length, self.cross_len = R, L, S
        self._bound = {}  # views of the old buffers
        # The LM's position table and causal mask (prefill) must cover every position a row can reach.
        if lm.max_len < L:
            lm.setup_caches(1, L)

    def release(self) -> None:
        """Free the buffers (the engine is idle)."""
        self.__init__(self.lm)

    @torch.inference_mode()
    def set_condition(self, row: int, cross: Tensor, fold: bool | None = None) -> None:
        """Cross-attention keys and values for rows [row, row + B) from one request's projected text states
        [B, S, D], and its folded rows where the LM folds that request's (`MusicGenLM.folds_cross`; `fold` says
        instead, where the LM can fold at all)."""
        B, S = cross.shape[0], cross.shape[1]
        cross = cross.to(self.lm.act_dtype)
        live = prompt_rows(cross)
        folds = bool(self.cross_p) and (self.lm.folds_cross(int(live.sum()), S) if fold is None else fold)
        for i, layer in enumerate(self.lm.layers):
            k, v = layer.cross.keys_values(cross)
            _write_rows(self.cross_k[i], row, to_cache_rows(k, self.cross_k[i].dtype))
            _write_rows(self.cross_v[i], row, to_cache_rows(v, self.cross_v[i].dtype))
            if folds:
                p, u = layer.cross.folded(k, v)
                _write_rows(self.cross_p[i], row, p)
                _write_rows(self.cross_u[i], row, u)
            elif self.cross_p:
                self.cross_p[i][row : row + B] = 0
                self.cross_u[i][row : row + B] = 0
        self.cross_mask[row : row + B] = float("-inf")
        self.cross_mask[row : row + B, :, :, :S] = 0
        if self.cross_p:
            self.folded_rows[row : row + B] = live & folds
            self.std_rows[row : row + B] = 0.0 if folds else 1.0
            self._folds[row : row + B] = [folds] * B

    def move(self, src: int, dst: int, n: int, length: int) -> None:
        """Copy rows [src, src + n), their first `length` positions, to [dst, dst + n) (filling the hole left by a
        request that went). Cloned first: the two ranges may overlap."""
        for kv in self.kvs:
            kv[:, dst : dst + n, :, :length] = kv[:, src : src + n, :, :length].clone()
        for t in self.cross_k + self.cross_v + self.cross_p + self.cross_u:
            t[dst : dst + n] = t[src : src + n].clone()
        for t in (self.cross_mask, self.folded_rows, self.std_rows):
            if t is not None:
                t[dst : dst + n] = t[src : src + n].clone()
        self._folds[dst : dst + n] = self._folds[src : src + n]

    def _views(self, start: int, stop: int, cross_len: int | None) -> list[tuple]:
        """Per layer: (cache rows, text keys, text values, key mask) for `bind`, made once per range and kept
        (a round binds the same rows each time; slicing 24 layers' buffers anew cost more than the bookkeeping)."""
        folds = tuple(self._folds[start:stop])
        key = (start, stop, cross_len, folds)
        views = self._bound.get(key)
        if views is None:
            S = self.cross_len if cross_len is None else cross_len
            # Folded rows where any request folds; the rows that do not fold attend through the projections.
            fold = any(folds)
            views = [(self.kvs[i][:, start:stop],
                      *((self.cross_k[i][start:stop, :, :S], self.cross_v[i][start:stop, :, :S],
                         self.cross_mask[start:stop] if cross_len is None else None,
                         *((self.cross_p[i][start:stop, :, :S], self.cross_u[i][start:stop, :, :S],
                            self.folded_rows[start:stop], None if all(folds) else self.std_rows[start:stop])
                           if fold else (None, None, None, None)))
                        if self.has_cross else ()))
                     for i in range(len(self.kvs))]
            self._bound[key] = views
        return views

    @contextlib.contextmanager
    def bind(self, start: int, stop: int, cross_len: int | None = None) -> Iterator[None]:
        """Point the LM's layers at rows [start, stop) for one call. `cross_len`: attend to that many text keys
        without a mask (one request's own prompt, as it would alone); None: all of them under the key mask."""
        targets = self.lm.attention_slots()
        saved = [(kvc._buffers["kv"], *((getattr(c, n) for n in CROSS_STATE) if c is not None else ())) for kvc, c in targets]
        try:
            _point(targets, self._views(start, stop, cross_len))
            yield
        finally:
            _point(targets, saved)


def _write_rows(buf: Tensor, row: int, x: Tensor) -> None:
    """Text keys' rows x [B, H, S, w] into buf's rows [row, row + B), zeros after its S keys."""
    B, S = x.shape[0], x.shape[2]
    buf[row : row + B, :, :S] = x
    buf[row : row + B, :, S:] = 0


def _point(targets: list[tuple], views: list[tuple]) -> None:
    """Each layer's (KV cache, cross-attention) set to `views` (from `BatchCache._views`). Straight into the
    modules' dicts: what `nn.Module.__setattr__` ends up doing for an existing buffer and a plain attribute, without
    its checks, which were most of a bind's cost (benchmarks/RESULTS.md)."""
    for (kv_cache, cross), (kv, *text) in zip(targets, views):
        kv_cache._buffers["kv"] = kv
        if text:
            cross.__dict__.update(zip(CROSS_STATE, text))
