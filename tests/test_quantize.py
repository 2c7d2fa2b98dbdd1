"""Reduced precision keeps the logits: bf16, int8 and int4 weights against the fp32 path, teacher-forced per step.

Bounds (benchmarks/RESULTS.md says where they come from): measured on this tiny model, bf16 weights give a mean
cosine of ~0.99997 and KL ~1e-4 nats per token; int8 ~0.9997 and ~7e-4. The bounds leave about 10x room for
other CPUs' rounding; a coarser quantizer (4 bits) already breaks the int8 bound, so they do tell a working
quantizer from a broken one.

w8a8 (int8 weights and int8 activations, one scale per activation row, heads weight-only int8) is held to
int8's bounds: it measures cosine ~0.9995, KL ~1.5e-3, top-1 ~0.92 here (1.6x weight-only int8's KL).

int4 (groups of 32, asymmetric, heads in int8; int8 activations on the native kernel, bf16 on torch's) is a much
coarser format: on this model it measures cosine ~0.97, KL ~0.09 nats, top-1 ~0.61, about 100x int8's KL (its
rounding error is ~13x per-row int8's). Its bounds
leave ~3x room in KL; 3-bit rounding of the same groups breaks them (a test checks that). That int4 cannot meet
int8's bounds is why `--dtype auto` stays int8 on CPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import pytest
import torch

from engine.assemble import build_lm, lm_config, lm_state_from_hf
from engine.devices import resolve_dtype
from engine import native
from engine.quantize import (INT4_GROUP, FbgemmW8A8Linear, Int4Linear, Int8Linear, NativeInt4Linear, NativeW8A8Linear,
                             NativeW8A16Linear, int8_linear,
                             PackedLinear, W8A8Linear, bf16_supported, int4_linear, int4_supported, logit_agreement,
                             pack_int4, quantize_groups, quantize_groups_fp16, quantize_rows, torch_int4_supported,
                             unpack_int4, w8a8_linear, w8a8_supported)
from engine.tiny import tiny_config, tiny_reference_model

BOUNDS = {  # mean cosine >=, mean KL <= (nats), top-1 agreement >=
    "bfloat16": (0.9999, 1e-3, 0.95),
    "int8": (0.999, 5e-3, 0.90),
    "w8a8": (0.999, 5e-3, 0.90),  # int8's guard: what --dtype auto must pass on CPU
    "int4": (0.95, 0.25, 0.45),
}
needs_int4 = pytest.mark.skipif(not int4_supported(), reason="no int4 kernel runs here")
needs_torch_int4 = pytest.mark.skipif(not torch_int4_supported(), reason="this torch build has no CPU int4 kernel")
needs_w8a8 = pytest.mark.skipif(not w8a8_supported(), reason="no fbgemm int8 linear or no VNNI on this CPU")
needs_native = pytest.mark.skipif(not native.supports("w8a8_linear"), reason="the native w8a8 kernel needs AVX-512 VNNI")
needs_native_int4 = pytest.mark.skipif(not native.supports("int4_linear"), reason="the native int4 kernel needs AVX2")
needs_native_w8a16 = pytest.mark.skipif(not native.supports("w8a16_linear"), reason="the native w8a16 kernel needs AVX2")
needs_avx512 = pytest.mark.skipif(not native.supports("w8a8_linear"), reason="no AVX-512 path to compare with on this CPU")
W8A8_KERNELS = [pytest.param(NativeW8A8Linear, marks=needs_native, id="native"),
                pytest.param(FbgemmW8A8Linear, marks=needs_w8a8, id="fbgemm")]
CPU = torch.device("cpu")

NATIVE_KINDS = [pytest.param("w8a8", marks=needs_native), pytest.param("w8a16", marks=needs_native_w8a16),
                pytest.param("int4", marks=needs_native_int4)]


def _native(kind: str, w: torch.Tensor):
    return {"w8a8": NativeW8A8Linear, "w8a16": NativeW8A16Linear, "int4": lambda w: NativeInt4Linear(w, 32)}[kind](w)


@pytest.fixture(scope="module")
def tiny():
    """Decoder state (our names) and config of a tiny model wide enough for rounding to matter (dim 128)."""
    ref = tiny_reference_model(tiny_config(dim=128, layers=2, heads=4), seed=3)
    cfg = lm_config(ref.config.decoder.to_dict(), cross_attention=True)
    state = lm_state_from_hf({k: v for k, v in ref.state_dict().items() if k.startswith("decoder.")}, cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2048, (2, 4, 60), generator=g)
    cond = torch.randn(2, 12, 128, generator=g)
    cond[1] = 0  # the unconditional row, as guidance builds it
    return cfg, state, tokens, cond


def _lm(tiny, dtype):
    cfg, state = tiny[0], tiny[1]
    return build_lm(cfg, dict(state), CPU, dtype)  # build_lm consumes its dict: hand it a copy


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", pytest.param("w8a8", marks=needs_w8a8),
                                   pytest.param("int4", marks=needs_int4)])
def test_reduced_precision_stays_within_bounds(tiny, dtype):
    reference = _lm(tiny, torch.float32)
    candidate = _lm(tiny, resolve_dtype(dtype))
    got = logit_agreement(reference, candidate, tiny[2], tiny[3])
    cos, kl, top1 = BOUNDS[dtype]
    assert got["cosine"] >= cos and got["kl"] <= kl and got["top1"] >= top1, got
    assert got["kl"] > 0, "the candidate computed exactly fp32: the reduced path did not run"


def test_the_int8_bound_catches_a_coarser_quantizer(tiny):
    reference = _lm(tiny, torch.float32)
    coarse = _lm(tiny, torch.float32)
    with torch.no_grad():  # 4-bit per-row rounding, put back into the fp32 model
        for m in coarse.modules():
            if isinstance(m, PackedLinear) or isinstance(m, torch.nn.Linear):
                w = m.weight.to_dense() if m.weight.is_mkldnn else m.weight
                scale = w.abs().amax(1, keepdim=True) / 7
                rounded = (w / scale).round().clamp(-7, 7) * scale
                if isinstance(m, PackedLinear):
                    m.weight = torch.ops.mkldnn._reorder_linear_weight(rounded, 2)
                else:
                    m.weight.copy_(rounded)
    got = logit_agreement(reference, coarse, tiny[2], tiny[3])
    cos, kl, _ = BOUNDS["int8"]
    assert got["cosine"] < cos or got["kl"] > kl, got


def test_int8_holds_int8_weights_and_a_quarter_of_the_bytes(tiny):
    fp32, int8 = _lm(tiny, torch.float32), _lm(tiny, torch.int8)
    kind = type(int8_linear(torch.zeros(64, 64)))  # the native kernel where it runs (AVX2 up), else torch's
    linears = [m for m in int8.modules() if isinstance(m, kind)]
    assert len(linears) == 7 * tiny[0].n_layers + 1  # per layer: wqkv, wo, cross wq/wkv/wo, fc1, fc2; the heads
    assert all((m.packed if kind is NativeW8A16Linear else m.weight).dtype == torch.int8 for m in linears)

    def linear_bytes(lm):
        return sum(b.numel() * b.element_size() for m in lm.modules()
                   if isinstance(m, (Int8Linear, NativeW8A16Linear, PackedLinear)) for b in m.buffers())

    assert linear_bytes(int8) < 0.27 * linear_bytes(fp32)
    assert int8.dtype == torch.int8 and int8.act_dtype == torch.float32


def test_bf16_weights_are_bf16_and_activations_fp32(tiny):
    lm = _lm(tiny, torch.bfloat16)
    assert lm.dtype == torch.bfloat16 and lm.act_dtype == torch.float32  # fp32 residual stream and KV cache
    packed = [m for m in lm.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 7 * tiny[0].n_layers + 1
    if bf16_supported():  # the CPU fast path: bf16 weights prepacked
        assert all(m.weight.dtype == torch.bfloat16 for m in packed)
    else:  # no native bf16 matmul here (oneDNN refuses bf16 weights): the bf16-rounded weights in fp32
        w = torch.randn(96, 64)
        got = PackedLinear(w, torch.bfloat16)
        assert got.weight.dtype == torch.float32
        assert torch.allclose(got(torch.eye(64)).t(), w.bfloat16().float(), atol=1e-6)
        # Negative control: the unrounded weights are further from it than that
        assert not torch.allclose(got(torch.eye(64)).t(), w, atol=1e-6)


def test_quantize_rows_round_trips_within_half_a_step():
    w = torch.randn(64, 32) * torch.linspace(0.01, 3, 64)[:, None]  # rows of very different ranges
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())


def _round_groups_into(lm, bits: int, group: int = INT4_GROUP) -> None:
    """Put `bits`-bit group-wise rounding of every linear weight back into an fp32 model (a coarser quantizer)."""
    levels = 2**bits - 1
    with torch.no_grad():
        for m in lm.modules():
            if isinstance(m, (PackedLinear, torch.nn.Linear)):
                w = m.weight.to_dense() if m.weight.is_mkldnn else m.weight
                N, K = w.shape
                g = w.view(N, K // group, group)
                lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
                scale = (hi - lo) / levels
                rounded = (((g - lo) / scale).round() * scale + lo).view(N, K)
                if isinstance(m, PackedLinear):
                    m.weight = torch.ops.mkldnn._reorder_linear_weight(rounded, 2)
                else:
                    m.weight.copy_(rounded)


def test_the_int4_bound_catches_a_coarser_quantizer(tiny):
    reference = _lm(tiny, torch.float32)
    for bits, passes in ((4, True), (3, False)):  # 4-bit rounding as int4 does it passes; 3-bit does not
        coarse = _lm(tiny, torch.float32)
        _round_groups_into(coarse, bits)
        got = logit_agreement(reference, coarse, tiny[2], tiny[3])
        cos, kl, top1 = BOUNDS["int4"]
        assert (got["cosine"] >= cos and got["kl"] <= kl and got["top1"] >= top1) == passes, (bits, got)


@needs_torch_int4
def test_int4_linear_equals_a_dequantized_reference_matmul():
    w = torch.randn(96, 128) * torch.linspace(0.1, 2, 96)[:, None]
    x = torch.randn(2, 3, 128)
    lin = Int4Linear(w, 32)
    # The reference: the 4-bit codes and bf16-rounded scales/zeros, multiplied out in fp32 by hand.
    q, scale, lo = quantize_groups(w, 32)
    sb, zb = scale.bfloat16().float(), (lo + 8 * scale).bfloat16().float()
    deq = ((q.view(96, 4, 32).float() - 8) * sb[..., None] + zb[..., None]).view(96, 128)
    expected = torch.nn.functional.linear(x.bfloat16().float(), deq)
    got = lin(x)
    assert got.shape == (2, 3, 96) and got.dtype == torch.bfloat16
    tol = 2e-2 * expected.abs().max()
    assert (got.float() - expected).abs().max() <= tol
    assert (deq - w).abs().max() <= (scale.max() / 2) * 1.05  # within half a step (plus the bf16 rounding)
    # Negative control: scales and zeros swapped in the kernel's table lands far outside the tolerance.
    broken = Int4Linear(w, 32)
    broken.scale_zero = broken.scale_zero.flip(-1).contiguous()
    assert (broken(x).float() - expected).abs().max() > 10 * tol


@needs_int4
def test_int4_model_holds_int4_weights_and_int8_heads(tiny):
    fp32, int4 = _lm(tiny, torch.float32), _lm(tiny, torch.int4)
    assert isinstance(int4.heads, type(int8_linear(torch.zeros(64, 64))))
    kind = NativeInt4Linear if native.supports("int4_linear") else Int4Linear
    int4s = [m for m in int4.modules() if isinstance(m, kind)]
    assert len(int4s) == 7 * tiny[0].n_layers  # per layer: wqkv, wo, cross wq/wkv/wo, fc1, fc2

    def linear_bytes(lm, kinds):
        return sum(b.numel() * b.element_size() for m in lm.modules() if isinstance(m, kinds) for b in m.buffers(recurse=False)
                   if b is not getattr(m, "norm_weight", None) and b is not getattr(m, "norm_bias", None))

    # 4 bits a weight plus a 16-bit scale and zero per 32: 5/32 of fp32's bytes.
    assert linear_bytes(int4, kind) < 0.17 * linear_bytes(fp32.layers, PackedLinear)
    assert int4.dtype == torch.int4 and int4.act_dtype == torch.float32


def _int4_reference(lin: NativeInt4Linear, x: torch.Tensor) -> torch.Tensor:
    """What the native int4 op computes, by hand in float64: each row rounded to int8 on its own scale, times the
    4-bit codes with their fp16 scales and offsets."""
    top = x.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    qx = torch.round(x * 127 / top).double()
    return (qx @ lin.dequantized().double().t() * (top.double() / 127)).float()


@needs_native_int4
def test_native_int4_packs_and_unpacks_its_codes_and_scales():
    w = torch.randn(130, 96) * torch.linspace(0.1, 2, 130)[:, None]  # 130: not whole 64-column blocks
    q, scale, lo = quantize_groups_fp16(w, 32)
    got_q, got_scale, got_lo = unpack_int4(pack_int4(q, scale, lo, 32), 32)
    assert torch.equal(got_q[:130], q.float()) and torch.equal(got_scale[:130], scale) and torch.equal(got_lo[:130], lo)
    assert not got_q[130:].any() and not got_scale[130:].any()  # the padding columns are zero
    deq = (lo.repeat_interleave(32, 1) + scale.repeat_interleave(32, 1) * q.float())
    assert (deq - w).abs().max() <= scale.max() / 2 * 1.01  # within half a step (plus the fp16 rounding)


@needs_native_int4
def test_native_int4_linear_equals_an_integer_reference_matmul(isa):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(130, 160, generator=g) * torch.linspace(0.1, 2, 130)[:, None]
    x = torch.randn(2, 5, 160, generator=g) * torch.tensor([1.0, 30.0])[:, None, None]  # rows of different ranges
    x[1, 2] = 0  # an all-zero row: zeros out, not NaN
    lin = NativeInt4Linear(w, 32)
    got = lin(x)
    expected = _int4_reference(lin, x)
    assert got.shape == (2, 5, 130) and got.dtype == torch.float32 and bool((got[1, 2] == 0).all())
    tol = 1e-5 * expected.abs().amax(-1, keepdim=True)  # fp32 sums in another order: rounding only
    assert bool(((got - expected).abs() <= tol).all())
    # Negative control: the two halves of every k-step swapped (columns 0-31 read as 32-63) misses by far.
    broken = NativeInt4Linear(w, 32)
    steps = broken.packed[..., : 8 * 128].view(*broken.packed.shape[:2], 8, 2, 64)
    broken.packed = torch.cat([steps.flip(3).reshape(*broken.packed.shape[:2], -1), broken.packed[..., 8 * 128 :]], -1)
    assert bool(((broken(x) - expected).abs() > 100 * tol).any())


@needs_native_int4
def test_native_int4_row_does_not_depend_on_its_companions(isa):
    g = torch.Generator().manual_seed(4)
    lin = NativeInt4Linear(torch.randn(64, 96, generator=g) * 0.05, 32)
    row = torch.randn(1, 96, generator=g)
    alone = lin(row)
    for companions in (torch.randn(3, 96, generator=g) * 50.0, torch.zeros(2, 96), torch.full((4, 96), float("nan"))):
        out = lin(torch.cat([row, companions]))
        assert torch.equal(out[:1], alone)
    assert bool(out[1:].isnan().all())


@pytest.mark.parametrize("kind", NATIVE_KINDS)
def test_native_linears_take_rows_of_any_leading_shape(kind, isa):
    """The ops take [..., K] (a step's [B, 1, D] without reshapes around them): the same rows give the same
    outputs, bit for bit, whatever the shape they arrive in."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(80, 96, generator=g) * 0.05
    lin = _native(kind, w)
    x = torch.randn(2, 3, 96, generator=g)
    with torch.no_grad():
        flat = lin(x.reshape(6, 96))
        assert lin(x).shape == (2, 3, 80) and torch.equal(lin(x).reshape(6, 80), flat)
        assert torch.equal(lin(x[0, 0]), flat[0])  # one row, no batch dims
        assert torch.equal(lin(x.transpose(0, 1)).transpose(0, 1), lin(x))  # a strided view is read as its rows
        assert lin(x.double()).dtype == torch.float32


@pytest.mark.parametrize("kind", NATIVE_KINDS)
def test_native_linears_apply_a_layer_norm_and_gelu_as_the_separate_ops_would(kind, isa):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 224, generator=g) * 0.05
    x = torch.randn(5, 224, generator=g) * 3 + 1
    norm = torch.nn.LayerNorm(224)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.2, 0.2, generator=g)
    plain, normed, gelued = _native(kind, w), _native(kind, w), _native(kind, w)
    normed.absorb_norm(norm)
    gelued.absorb_gelu()
    with torch.no_grad():
        for fused, separate in ((normed(x), plain(norm(x))), (gelued(x), plain(torch.nn.functional.gelu(x)))):
            # The prepared rows differ from torch's by float rounding, which can move an entry across a rounding
            # boundary now and then: one int8 step of one entry, ~1e-3 of a row's range at most.
            assert (fused - separate).abs().max() <= 2e-3 * separate.abs().max()
        # Negative control: the norm (or GELU) left out misses by far.
        assert (normed(x) - plain(x)).abs().max() > 0.1 * plain(norm(x)).abs().max()
        assert (gelued(x) - plain(x)).abs().max() > 0.1 * plain(x).abs().max()
    with pytest.raises(ValueError, match="LayerNorm over the 224 inputs"):
        plain.absorb_norm(torch.nn.LayerNorm(100))


