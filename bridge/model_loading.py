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

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
LOADING_MMAP_THRESHOLD = 1 << 20
LOADING_TRIM_THRESHOLD = 128 << 10  # glibc's default
RUNNING_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the dynamic threshold
RUNNING_TRIM_THRESHOLD = 64 << 20


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    """While loading, have glibc serve blocks of 1 MiB and more straight from the OS and give them back when freed.

    Loading converts tensors of tens of MB one by one; by default glibc raises its mmap threshold after the first
    such free and keeps every later freed buffer in its heap, so a bf16 load peaks hundreds of MB above what it
    keeps (benchmarks/RESULTS.md). Afterwards the threshold goes to 32 MiB, glibc's own ceiling, so that the
    codec's and the prefill's large temporaries are reused rather than mapped afresh each time, and the heap keeps
    up to 64 MiB free at its top: at glibc's default of 128 KiB a prefill gave back each freed temporary (a widened
    weight, an activation of a few MB) and paid the page faults again on the next, a quarter of a window slide's
    time. A no-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(M_MMAP_THRESHOLD, LOADING_MMAP_THRESHOLD)  # setting it also turns off glibc's dynamic raising
    mallopt(M_TRIM_THRESHOLD, LOADING_TRIM_THRESHOLD)
    try:
        yield
    finally:
        trim(0)
        mallopt(M_MMAP_THRESHOLD, RUNNING_MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, RUNNING_TRIM_THRESHOLD)


def load_model(spec: str, device: str = "auto", dtype: str = "float32") -> MusicGen:
    """engine.checkpoint.load_model, with freed memory going back to the OS while it runs."""
    from engine.checkpoint import load_model as load

    with returning_freed_memory():
        return load(spec, device=device, dtype=dtype)
