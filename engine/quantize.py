"""Linear layers for a fast decoder step on CPU: weights prepacked once, in fp32, bf16, int8 or int4.

A decode step multiplies a [2, D] activation (guidance batch) by every weight matrix once, so its speed is how
fast the weights stream from memory. `torch.nn.functional.linear` streams them slowly for so few rows; oneDNN's
matmul on weights reordered once into its blocked layout (what `torch.compile`'s CPU freezing does) streams
them several times faster, and fewer bytes per weight stream faster still. Measurements: benchmarks/RESULTS.md.

- `PackedLinear`: fp32 or bf16 weights in oneDNN's layout; the input is cast to the weight's dtype, products
  accumulate in fp32, the output comes in the weight's dtype.
- `NativeW8A16Linear`: int8 weights, one scale per output row (symmetric, w ~ scale[n] * q[n, :]), times the rows
  rounded to 16 bits, on the project's kernel (AVX2 or AVX-512); fp32 out. The int8 format's linears and the output
  heads of every integer format (`int8_linear(weight)` picks).
- `Int8Linear`: the same weights on torch's weight-only `_weight_int8pack_mm`, where the native kernel cannot run;
  activations enter the kernel in bf16, accumulate in fp32, and leave in bf16.
- `W8A8Linear`: int8 weights (per-row scales) and int8 activations, quantized per row as they arrive (dynamic,
  symmetric), multiplied in integers (VNNI) by the project's kernel (`NativeW8A8Linear`, which also takes over the
  LayerNorms and the GELU in front of its linears, its weights in one buffer on 2 MB pages) or by fbgemm's int8
  linear; fp32 out. The w8a8 model keeps its output heads in int8 weights with 16-bit activations
  (`int8_linear`; `prepare_for_cpu`): the logits are where rounding is least diluted.
- `NativeInt4Linear`: int4 weights in groups of `INT4_GROUP` input columns (asymmetric: a scale and an offset per
  group, fp16) times int8 activations, on the project's kernel, with norms, GELU and 2 MB pages as w8a8's.
- `Int4Linear`: weight-only int4 in the same groups on torch's `_weight_int4pack_mm_for_cpu`, bf16 activations in
  and out, where the native kernel cannot run (`int4_linear(weight)` picks). The int4 model keeps its output heads
  in int8, as the w8a8 model does (`prepare_for_cpu`).

Outputs come in the narrow dtype on purpose: the LM adds them to its fp32 residual stream (type promotion does the
cast within the add) and feeds fc1's output through GELU to fc2 in bf16 (what fc2 would round it to anyway), so
no separate cast op is spent where none changes a value.

`prepare_for_cpu(lm, weights)` swaps every `nn.Linear` of the LM for one of these, in place, freeing the
original weights as it goes (so peak memory grows by one matrix, not by the model).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("float32", "bfloat16", "int8", "w8a8", "int4")
INT4_GROUP = 32  # input columns per scale/zero pair; benchmarks/RESULTS.md compares 32, 64 and 128


@dataclass(frozen=True)
class Precision:
    """How an LM asked for in `dtype` runs on a device."""

    activations: torch.dtype  # norms, residual stream, attention, KV cache
    weights: str | None  # linear weight format for `prepare_for_cpu`; None: plain nn.Linear in `activations`

    @property
    def storage(self) -> torch.dtype:
        """The dtype the checkpoint's linear weights are read into (int8 is quantized from bf16)."""
        return {None: self.activations, "float32": torch.float32}.get(self.weights, torch.bfloat16)


