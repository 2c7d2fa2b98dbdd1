"""Loading the model in a bridge process (`generate`, `serve`, `bench`): the engine's loader under this process's
allocator policy.

The policy is process-wide (glibc's malloc settings), so it is the program's to choose, not the library's:
engine/checkpoint.py sets nothing, and tests or other programs that load a model keep their allocator as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator

from engine.model import MusicGen

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LOADING_MMAP_THRESHOLD = 1 << 20
RUNNING_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the dynamic threshold


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    """While loading, have glibc serve blocks of 1 MiB and more straight from the OS and give them back when freed.

    Loading converts tensors of tens of MB one by one; by default glibc raises its mmap threshold after the first
    such free and keeps every later freed buffer in its heap, so a bf16 load peaks hundreds of MB above what it
    keeps (benchmarks/RESULTS.md). Afterwards the threshold goes to 32 MiB, glibc's own ceiling, so that the
    codec's and the prefill's large temporaries are reused rather than mapped afresh each time. A no-op where
    glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(M_MMAP_THRESHOLD, LOADING_MMAP_THRESHOLD)  # setting it also turns off glibc's dynamic raising
    try:
        yield
    finally:
        trim(0)
        mallopt(M_MMAP_THRESHOLD, RUNNING_MMAP_THRESHOLD)


def load_model(spec: str, device: str = "auto", dtype: str = "float32") -> MusicGen:
    """engine.checkpoint.load_model, with freed memory going back to the OS while it runs."""
    from engine.checkpoint import load_model as load

    with returning_freed_memory():
        return load(spec, device=device, dtype=dtype)