@needs_native_int4
def test_int4_model_runs_on_the_native_kernel_with_its_norms_and_gelu_inside(tiny, monkeypatch, isa):
    assert native.supports("int4_linear"), native.why_not()
    lm = _lm(tiny, torch.int4)
    assert all(isinstance(getattr(block, name), torch.nn.Identity) for block in lm.layers
               for name in ("norm1", "norm_cross", "norm2", "act"))
    # The fused model follows the unfused one (the same int4 weights, the norms and GELU as separate ops).
    monkeypatch.setattr("engine.quantize.fuse_into_native_linears", lambda lm: 0)
    unfused = _lm(tiny, torch.int4)
    assert isinstance(unfused.layers[0].norm1, torch.nn.LayerNorm)
    agree = logit_agreement(unfused, lm, tiny[2][:, :, :20], tiny[3])
    assert agree["cosine"] > 0.999 and agree["top1"] > 0.9


def test_int4_falls_back_to_torch_where_the_native_kernel_is_unavailable(monkeypatch):
    monkeypatch.setattr(native, "supports", lambda kernel: False)
    w = torch.randn(64, 64)
    assert isinstance(int4_linear(w), Int4Linear if torch_int4_supported() else Int8Linear)
    # A weight the native layout refuses (inputs not whole groups of 4) goes to a kernel that takes it.
    monkeypatch.undo()
    assert not isinstance(int4_linear(torch.randn(64, 30)), NativeInt4Linear)