def plan_precision(device: torch.device, dtype: torch.dtype) -> Precision:
    """On CPU the activations stay fp32 and only the linear weights narrow: bf16 attention and elementwise ops run
    several times slower than fp32 on CPUs (measured in benchmarks/RESULTS.md), while the weights, which are
    the bytes a step streams, are what bf16/int8 are for. On GPUs `dtype` is used throughout."""
    if dtype in (torch.int8, torch.qint8, torch.int4):
        from engine.errors import UserError

        name = "w8a8" if dtype == torch.qint8 else str(dtype).removeprefix("torch.")
        if device.type != "cpu":
            raise UserError(f"--dtype {name} is for CPUs: on a GPU use bfloat16 or float16 (or --dtype auto)", code="bad_args")
        if dtype == torch.int4 and not int4_supported():
            raise UserError("--dtype int4 needs the project's int4 kernel (an x86 CPU with AVX2 and a C++ "
                            "compiler) or torch's CPU int4 kernel, and neither runs here: use --dtype int8 or auto",
                            code="bad_args")
        if dtype == torch.qint8 and not w8a8_supported():
            raise UserError("--dtype w8a8 needs fbgemm's int8 linear (x86 torch builds) and a CPU with VNNI int8 dot "
                            "products, which this machine lacks: use --dtype int8 or auto", code="bad_args")
        return Precision(torch.float32, name)
    if device.type == "cpu" and onednn_available():
        if dtype == torch.float32:
            return Precision(torch.float32, "float32")
        if dtype == torch.bfloat16:  # without native bf16, PackedLinear holds the bf16-rounded weights in fp32
            return Precision(torch.float32, "bfloat16")
    return Precision(dtype, None)


def onednn_available() -> bool:
    """oneDNN's prepacked linear exists in this torch build (x86 and Arm builds have it; some others do not)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def int4_supported() -> bool:
    """`--dtype int4` runs here: on the project's int4 kernel (AVX2 or AVX-512, built with the C++ compiler) or on
    torch's weight-only one."""
    if torch_int4_supported():
        return True
    from engine import native

    return native.supports("int4_linear")


