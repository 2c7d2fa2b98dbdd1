"""The project's C++ kernels (`engine/native/*.cpp`), built on first use with torch's extension builder and loaded
as torch ops (`torch.ops.musicgen_bridge.*`), so the traced decode step calls them like any aten op.

The build needs a C++ compiler and ninja (a Python dependency); it lands in the user's cache, keyed by the source,
torch and Python, and takes ~15 s once per machine (`python -m engine.native` does it ahead, as scripts/setup.sh
does). Where it cannot be built or the CPU lacks what a kernel needs, `load()` says why once in the log and returns
False, and the callers keep torch's own kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name("native") / name for name in ("w8a8_linear.cpp", "int4_linear.cpp", "decode_attention.cpp", "lstm_addmm.cpp"))
# Each kernel's CPU check. torch's own checks, not ops of the library: `supports` may be asked while the decode step
# is being traced, and the tracer refuses an op that returns a bool.
KERNELS = {"w8a8_linear": torch.cpu._is_vnni_supported, "w8a16_linear": torch.cpu._is_avx2_supported,
           "int4_linear": torch.cpu._is_avx2_supported,
           "decode_attention_int8": torch.cpu._is_avx2_supported, "widen": torch.cpu._is_avx512_bf16_supported,
           "cross_attention_folded": torch.cpu._is_vnni_supported,
           "decode_attention": torch.cpu._is_avx512_bf16_supported, "lstm_addmm": torch.cpu._is_avx2_supported}
CACHE = Path(os.environ.get("MUSICGEN_BRIDGE_CACHE", Path.home() / ".cache" / "musicgen-bridge")) / "native"

_lock = threading.Lock()
_state: dict[str, object] = {}


HEADERS = tuple(Path(__file__).with_name("native") / name for name in ("vec_math.h", "quantize_row.h", "parallel.h"))


def build_dir() -> Path:
    """Where this source, torch and Python build to: a change to any of them builds afresh beside the old."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:12]
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}".replace("+", "_")
    return CACHE / tag


def load() -> bool:
    """Build (once per machine) and load the kernels; True when `torch.ops.musicgen_bridge` is usable here."""
    with _lock:
        if "ok" not in _state:
            _state["ok"], _state["why"] = _load()
            if _state["ok"]:
                log.info("native kernels loaded (%s)", build_dir())
            else:
                log.warning("native kernels not used, torch's kernels instead: %s", _state["why"])
        return bool(_state["ok"])


def supports(kernel: str) -> bool:
    """`kernel` (one of `KERNELS`) runs here: the library is loaded and the CPU has the instructions it needs
    (AVX-512 VNNI for the w8a8 linear and the folded cross-attention, AVX2 for the w8a16 and int4 linears, the
    int8 cache's attention and the codec LSTM's matmuls, AVX512_BF16 for the bf16 cache's)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: one of {', '.join(KERNELS)}")
    return load() and bool(KERNELS[kernel]())


@contextlib.contextmanager
def avx2_only() -> Iterator[None]:
    """Inside the block, the kernels that have an AVX2 path take it even on an AVX-512 CPU (tests compare the
    two on one machine; nothing else should need this)."""
    if not load():
        raise RuntimeError(f"the native kernels are not loaded: {why_not()}")
    torch.ops.musicgen_bridge.avx2_only(True)
    try:
        yield
    finally:
        torch.ops.musicgen_bridge.avx2_only(False)


def why_not() -> str:
    """Why `load()` returned False ('' when it did not, or has not run)."""
    return str(_state.get("why", ""))


def _load() -> tuple[bool, str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"the kernels are for x86-64 CPUs, this is {platform.machine()}"
    if not sys.platform.startswith("linux"):
        return False, f"the kernels are built on Linux only, this is {sys.platform}"
    if not torch.cpu._is_avx2_supported():  # every kernel needs at least AVX2: nothing here would run
        return False, "this CPU lacks AVX2"
    _find_ninja()
    from torch.utils import cpp_extension

    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # -fopenmp: the kernels split work on OpenMP (native/parallel.h); the library it links (libgomp.so.1)
        # resolves to the copy torch already loaded, so the kernels share torch's one team of threads.
        cpp_extension.load(name="musicgen_bridge_native", sources=[str(p) for p in SOURCES], build_directory=str(folder),
                           extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], is_python_module=False,
                           verbose=False)
    except Exception as e:  # a missing compiler or ninja, a failed build: the caller falls back, the log says why
        return False, f"building {folder} failed ({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e})"
    return True, ""


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; the ninja wheel's binary is beside this venv's Python even when the
    venv is not activated."""
    if shutil.which("ninja"):
        return
    beside = Path(sys.executable).parent
    if (beside / "ninja").exists():
        os.environ["PATH"] = f"{beside}{os.pathsep}{os.environ.get('PATH', '')}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ok = load()
    print(f"native kernels: {'built and loaded from ' + str(build_dir()) if ok else 'not used: ' + why_not()}")