@pytest.mark.parametrize("kernel", W8A8_KERNELS)
def test_w8a8_linear_equals_an_integer_reference_matmul(kernel):
    # 130 outputs and 126 inputs: neither a whole number of the native kernel's 64-column blocks nor of its 4-column
    # dot products, so the packing's padding is crossed.
    w = torch.randn(130, 126) * torch.linspace(0.1, 2, 130)[:, None]
    x = torch.randn(2, 19, 126) * torch.tensor([1.0, 30.0])[:, None, None]  # rows of very different ranges
    x[1, 2] = 0  # an all-zero row (guidance's unconditional row after cross-attention): zeros out, not NaN
    lin = kernel(w)
    # The reference: each row rounded to int8 on its own scale, the int8 weights, multiplied out in fp32 by hand.
    q, scale = quantize_rows(w)
    top = x.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    qx = torch.round(x * 127 / top)
    expected = torch.nn.functional.linear(qx, q.float()) * (top / 127) * scale
    got = lin(x)
    assert got.shape == (2, 19, 130) and got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert bool((got[1, 2] == 0).all())
    tol = 1e-4 * expected.abs().amax(-1, keepdim=True)  # relative to each row: the rows differ 30x in range
    assert bool(((got - expected).abs() <= tol).all())
    assert torch.allclose(lin.dequantized(), q.float() * scale[:, None], rtol=1e-5, atol=1e-7)
    # Negative control: the activations really are rounded. A row whose one large entry sets its scale loses its
    # small entries, which weight-only int8 (bf16 activations) keeps.
    spiky = torch.randn(1, 126) * 0.01
    spiky[0, 0] = 10.0
    exact = torch.nn.functional.linear(spiky, q.float() * scale[:, None])
    err_w8a8 = (lin(spiky) - exact).abs().max()
    # (weight-only int8 computed by hand: torch's int8 kernel crashes on these uneven shapes)
    err_int8 = (torch.nn.functional.linear(spiky.bfloat16().float(), q.float() * scale[:, None]) - exact).abs().max()
    assert err_w8a8 > 3 * err_int8


