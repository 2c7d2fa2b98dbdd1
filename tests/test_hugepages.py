"""The decode step's big buffers (packed weights, KV cache) on 2 MB pages (engine/hugepages.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from engine import hugepages, native
from engine.hugepages import HUGE, huge_empty, huge_zeros

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_MODE = (re.search(r"\[(\w+)\]", THP.read_text()) or [None, None])[1] if THP.exists() else None


def _anon_huge_kb() -> int:
    text = Path("/proc/self/smaps_rollup").read_text()
    return int(re.search(r"AnonHugePages:\s+(\d+) kB", text).group(1))


def test_big_buffers_start_on_a_huge_page_and_small_ones_are_plain():
    big = huge_zeros((3, 5 * HUGE // 4 // 3 + 7), torch.float32)
    assert big.shape == (3, 5 * HUGE // 4 // 3 + 7) and big.dtype == torch.float32 and bool((big == 0).all())
    if hugepages._madvise is not None:
        assert big.data_ptr() % HUGE == 0
    small = huge_empty((100,), torch.bfloat16)
    assert small.shape == (100,) and small.dtype == torch.bfloat16


@pytest.mark.skipif(not sys.platform.startswith("linux") or THP_MODE not in ("madvise", "always"),
                    reason="transparent huge pages are off (or this is not Linux): there is nothing to ask for")
def test_the_kernel_backs_them_with_huge_pages(monkeypatch):
    before = _anon_huge_kb()
    kept = huge_zeros((64 * HUGE // 2,), torch.bfloat16)  # 64 MB
    gained = _anon_huge_kb() - before
    assert gained >= 32 * 1024, f"only {gained} kB of the 64 MB buffer is on huge pages"
    if THP_MODE == "madvise":  # Negative control: not asked, the same buffer stays on 4 KB pages
        monkeypatch.setattr(hugepages, "_madvise", None)
        before = _anon_huge_kb()
        plain = huge_zeros((64 * HUGE // 2,), torch.bfloat16)
        assert _anon_huge_kb() - before < 4 * 1024
        del plain
    del kept


@pytest.mark.parametrize("weights", [
    pytest.param("w8a8", marks=pytest.mark.skipif(not native.supports("w8a8_linear"), reason="the native w8a8 kernel needs AVX-512 VNNI")),
    pytest.param("int8", marks=pytest.mark.skipif(not native.supports("w8a16_linear"), reason="the native w8a16 kernel needs AVX2"))])
def test_an_integer_models_weights_and_heads_share_one_buffer_and_its_cache_is_on_huge_pages(weights):
    from engine.lm import LMConfig, MusicGenLM
    from engine.quantize import NativeLinear, NativeW8A16Linear, prepare_for_cpu

    lm = MusicGenLM(LMConfig(dim=256, n_heads=4, n_layers=2, ffn_dim=1024, n_codebooks=4, card=64)).eval()
    prepare_for_cpu(lm, weights)
    packed = [m.packed for m in lm.modules() if isinstance(m, NativeLinear)]  # in the modules' order: heads last
    assert len(packed) == 7 * 2 + 1 and packed[-1] is lm.heads.packed
    assert isinstance(lm.heads, NativeW8A16Linear) and len({p.untyped_storage().data_ptr() for p in packed}) == 1
    # the views tile the buffer in the order the modules come, without gaps
    offsets = [p.storage_offset() for p in packed]
    assert offsets == sorted(offsets) and all(b - a == p.numel() for a, b, p in zip(offsets, offsets[1:], packed))
    lm.kv_dtype = torch.bfloat16
    lm.setup_caches(2, 1500)
    kv = lm.layers[0].attn.kv_cache.kv
    assert kv.numel() * kv.element_size() >= HUGE and (hugepages._madvise is None or kv.data_ptr() % HUGE == 0)
