"""Large CPU buffers on 2 MB pages: the decode step's weights and KV cache.

A step streams ~400 MB of weights and cache. On 4 KB pages that is ~100,000 TLB misses a step, and in a virtual
machine each one walks two page tables: on this project's host the same stream ran ~2x faster from 2 MB pages
(benchmarks/RESULTS.md). Linux backs memory with 2 MB pages where it is asked to (`madvise(MADV_HUGEPAGE)`, which
transparent huge pages in their default "madvise" mode honour), if it is asked before the memory is first touched.
torch's allocator only asks when THP_MEM_ALLOC_ENABLE is set before torch starts; these helpers ask for the
buffers that matter, whatever the environment. Elsewhere (other systems, THP off) they are plain tensors.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import torch

log = logging.getLogger(__name__)

HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None
if sys.platform.startswith("linux"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):  # no libc symbol: plain pages
        _madvise = None


def huge_empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor that starts on a 2 MB boundary, its memory advised for 2 MB pages before anything
    touches it. Buffers under 2 MB, or where advice is unavailable, are plain `torch.empty`."""
    numel = 1
    for n in shape:
        numel *= int(n)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if _madvise is None or nbytes < HUGE:
        return torch.empty(shape, dtype=dtype)
    raw = torch.empty(nbytes + HUGE, dtype=torch.uint8)  # large: mmap'd, untouched until written
    start = (-raw.data_ptr()) % HUGE
    length = (nbytes + HUGE - 1) // HUGE * HUGE
    length = min(length, raw.numel() - start)
    if _madvise(raw.data_ptr() + start, length, _MADV_HUGEPAGE) != 0:
        log.debug("madvise(MADV_HUGEPAGE) refused (errno %d): plain pages", ctypes.get_errno())
    return raw[start : start + nbytes].view(dtype).view(shape)


def huge_zeros(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """`huge_empty`, zeroed (the zeroing is the first touch, so it lands on 2 MB pages); on another device, plain
    `torch.zeros` there."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return huge_empty(shape, dtype).zero_()