@pytest.mark.parametrize("kernel", W8A8_KERNELS)
def test_w8a8_row_does_not_depend_on_its_companions(kernel):
    """Each row is rounded on its own scale, so a batch's rows (guidance's pair, other streams) never change each
    other's results, and a NaN row (an idle batch slot's leftovers) raises nothing and stays in its own row."""
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(64, 96, generator=g) * 0.05
    lin = kernel(weight)
    row = torch.randn(1, 96, generator=g)
    row[0, 3] = -4.0  # its largest magnitude is negative
    loud = torch.randn(3, 96, generator=g) * 50.0
    alone = lin(row)
    for companions in (loud, torch.zeros(2, 96), loud.abs(), torch.full((1, 96), float("nan"))):
        out = lin(torch.cat([row, companions]))
        assert torch.equal(out[:1], alone)
    assert bool(out[1].isnan().all())
    # Negative control: fbgemm's dynamic linear on the same normalized rows picks one range for the whole tensor,
    # so a companion whose range differs changes the row's rounding.
    top = row.abs().amax(-1, keepdim=True)
    companion = loud[:1].abs() / loud[:1].abs().amax()  # in [0, 1]: a different range from the row's [-1, 0.x]
    dynamic, packed = torch.ops.quantized.linear_dynamic, FbgemmW8A8Linear(weight).packed
    together = dynamic(torch.cat([row / top, companion]), packed, False)[:1]
    assert not torch.equal(dynamic(row / top, packed, False), together)