def torch_int4_supported() -> bool:
    """torch's CPU int4 weight-only matmul exists in this build (torch >= 2.6 on x86 and Arm)."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def w8a8_supported() -> bool:
    """The CPU has VNNI int8 dot products (without them fbgemm multiplies uint8 by int8 in 16-bit pairs that
    saturate on full-range activations) and a w8a8 kernel runs: fbgemm's int8 linear with a given input scale (x86
    builds) or the native one."""
    if not torch.cpu._is_vnni_supported():
        return False
    ops = torch.ops.quantized
    fbgemm = ("fbgemm" in torch.backends.quantized.supported_engines and hasattr(ops, "linear_prepack")
              and hasattr(ops, "linear_with_input_q_dq_qweight_dq_output_fp32"))
    if fbgemm:
        return True
    from engine import native

    return native.supports("w8a8_linear")


def bf16_supported() -> bool:
    """oneDNN runs bf16 matmuls natively (avx512_bf16 / AMX on x86, bf16 dot products on Arm); else it
    emulates them, slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """y = x W^T with W (fp32 or bf16) reordered once into oneDNN's blocked layout; no bias (MusicGen has none)."""

    def __init__(self, weight: Tensor, dtype: torch.dtype, batch_hint: int = 2):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if dtype == torch.bfloat16 and not bf16_supported():
            # oneDNN refuses bf16 weights on a CPU without native bf16 (emulated, they would run slower than fp32):
            # the same bf16-rounded weights, held and multiplied in fp32
            weight, dtype = weight.detach().to(torch.bfloat16).float(), torch.float32
        # The hint picks the blocking; any number of rows works afterwards (prefill included).
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), batch_hint)
        self.register_buffer("weight", packed, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # Returns the weight's dtype: the LM casts where it must (q, k, v) and lets the residual adds promote.
        if torch.jit.is_tracing():  # the tracer cannot type the op's empty scalar list; a scripted call can
            return _scripted(_packed_matmul)(x.to(self.weight.dtype), self.weight)
        return torch.ops.mkldnn._linear_pointwise(x.to(self.weight.dtype), self.weight, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {str(self.weight.dtype).replace('torch.', '')}, oneDNN"


def _packed_matmul(x: Tensor, w: Tensor) -> Tensor:
    no_scalars: List[Optional[Union[int, float, complex]]] = []
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", no_scalars, "")


@functools.lru_cache(maxsize=None)
def _scripted(fn):
    """`fn` compiled once by TorchScript, so the traced step (engine/steps.py) can call an op it cannot trace."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(fn)


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (q [N, K] int8, scale [N] fp32) with weight ~ scale[:, None] * q."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """Weight-only int8 linear (per-row scales): half the bytes of bf16 per step, activations kept wide."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_rows(weight)
        self.register_buffer("weight", q, persistent=False)
        # The kernel wants scales in the activations' dtype (bf16): relative error 2^-9 per row, well under the
        # int8 rounding itself (up to 2^-8 of the row's largest weight).
        self.register_buffer("scale", scale.to(torch.bfloat16), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scale)
        return y.view(*shape[:-1], self.out_features)  # bf16, as PackedLinear returns its weight's dtype

    def dequantized(self) -> Tensor:
        return self.weight.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 weight-only"


class W8A8Linear(nn.Module):
    """int8 weights and int8 activations: the step's matmuls in integer dot products (VNNI), which stream int8
    weights faster than `_weight_int8pack_mm`'s convert-then-multiply (benchmarks/RESULTS.md). Each activation row
    gets its own scale (its largest magnitude / 127), so the rows of a batch (guidance's pair, other streams) never
    share one and a row's result does not depend on its companions. Both kernels compute
    `round(127 x / max|x|) . q * max|x| / 127 * scale` in exact integer sums; `w8a8_linear(weight)` picks one.

    - `NativeW8A8Linear`: the project's kernel (engine/native/w8a8_linear.cpp, AVX-512 VNNI), which streams a
      step's weights nearly twice as fast as fbgemm's on a few rows.
    - `FbgemmW8A8Linear`: fbgemm's int8 linear, where the native kernel cannot be built or run.
    """

    out_features: int
    in_features: int

    def dequantized(self) -> Tensor:
        """The weight the kernel multiplies by, [N, K] fp32."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 weights and activations (per row), {self.kernel}"


def w8a8_linear(weight: Tensor) -> W8A8Linear:
    """The fastest w8a8 kernel this machine runs: the native one when it builds and the CPU has AVX-512 VNNI."""
    from engine import native

    return NativeW8A8Linear(weight) if native.supports("w8a8_linear") else FbgemmW8A8Linear(weight)


class NativeLinear(nn.Module):
    """What the project's linear kernels (engine/native) share: the LayerNorm in front of the linear and the GELU
    between fc1 and fc2 can be applied to the rows inside the op as it rounds them (`absorb_norm`, `absorb_gelu`;
    `fuse_into_native_linears` does it for the LM), and the packed weight can live in the LM's one buffer on 2 MB
    pages (`gather_weights`)."""

    packed: Tensor

    def __init__(self, kernel: str) -> None:
        super().__init__()
        from engine import native

        if not native.supports(kernel):
            raise RuntimeError(f"the native {kernel} kernel does not run here: {native.why_not() or 'this CPU lacks its instructions'}")
        self.register_buffer("norm_weight", None, persistent=False)  # set by absorb_norm
        self.register_buffer("norm_bias", None, persistent=False)
        self.eps = 1e-5
        self.gelu = False

    def absorb_norm(self, norm: nn.LayerNorm) -> None:
        """Apply `norm` to the rows inside the op (the caller drops the norm from the model)."""
        if norm.normalized_shape != (self.in_features,) or norm.weight is None or norm.bias is None:
            raise ValueError(f"only a LayerNorm over the {self.in_features} inputs, with weight and bias, can be absorbed")
        self.norm_weight = norm.weight.detach().float().clone()
        self.norm_bias = norm.bias.detach().float().clone()
        self.eps = float(norm.eps)

    def absorb_gelu(self) -> None:
        """Apply GELU (erf form) to the rows inside the op (the caller drops the GELU from the model)."""
        self.gelu = True

    def fused_repr(self) -> str:
        fused = (["layer norm"] if self.norm_weight is not None else []) + (["GELU"] if self.gelu else [])
        return f", {' and '.join(fused)} in front" if fused else ""

    def widened(self) -> Tensor:
        """The weight's transpose as bf16 [K, N] (from the packed bytes, each call)."""
        raise NotImplementedError

    def wide_forward(self, x: Tensor) -> Tensor:
        """Many rows [..., K] fp32 at once (a prefill): the norm and GELU as torch ops, then a bf16 matmul against the
        widened weight, which the CPU's matrix units (AMX) run faster than the integer kernel runs that many rows
        (benchmarks/RESULTS.md); fp32 [..., N] out. The activations stay bf16 here, not rounded to int8."""
        if self.norm_weight is not None:
            x = F.layer_norm(x, (self.in_features,), self.norm_weight, self.norm_bias, self.eps)
        if self.gelu:
            x = F.gelu(x)
        return (x.to(torch.bfloat16) @ self.widened()).float()


def as_float(x: Tensor) -> Tensor:
    """x in fp32; no op at all when it already is (a traced step then has no node for it)."""
    return x if x.dtype == torch.float32 else x.float()


WIDE_ROWS = 256  # rows from which a native linear widens its weight to bf16 (`NativeLinear.wide_forward`)


def goes_wide(rows: int) -> bool:
    """A call of `rows` rows takes `NativeLinear.wide_forward`: enough rows, AMX tiles and bf16 on this CPU, the
    kernels built, and not inside the decode step's trace (a step has a few rows; this keeps the graph one path)."""
    if rows < WIDE_ROWS or torch.jit.is_tracing():
        return False
    from engine import native

    return native.supports("widen") and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


class NativeW8A8Linear(W8A8Linear, NativeLinear):
    """w8a8 on `torch.ops.musicgen_bridge.w8a8_linear`: the weight packed in 64-column blocks, the rows rounded
    inside the op (so the traced step has one op per matmul), the threads torch's own; norms and GELU as
    `NativeLinear` says."""

    kernel = "native"

    def __init__(self, weight: Tensor):
        super().__init__("w8a8_linear")
        self.out_features, self.in_features = weight.shape
        q, packed, wscale = pack_rows(weight)
        colsum = torch.zeros_like(wscale, dtype=torch.int32)
        colsum[: self.out_features] = q.sum(1, dtype=torch.int32)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("colsum", colsum, persistent=False)
        self.register_buffer("wscale", wscale, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = as_float(x)
        if goes_wide(x.numel() // x.shape[-1]):
            return self.wide_forward(x)
        return torch.ops.musicgen_bridge.w8a8_linear(x, self.packed, self.colsum, self.wscale, self.out_features,
                                                     self.norm_weight, self.norm_bias, self.eps, self.gelu)

    def widened(self) -> Tensor:
        return torch.ops.musicgen_bridge.w8a8_widen(self.packed, self.wscale)[: self.in_features, : self.out_features]

    def extra_repr(self) -> str:
        return super().extra_repr() + self.fused_repr()

    def dequantized(self) -> Tensor:
        return unpack_rows(self.packed, self.wscale, self.out_features, self.in_features)


def pack_rows(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`quantize_rows` packed for the native int8-weight kernels: (q [N, K] int8, the packed weight (`w8a8_pack`,
    64-column blocks), the row scales [N rounded up to whole blocks] fp32, the padding's 0)."""
    q, scale = quantize_rows(weight)
    packed = torch.ops.musicgen_bridge.w8a8_pack(q)
    wscale = torch.zeros(packed.shape[0] * packed.shape[2])
    wscale[: q.shape[0]] = scale
    return q, packed, wscale


def unpack_rows(packed: Tensor, wscale: Tensor, n: int, k: int) -> Tensor:
    """`pack_rows` undone: the weight the kernels multiply by, [n, k] fp32."""
    blocks, steps, width, four = packed.shape
    q = packed.permute(0, 2, 1, 3).reshape(blocks * width, steps * four)
    return q[:n, :k].float() * wscale[:n, None]


class NativeW8A16Linear(NativeLinear):
    """int8 weights (per-row scales) times 16-bit activations, each row rounded as round(32767 x / max|x|), on
    `torch.ops.musicgen_bridge.w8a16_linear`; fp32 out. Every linear of the int8 model and the output heads of the
    w8a8 and int4 models (`int8_linear`): the rows are far finer than `Int8Linear`'s bf16 while the weights stream
    2-3x faster than `_weight_int8pack_mm` does (benchmarks/RESULTS.md). The kernel runs on AVX2, so CPUs without
    AVX-512 have it too; norms and GELU as `NativeLinear` says."""

    def __init__(self, weight: Tensor):
        super().__init__("w8a16_linear")
        self.out_features, self.in_features = weight.shape
        _, packed, wscale = pack_rows(weight)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("wscale", wscale, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = as_float(x)
        if goes_wide(x.numel() // x.shape[-1]):
            return self.wide_forward(x)
        return torch.ops.musicgen_bridge.w8a16_linear(x, self.packed, self.wscale, self.out_features, self.norm_weight,
                                                      self.norm_bias, self.eps, self.gelu)

    def widened(self) -> Tensor:
        return torch.ops.musicgen_bridge.w8a8_widen(self.packed, self.wscale)[: self.in_features, : self.out_features]

    def dequantized(self) -> Tensor:
        return unpack_rows(self.packed, self.wscale, self.out_features, self.in_features)

    def extra_repr(self) -> str:
        shape = f"in={self.in_features}, out={self.out_features}"
        return f"{shape}, int8 weights, 16-bit activations (per row), native{self.fused_repr()}"


def int8_linear(weight: Tensor) -> nn.Module:
    """A linear in int8 weights: `NativeW8A16Linear` where its kernel runs, else `Int8Linear`."""
    from engine import native

    return NativeW8A16Linear(weight) if native.supports("w8a16_linear") else Int8Linear(weight)


class FbgemmW8A8Linear(W8A8Linear):
    """w8a8 on fbgemm's int8 linear that takes fp32 rows with a given scale and zero point, rounds them to uint8 and
    returns fp32 (`quantized::linear_with_input_q_dq_qweight_dq_output_fp32`): far less fixed cost per call than
    oneDNN's `qlinear_pointwise` with the rounding in separate ops (a step makes 144 calls). Rows divided by their
    own largest magnitude lie in [-1, 1], so one scale, 1/127 with zero point 128, rounds each exactly as
    `round(127 * x / max|x|)`."""

    kernel = "fbgemm"

    def __init__(self, weight: Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_rows(weight)
        with warnings.catch_warnings():  # torch deprecates building quantized tensors; the packed op is what runs
            warnings.simplefilter("ignore", UserWarning)
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            self.packed = _prepack(torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        # clamp: an all-zero row (guidance's unconditional row after cross-attention) gives zeros, not NaN
        top = x.abs().amax(-1, keepdim=True).clamp_(min=1e-30)
        if torch.jit.is_tracing():  # the tracer cannot type the packed weight; a scripted call can
            y = _scripted(_int8_matmul)(x / top, self.packed)
        else:
            y = _int8_matmul(x / top, self.packed)
        return (y * top).view(*shape[:-1], self.out_features)

    def packed_bytes(self) -> int:
        """Bytes held outside tensor buffers, all read by every call: the int8 weights and, per output row, fbgemm's
        scale, zero point and column offset (4 bytes each)."""
        return self.out_features * self.in_features + self.out_features * 12

    def dequantized(self) -> Tensor:
        return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize().float()


def fuse_into_native_linears(lm: nn.Module) -> int:
    """Move each block's LayerNorms and its GELU into the native linears (`NativeLinear`) that read their output
    (norm1 into attn.wqkv, norm_cross into cross.wq, norm2 into fc1, act into fc2), replacing them with
    `nn.Identity`: each norm or GELU output feeds exactly that one linear in `engine.lm.Block`. Returns how many
    were moved."""
    pairs = (("norm1", "attn.wqkv"), ("norm_cross", "cross.wq"), ("norm2", "fc1"))
    moved = 0
    for block in getattr(lm, "layers", []):
        for norm_name, linear_name in pairs:
            norm = getattr(block, norm_name, None)
            if norm is None:  # a model without cross-attention has no norm_cross
                continue
            linear = block.get_submodule(linear_name)
            if isinstance(norm, nn.LayerNorm) and isinstance(linear, NativeLinear):
                linear.absorb_norm(norm)
                setattr(block, norm_name, nn.Identity())
                moved += 1
        if isinstance(getattr(block, "act", None), nn.GELU) and block.act.approximate == "none" and isinstance(block.fc2, NativeLinear):
            block.fc2.absorb_gelu()
            block.act = nn.Identity()
            moved += 1
    return moved


def gather_weights(lm: nn.Module) -> int:
    """Move the weights a step streams into one buffer on 2 MB pages, in the order a step reads them
    (engine/hugepages.py says why): the native linears' packed weights and the weight-only int8 linears' (the
    output heads; every linear of an int8 model). Each layer keeps a view. One matrix at a time, so memory grows by
    one matrix. Returns the buffer's bytes (0 when there is nothing to gather)."""
    from engine.hugepages import huge_empty

    # modules() goes in the order the LM defines them: the layers', then the heads, as a step reads them
    weights = [(m, "packed" if isinstance(m, NativeLinear) else "weight") for m in lm.modules()
               if isinstance(m, (NativeLinear, Int8Linear))]
    total = sum(getattr(m, name).numel() for m, name in weights)  # bytes: every such weight is int8 or uint8
    if not total:
        return 0
    arena = huge_empty((total,), torch.uint8)
    at = 0
    for m, name in weights:
        t = getattr(m, name)
        view = arena[at : at + t.numel()].view(t.dtype).view(t.shape)
        view.copy_(t)
        setattr(m, name, view)
        at += t.numel()
    return total


def _prepack(weight: Tensor):
    """fbgemm's packed form of a per-row int8 weight (packed under the x86/fbgemm quantized engine)."""
    engine = torch.backends.quantized.engine
    if engine not in W8A8_ENGINES:
        torch.backends.quantized.engine = "fbgemm"
    try:
        return torch.ops.quantized.linear_prepack(weight, None)
    finally:
        torch.backends.quantized.engine = engine


W8A8_ENGINES = ("x86", "fbgemm")


def _int8_matmul(rows: Tensor, packed: torch.classes.quantized.LinearPackedParamsBase) -> Tensor:
    """rows [M, K] in [-1, 1], rounded to uint8 as round(127 x) + 128, times the int8 weights; fp32 [M, N]."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(rows, 1.0 / 127.0, 128, packed)


def quantize_groups(weight: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit per group of `group` input columns: (q [N, K] int32 in 0..15, scale [N, K/group],
    lo [N, K/group]) with weight ~ lo + scale * q, both fp32. The group's min and max are grid points."""
    N, K = weight.shape
    w = weight.detach().float().view(N, K // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.int32)
    return q.view(N, K), scale, lo


def int4_fits(weight: Tensor, group: int) -> bool:
    """The kernel's shape rules: K a multiple of the group (capped at K), N a multiple of 16."""
    N, K = weight.shape
    return N % 16 == 0 and K % min(group, K) == 0 and min(group, K) % 2 == 0


class Int4Linear(nn.Module):
    """Weight-only int4 linear, group-wise scales and zero points: a quarter of bf16's weight bytes (plus one
    bf16 scale/zero pair per group)."""

    def __init__(self, weight: Tensor, group: int):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group = min(group, self.in_features)
        q, scale, lo = quantize_groups(weight, self.group)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), persistent=False)
        # The kernel computes (q - 8) * scale + zero, with scale and zero stacked [K/group, N, 2] in bf16.
        zero = lo + 8 * scale
        self.register_buffer("scale_zero", torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.group, self.scale_zero)
        return y.view(*shape[:-1], self.out_features)

    def dequantized(self) -> Tensor:
        """The weight the kernel multiplies by (from the bf16 scales and zeros it reads), [N, K] fp32."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, self.group, self.scale_zero).float().t()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 weight-only, groups of {self.group}"


class NativeInt4Linear(NativeLinear):
    """int4 weights (asymmetric groups of `group` input columns: w = lo + scale q, q in 0..15, fp16 scale and lo
    per group and column) times int8 activations (rounded per row as w8a8 rounds them), on
    `torch.ops.musicgen_bridge.int4_linear` (engine/native/int4_linear.cpp): half int8's weight bytes, the same
    integer dot products. Norms and GELU as `NativeLinear` says."""

    kernel = "native"

    def __init__(self, weight: Tensor, group: int):
        super().__init__("int4_linear")
        if not native_int4_fits(weight, group):
            raise ValueError(f"a {tuple(weight.shape)} weight is not whole groups of {group} inputs with fp16 scales")
        self.out_features, self.in_features = weight.shape
        self.group = min(group, self.in_features)
        q, scale, lo = quantize_groups_fp16(weight, self.group)
        self.register_buffer("packed", pack_int4(q, scale, lo, self.group), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = as_float(x)
        if goes_wide(x.numel() // x.shape[-1]):
            return self.wide_forward(x)
        return torch.ops.musicgen_bridge.int4_linear(x, self.packed, self.out_features, self.group, self.norm_weight,
                                                     self.norm_bias, self.eps, self.gelu)

    def widened(self) -> Tensor:
        return torch.ops.musicgen_bridge.int4_widen(self.packed, self.group)[:, : self.out_features]

    def dequantized(self) -> Tensor:
        """The weight the kernel multiplies by, [N, K] fp32 (unpacked from the packed bytes)."""
        q, scale, lo = unpack_int4(self.packed, self.group)
        w = lo.repeat_interleave(self.group, 1) + scale.repeat_interleave(self.group, 1) * q
        return w[: self.out_features, : self.in_features]

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int4 weights in groups of {self.group} and int8 "
                f"activations (per row), native{self.fused_repr()}")


INT4_BLOCK = 64  # output columns per block of the native int4 layout


def native_int4_fits(weight: Tensor, group: int) -> bool:
    """The native int4 layout's rules: whole groups of a multiple of 4 inputs, and group ranges that fp16 holds."""
    N, K = weight.shape
    g = min(group, K)
    if K % g or g % 4:
        return False
    w = weight.detach().float().view(N, K // g, g)
    return bool((w.amax(-1) - w.amin(-1)).abs().max() < 6e4 and w.abs().max() < 6e4)


def quantize_groups_fp16(weight: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """`quantize_groups` with the scale and lo rounded to fp16 first and q rounded against the rounded pair, so
    lo + scale q (in fp32) is exactly what the native kernel multiplies by. Returns (q uint8, scale, lo) as fp32."""
    N, K = weight.shape
    _, scale, lo = quantize_groups(weight, group)
    scale, lo = scale.half().float(), lo.half().float()
    w = weight.detach().float().view(N, K // group, group)
    q = torch.round((w - lo[..., None]) / scale.clamp(min=2.0**-24)[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.view(N, K), scale, lo


def pack_int4(q: Tensor, scale: Tensor, lo: Tensor, group: int) -> Tensor:
    """q [N, K] (0..15), scale and lo [N, K/group] -> engine/native/int4_linear.cpp's layout, uint8 [N/64 blocks,
    K/group, group/4 * 128 + 256]: per group, its k-steps of 64 columns x 4 inputs (two 64-byte halves, the low
    nibbles of each half its first 16 columns, the high nibbles the next 16), then 64 fp16 scales and 64 fp16 lo."""
    N, K = q.shape
    blocks, groups, steps = -(-N // INT4_BLOCK), K // group, group // 4
    padded = torch.zeros(blocks * INT4_BLOCK, K, dtype=torch.uint8)
    padded[:N] = q
    # [block, quarter of 16 columns, column, group, k-step, input] -> [block, group, k-step, quarter, column, input]
    t = padded.view(blocks, 4, 16, groups, steps, 4).permute(0, 3, 4, 1, 2, 5)
    halves = torch.stack([t[:, :, :, 0] | (t[:, :, :, 1] << 4), t[:, :, :, 2] | (t[:, :, :, 3] << 4)], 3)
    nibbles = halves.reshape(blocks, groups, steps * 128)
    pairs = torch.zeros(2, blocks * INT4_BLOCK, groups, dtype=torch.float16)  # padding columns: scale 0, lo 0
    pairs[0, :N], pairs[1, :N] = scale.half(), lo.half()
    pairs = pairs.view(2, blocks, INT4_BLOCK, groups).permute(1, 3, 0, 2).contiguous()  # [block, group, 2, 64]
    return torch.cat([nibbles, pairs.view(torch.uint8).view(blocks, groups, 256)], -1).contiguous()


def unpack_int4(packed: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """`pack_int4` undone: (q, scale, lo) as fp32 [N padded to blocks, K], [N padded, K/group] twice."""
    blocks, groups, _ = packed.shape
    steps = group // 4
    halves = packed[..., : steps * 128].reshape(blocks, groups, steps, 2, 16, 4)
    quarters = torch.stack([halves[:, :, :, 0] & 15, halves[:, :, :, 0] >> 4, halves[:, :, :, 1] & 15, halves[:, :, :, 1] >> 4], 3)
    q = quarters.permute(0, 3, 4, 1, 2, 5).reshape(blocks * INT4_BLOCK, groups * group).float()
    pairs = packed[..., steps * 128 :].contiguous().view(torch.float16).view(blocks, groups, 2, INT4_BLOCK)
    scale, lo = (pairs[:, :, i].permute(0, 2, 1).reshape(blocks * INT4_BLOCK, groups).float() for i in (0, 1))
    return q, scale, lo


def module_bytes(module: nn.Module, recurse: bool = True) -> int:
    """Bytes of a module's parameters and buffers, plus what its layers hold packed outside tensors (`W8A8Linear`)."""
    tensors = [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]
    layers = module.modules() if recurse else [module]
    packed = sum(m.packed_bytes() for m in layers if hasattr(m, "packed_bytes"))
    return sum(t.numel() * t.element_size() for t in tensors) + packed


def int4_linear(weight: Tensor) -> nn.Module:
    """The fastest int4 linear this machine runs for `weight`: the native kernel (int8 activations) when it builds,
    the CPU has AVX2 and the weight fits its layout; else torch's weight-only kernel; else (a shape neither
    takes) weight-only int8."""
    from engine import native

    if native.supports("int4_linear") and native_int4_fits(weight, INT4_GROUP):
        return NativeInt4Linear(weight, INT4_GROUP)
    if torch_int4_supported() and int4_fits(weight, INT4_GROUP):
        return Int4Linear(weight, INT4_GROUP)
    return int8_linear(weight)


def _swap_linears(module: nn.Module, make) -> int:
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child.weight))
            n += 1
        else:
            n += _swap_linears(child, make)
    return n


@torch.no_grad()
def prepare_for_cpu(lm: nn.Module, weights: str) -> nn.Module:
    """Swap the LM's linears for prepacked ones in `weights` format ("float32", "bfloat16", "int8", "w8a8" or
    "int4"), in place. w8a8 and int4 keep the output heads in int8 weights (`int8_linear`; and int4 any matrix the
    kernel's shape rules refuse in weight-only int8). On the native kernels (w8a8, int8, int4) the norms and GELU move into the linears
    (`fuse_into_native_linears`); the integer weights go into one buffer on 2 MB pages (`gather_weights`).

    The activations keep the LM's dtype (`lm.dtype`). Without oneDNN the fp32/bf16 linears stay plain `nn.Linear`s.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    if weights in ("int4", "w8a8"):
        heads = getattr(lm, "heads", None)
        if isinstance(heads, nn.Linear):
            lm.heads = int8_linear(heads.weight)
        n = _swap_linears(lm, int4_linear if weights == "int4" else w8a8_linear)
        log.debug("moved %d norms and GELUs into the native linears", fuse_into_native_linears(lm))
        gather_weights(lm)
    elif weights == "int8":
        n = _swap_linears(lm, int8_linear)
        log.debug("moved %d norms and GELUs into the native linears", fuse_into_native_linears(lm))
        gather_weights(lm)
    elif not onednn_available():
        log.info("oneDNN prepacking is unavailable in this torch build: plain linears")
        return lm
    else:
        dtype = torch.float32 if weights == "float32" else torch.bfloat16
        n = _swap_linears(lm, lambda w: PackedLinear(w, dtype))
    log.debug("prepared %d linears as %s", n, weights)
    return lm


@torch.inference_mode()
def logit_agreement(reference: nn.Module, candidate: nn.Module, tokens: Tensor, cond: Tensor | None = None) -> dict[str, float]:
    """How closely `candidate`'s per-step logits follow `reference`'s, teacher-forced on one token sequence.

    tokens: [B, K, T] codes fed one column per step (both LMs see the same inputs, so errors do not compound
    through sampling); cond: projected text states [B, S, D] for text models. Returns the mean over steps,
    batch rows and codebooks of: the cosine similarity of the logits, KL(p_ref || p_cand) of their softmax in
    nats, and the fraction of steps whose most likely token agrees.
    """
    B, K, T = tokens.shape
    for lm in (reference, candidate):
        lm.setup_caches(B, T)
        if cond is not None:
            lm.set_condition(cond)
    cos = kl = top1 = 0.0
    for t in range(T):
        pos = torch.tensor([t], device=tokens.device)
        step = tokens[:, :, t : t + 1]
        a = reference(reference.embed(step), pos, kv_len=t + 1)[:, :, -1]  # [B, K, V] fp32
        b = candidate(candidate.embed(step), pos, kv_len=t + 1)[:, :, -1]
        cos += torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
        la, lb = a.log_softmax(-1), b.log_softmax(-1)
        kl += (la.exp() * (la - lb)).sum(-1).mean().item()
        top1 += (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return {"cosine": cos / T, "kl": kl / T, "top1": top1 / T}