@needs_native_w8a16
def test_w8a16_head_equals_an_integer_reference_and_is_finer_than_bf16_activations(isa):
    """The output heads' kernel: each row rounded to 16 bits on its own scale, times the int8 weights, in exact
    integer sums (carried on in fp32); across the padding of blocks and of 4-input steps."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(130, 126, generator=g) * torch.linspace(0.1, 2, 130)[:, None]
    x = torch.randn(3, 7, 126, generator=g) * torch.tensor([1.0, 30.0, 0.01])[:, None, None]
    x[1, 2] = 0  # an all-zero row: zeros out, not NaN
    lin = NativeW8A16Linear(w)
    q, scale = quantize_rows(w)
    top = x.double().abs().amax(-1, keepdim=True).clamp(min=1e-30)
    qx = torch.round(x.double() * 32767 / top)
    expected = torch.nn.functional.linear(qx, q.double()) * (top / 32767) * scale.double()
    got = lin(x)
    assert got.shape == (3, 7, 130) and got.dtype == torch.float32 and bool((got[1, 2] == 0).all())
    assert bool(((got - expected).abs() <= 1e-5 * expected.abs().amax(-1, keepdim=True)).all())
    assert torch.allclose(lin.dequantized(), q.float() * scale[:, None], rtol=1e-5, atol=1e-7)
    # Finer than the weight-only int8 it replaces (bf16 rows) for rows whose largest entry is up to ~100x their
    # typical one (a LayerNorm's output with an outlier dimension: 20x here), against the same int8 weights in fp64.
    rows = torch.randn(8, 126, generator=g)
    rows[:, 0] = 20.0
    exact = torch.nn.functional.linear(rows.double(), (q.float() * scale[:, None]).double())
    err16 = (lin(rows).double() - exact).abs().max()
    err_bf16 = (torch.nn.functional.linear(rows.bfloat16().double(), (q.float() * scale[:, None]).double()) - exact).abs().max()
    assert err16 < err_bf16 / 2
    # Negative control: the same rows rounded to 8 bits (as w8a8's kernel rounds them) miss by far.
    top8 = rows.double().abs().amax(-1, keepdim=True)
    rows8 = torch.round(rows.double() * 127 / top8) * top8 / 127
    err8 = (torch.nn.functional.linear(rows8, (q.float() * scale[:, None]).double()) - exact).abs().max()
    assert err8 > 10 * err16


@needs_native_w8a16
def test_w8a16_sums_of_the_largest_values_do_not_overflow(isa):
    """Every product at its largest (32767 x 127) with one sign, over 4096 inputs: int32 lanes would wrap within
    one 4-input step's 1,300 steps of sums; the kernel carries them on in fp32 in time."""
    K = 4096
    lin = NativeW8A16Linear(torch.full((64, K), 0.5))  # every weight 127 on a scale of 0.5 / 127
    y = lin(torch.ones(2, K))
    assert torch.allclose(y, torch.full((2, 64), 0.5 * K), rtol=1e-6)
    y = lin(-torch.ones(1, K))
    assert torch.allclose(y, torch.full((1, 64), -0.5 * K), rtol=1e-6)


@needs_native_w8a16
def test_w8a16_row_does_not_depend_on_its_companions(isa):
    """A head's rows (guidance's pair, other streams) never change each other's results; a NaN row stays its own."""
    g = torch.Generator().manual_seed(6)
    lin = NativeW8A16Linear(torch.randn(200, 96, generator=g))
    row = torch.randn(1, 96, generator=g)
    alone = lin(row)
    for companions in (torch.randn(3, 96, generator=g) * 50.0, torch.zeros(2, 96), torch.full((1, 96), float("inf"))):
        out = lin(torch.cat([row, companions]))
        assert torch.equal(out[:1], alone)
    assert bool(out[1].isnan().all())


@needs_avx512
def test_the_avx2_paths_give_what_the_avx512_paths_give():
    """On an AVX-512 CPU, the int4 and w8a16 kernels' AVX2 paths (what CPUs without AVX-512 run; the tests above
    run both) sum the same integers and scale them in the same order: the same outputs, bit for bit."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(200, 256, generator=g)
    x = torch.randn(5, 256, generator=g) * 3
    for lin in (NativeInt4Linear(w, 32), NativeW8A16Linear(w)):
        wide = lin(x)
        with native.avx2_only():
            assert torch.equal(lin(x), wide)


@needs_avx512
def test_the_avx2_switch_runs_other_code():
    """The negative control of the test above: equal outputs there mean something only if `native.avx2_only` runs
    other code. The int8 cache's attention sums its keys in blocks of 8 on AVX2 and of 16 on AVX-512, in another
    order: under the switch its bits differ, and agree within float rounding."""
    from engine.lm import attend, pack_int8_rows

    g = torch.Generator().manual_seed(9)
    q = torch.randn(2, 4, 1, 64, generator=g)
    k, v = pack_int8_rows(torch.randn(2, 4, 100, 64, generator=g)), pack_int8_rows(torch.randn(2, 4, 100, 64, generator=g))
    wide = attend(q, k, v, None)
    with native.avx2_only():
        narrow = attend(q, k, v, None)
    assert not torch.equal(narrow, wide)
    torch.testing.assert_close(narrow, wide, rtol=1e-5, atol=1e-6)


def test_heads_fall_back_to_weight_only_int8_where_the_native_kernel_is_unavailable(monkeypatch):
    monkeypatch.setattr(native, "supports", lambda kernel: False)
    assert isinstance(int8_linear(torch.randn(64, 64)), Int8Linear)


@needs_native
def test_native_kernel_builds_and_is_what_w8a8_runs_on(tiny):
    """On a CPU with AVX-512 VNNI the kernel must build and load (a broken build fails here, not silently slower)."""
    assert native.load() and native.supports("w8a8_linear"), native.why_not()
    lm = _lm(tiny, resolve_dtype("w8a8"))
    assert {m.kernel for m in lm.modules() if isinstance(m, W8A8Linear)} == {"native"}


def test_w8a8_falls_back_to_fbgemm_where_the_native_kernel_is_unavailable(monkeypatch):
    monkeypatch.setattr(native, "supports", lambda kernel: False)
    assert isinstance(w8a8_linear(torch.randn(64, 32)), FbgemmW8A8Linear)


def test_a_native_build_that_fails_says_why(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", (broken,))
    monkeypatch.setattr(native, "CACHE", tmp_path / "cache")
    if not torch.cpu._is_avx2_supported():  # it gives up before building: the reason says so
        assert native._load() == (False, "this CPU lacks AVX2")
        return
    ok, why = native._load()
    assert not ok and why.startswith(f"building {native.build_dir()} failed")


@needs_w8a8
def test_w8a8_model_holds_int8_linears_and_int8_heads(tiny):
    lm = _lm(tiny, resolve_dtype("w8a8"))
    assert isinstance(lm.heads, type(int8_linear(torch.zeros(64, 64))))
    assert len([m for m in lm.modules() if isinstance(m, W8A8Linear)]) == 7 * tiny[0].n_layers
    assert lm.dtype == torch.qint8 and lm.act_dtype == torch.float32
    assert not [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]


@needs_native_int4
def test_native_gelu_follows_torchs_erf_gelu(isa):
    # GELU of the kernel's own, against torch's erf GELU, through an identity weight wide enough to read it back
    # (int4 codes of 0 and 15 on a scale of ~1/15: the identity within 3e-4).
    eye = NativeInt4Linear(torch.eye(64), 32)
    eye.absorb_gelu()
    z = torch.linspace(-6, 6, 64)[None]
    assert torch.allclose(eye(z), torch.nn.functional.gelu(z), atol=2 * 6 / 127)
    # Negative control: without the GELU the same rows miss.
    assert not torch.allclose(NativeInt4Linear(torch.eye(64), 32)(z), torch.nn.functional.gelu(z), atol=2 * 6 / 127)


@pytest.mark.parametrize("dtype", [pytest.param("w8a8", marks=needs_native), pytest.param("int8", marks=needs_native_w8a16)])
def test_integer_models_move_their_norms_and_gelu_into_the_native_linears(tiny, monkeypatch, dtype):
    lm = _lm(tiny, resolve_dtype(dtype))
    for block in lm.layers:
        assert all(isinstance(getattr(block, name), torch.nn.Identity) for name in ("norm1", "norm_cross", "norm2", "act"))
        assert block.attn.wqkv.norm_weight is not None and block.cross.wq.norm_weight is not None
        assert block.fc1.norm_weight is not None and block.fc2.gelu
    # The fused model follows the unfused one (the same int8 weights, the norms and GELU as separate ops).
    monkeypatch.setattr("engine.quantize.fuse_into_native_linears", lambda lm: 0)
    unfused = _lm(tiny, resolve_dtype(dtype))
    assert isinstance(unfused.layers[0].norm1, torch.nn.LayerNorm) and not unfused.layers[0].fc2.gelu
    agree = logit_agreement(unfused, lm, tiny[2][:, :, :20], tiny[3])
    assert agree["cosine"] > 0.9999 and agree["top1"] > 0.97


needs_amx = pytest.mark.skipif(not (torch.cpu._is_avx512_bf16_supported() and torch.cpu._is_amx_tile_supported()),
                               reason="the wide path needs AVX512_BF16 and AMX tiles")


@needs_native
@needs_amx
@pytest.mark.parametrize("kind", ["w8a8", "int4"])
def test_many_rows_go_wide_on_the_exactly_widened_weight(kind, monkeypatch):
    """A prefill's many rows: the packed weight widened to bf16 (exactly its dequantized values, rounded), the norm
    as a torch op, a bf16 matmul; a few rows stay on the integer kernel."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(130, 224, generator=g) * 0.05  # 130: not whole 64-column blocks
    norm = torch.nn.LayerNorm(224)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.2, 0.2, generator=g)
    lin = NativeW8A8Linear(w) if kind == "w8a8" else NativeInt4Linear(w, 32)
    lin.absorb_norm(norm)
    assert torch.equal(lin.widened().t(), lin.dequantized().bfloat16())
    x = torch.randn(300, 224, generator=g) * 3 + 1
    with torch.no_grad():
        expected = torch.nn.functional.linear(norm(x).bfloat16().float(), lin.dequantized().bfloat16().float())
        wide = lin(x)
        assert wide.shape == (300, 130) and wide.dtype == torch.float32
        assert (wide - expected).abs().max() <= 1e-2 * expected.abs().max()
        # The same rows on the integer kernel: other rounding (int8 rows), the same result within it.
        monkeypatch.setattr("engine.quantize.WIDE_ROWS", 10**9)
        narrow = lin(x)
        assert not torch.equal(narrow, wide) and (narrow - wide).abs().max() <= 3e-2 * expected.abs().max()
        # Negative control: the norm left out of the wide path misses by far.
        monkeypatch.setattr("engine.quantize.WIDE_ROWS", 256)
        lin.norm_weight = lin.norm_bias = None
        assert (lin(x) - expected).abs().max() > 0.1 * expected.abs().max()
