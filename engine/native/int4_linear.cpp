// 4-bit weights x int8 activations for the decode step's matmuls: a few rows ([M, K], M = 2 per guided stream)
// against [N, K] weights, where the cost is streaming the weights from memory once per step; half the bytes of
// int8 weights, so twice the matrices per second from the same memory.
//
// Weights: asymmetric groups of G input columns, w = lo + s q with q in 0..15 and one fp16 (s, lo) pair per group
// and column. Activations: rounded per row as the w8a8 kernel does (quantize_row.h), kept signed. VNNI multiplies
// the unsigned nibbles by the signed activations in int32, and each group's sum becomes fp32 once:
//     y = row_scale * sum_g (s * sum_{k in g} q a + lo * sum_{k in g} a).
//
// Layout: [N/64][K/G][G/4 k-steps of 128 bytes][64 fp16 s][64 fp16 lo]. A k-step holds 64 columns x 4 inputs in
// two 64-byte loads; the low nibbles of the first are columns 0-15, its high nibbles 16-31, the second's 32-47 and
// 48-63 (each 32-bit lane = one column's 4 inputs, as vpdpbusd takes them). The group's scales follow its nibbles,
// so a block is one forward stream of memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "quantize_row.h"

namespace {

using musicgen_bridge::kBlock;
using musicgen_bridge::kMinBytes;
using musicgen_bridge::quantize_row;
using musicgen_bridge::RowPrep;

constexpr int64_t kStepBytes = 128;  // one k-step of a block: 64 columns x 4 inputs x 4 bits
constexpr int64_t kScaleBytes = 256;  // a group's 64 fp16 scales and 64 fp16 offsets
constexpr int64_t kPrefetch = 16384;  // bytes ahead of the loads, into L2, as in the w8a8 kernel


// R rows (R <= 4) against one block of `groups` groups of G inputs. a: R rows of Kp int8; asum: R rows of
// `groups` int32 group sums of a; y: R rows of N outputs, columns n0.. written.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_dot(const uint8_t* w, const int8_t* a, int64_t Kp,
                                                                       int64_t G, const int32_t* asum, int64_t groups,
                                                                       float* y, int64_t N, int64_t n0,
                                                                       const float* rscale) {
  const int64_t steps = G / 4, group_bytes = steps * kStepBytes + kScaleBytes;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 f[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) f[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* p = w + g * group_bytes;
    __m512i acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t t = 0; t < steps; ++t) {
      const uint8_t* s = p + t * kStepBytes;
      _mm_prefetch(reinterpret_cast<const char*>(s) + kPrefetch, _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(s) + kPrefetch + 64, _MM_HINT_T1);
      const __m512i lo_half = _mm512_loadu_si512(s), hi_half = _mm512_loadu_si512(s + 64);
      // High nibbles stay in place (16 q): no shift, the 1/16 goes into their scales below.
      const __m512i wv[4] = {_mm512_and_si512(lo_half, low), _mm512_andnot_si512(low, lo_half),
                             _mm512_and_si512(hi_half, low), _mm512_andnot_si512(low, hi_half)};
      for (int r = 0; r < R; ++r) {
        int32_t four;
        std::memcpy(&four, a + r * Kp + g * G + 4 * t, 4);
        const __m512i xv = _mm512_set1_epi32(four);
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], wv[j], xv);  // unsigned q x signed a
      }
    }
    const uint8_t* sc = p + steps * kStepBytes;
    __m512 scale[4], offset[4];
    for (int j = 0; j < 4; ++j) {
      scale[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 32 * j)));
      if (j & 1) scale[j] = _mm512_mul_ps(scale[j], _mm512_set1_ps(0.0625f));  // exact: a power of two
      offset[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 128 + 32 * j)));
    }
    for (int r = 0; r < R; ++r) {
      const __m512 sum = _mm512_set1_ps(static_cast<float>(asum[r * groups + g]));
      for (int j = 0; j < 4; ++j)
        f[r][j] = _mm512_fmadd_ps(offset[j], sum, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), scale[j], f[r][j]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= N) break;
      const int64_t left = N - n;
      const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
      _mm512_mask_storeu_ps(y + r * N + n, mask, _mm512_mul_ps(f[r][j], _mm512_set1_ps(rscale[r])));
    }
}

// block_dot with AVX2 alone (CPUs without AVX-512): the same sums, so the same outputs. Unsigned nibbles times
// signed activations in byte pairs (vpmaddubsw): a pair is at most 2 x 15 x 127, so 8 k-steps of them stay within
// int16 and nothing saturates (full-range uint8 weights would); then int16 pairs to int32 (vpmaddwd by ones).
// Each 32-byte load holds 8 columns' 4 inputs in its low nibbles and 8 more in its high ones. Two rows' 64 columns
// take all 16 registers, and the compiler keeps some in L1, as in block_dot16_avx2.
template <int R>
__attribute__((target("avx2,fma,f16c"))) void block_dot_avx2(const uint8_t* w, const int8_t* a, int64_t Kp, int64_t G,
                                                        const int32_t* asum, int64_t groups, float* y, int64_t N,
                                                        int64_t n0, const float* rscale) {
  constexpr int64_t kChunk = 8;  // k-steps whose pair sums int16 holds
  const int64_t steps = G / 4, group_bytes = steps * kStepBytes + kScaleBytes;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  alignas(32) float f[R][kBlock] = {};
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* p = w + g * group_bytes;
    alignas(32) int32_t acc[R][kBlock] = {};
    for (int64_t t0 = 0; t0 < steps; t0 += kChunk) {
      __m256i part[R][8];  // part[r][c]: columns 8c..8c+7, each in two int16 lanes
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < 8; ++c) part[r][c] = _mm256_setzero_si256();
      for (int64_t t = t0; t < std::min(steps, t0 + kChunk); ++t) {
        const uint8_t* s = p + t * kStepBytes;
        _mm_prefetch(reinterpret_cast<const char*>(s) + kPrefetch, _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(s) + kPrefetch + 64, _MM_HINT_T1);
        __m256i xv[R];
        for (int r = 0; r < R; ++r) {
          int32_t four;
          std::memcpy(&four, a + r * Kp + g * G + 4 * t, 4);
          xv[r] = _mm256_set1_epi32(four);
        }
        for (int i = 0; i < 4; ++i) {  // bytes 32i..: low nibbles columns 8c.., high nibbles 8(c + 2)..
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32 * i));
          const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
          const int c = (i / 2) * 4 + i % 2;
          for (int r = 0; r < R; ++r) {
            part[r][c] = _mm256_add_epi16(part[r][c], _mm256_maddubs_epi16(lo, xv[r]));
            part[r][c + 2] = _mm256_add_epi16(part[r][c + 2], _mm256_maddubs_epi16(hi, xv[r]));
          }
        }
      }
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < 8; ++c) {
          __m256i* sum = reinterpret_cast<__m256i*>(acc[r] + 8 * c);
          _mm256_store_si256(sum, _mm256_add_epi32(_mm256_load_si256(sum), _mm256_madd_epi16(part[r][c], ones)));
        }
    }
    const uint8_t* sc = p + steps * kStepBytes;
    for (int c = 0; c < 8; ++c) {
      const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 16 * c)));
      const __m256 offset = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 128 + 16 * c)));
      for (int r = 0; r < R; ++r) {
        const __m256 q = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(acc[r] + 8 * c)));
        const __m256 sum = _mm256_set1_ps(static_cast<float>(asum[r * groups + g]));
        _mm256_store_ps(f[r] + 8 * c, _mm256_fmadd_ps(offset, sum, _mm256_fmadd_ps(q, scale, _mm256_load_ps(f[r] + 8 * c))));
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < kBlock && n0 + c < N; ++c) y[r * N + n0 + c] = f[r][c] * rscale[r];
}

void block_rows(bool wide, int64_t R, const uint8_t* w, const int8_t* a, int64_t Kp, int64_t G, const int32_t* asum,
                int64_t groups, float* y, int64_t N, int64_t n0, const float* rscale) {
  if (!wide) {  // AVX2: two rows at a time (the registers hold no more)
    for (int64_t r = 0; r < R; r += 2) {
      if (R - r >= 2) block_dot_avx2<2>(w, a + r * Kp, Kp, G, asum + r * groups, groups, y + r * N, N, n0, rscale + r);
      else block_dot_avx2<1>(w, a + r * Kp, Kp, G, asum + r * groups, groups, y + r * N, N, n0, rscale + r);
    }
    return;
  }
  switch (R) {
    case 1: return block_dot<1>(w, a, Kp, G, asum, groups, y, N, n0, rscale);
    case 2: return block_dot<2>(w, a, Kp, G, asum, groups, y, N, n0, rscale);
    case 3: return block_dot<3>(w, a, Kp, G, asum, groups, y, N, n0, rscale);
    default: return block_dot<4>(w, a, Kp, G, asum, groups, y, N, n0, rscale);
  }
}

// The sums of a row's int8 values over each group of G (the offsets' term, lo * sum a): one value at a time, for
// groups the vector loops below do not tile.
void group_sums_plain(const int8_t* a, int64_t groups, int64_t G, int32_t* out) {
  for (int64_t g = 0; g < groups; ++g) {
    int32_t s = 0;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) s += a[k];
    out[g] = s;
  }
}

__attribute__((target("avx512f,avx512bw"))) void group_sums(const int8_t* a, int64_t groups, int64_t G, int32_t* out) {
  if (G % 32 != 0) return group_sums_plain(a, groups, G, out);
  const __m512i ones = _mm512_set1_epi16(1);
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k = g * G; k < (g + 1) * G; k += 32)
      acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                                        reinterpret_cast<const __m256i*>(a + k))), ones));
    out[g] = _mm512_reduce_add_epi32(acc);
  }
}

// group_sums with AVX2 alone.
__attribute__((target("avx2,fma"))) void group_sums_avx2(const int8_t* a, int64_t groups, int64_t G, int32_t* out) {
  if (G % 16 != 0) return group_sums_plain(a, groups, G, out);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc = _mm256_setzero_si256();
    for (int64_t k = g * G; k < (g + 1) * G; k += 16)
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(
                                                        reinterpret_cast<const __m128i*>(a + k))), ones));
    alignas(32) int32_t l[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(l), acc);
    out[g] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  }
}

// One group of one block into its 64 columns of the [K, N] bf16 transpose yt, rows k0.. (see int4_widen).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void widen_group(const uint8_t* p, int64_t steps, uint16_t* yt,
                                                                           int64_t N, int64_t k0) {
  __m512 scale[4], offset[4];
  for (int j = 0; j < 4; ++j) {
    scale[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + steps * kStepBytes + 32 * j)));
    offset[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + steps * kStepBytes + 128 + 32 * j)));
  }
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t t = 0; t < steps; ++t) {
    const __m512i lo_half = _mm512_loadu_si512(p + t * kStepBytes), hi_half = _mm512_loadu_si512(p + t * kStepBytes + 64);
    const __m512i q[4] = {_mm512_and_si512(lo_half, low), _mm512_and_si512(_mm512_srli_epi16(lo_half, 4), low),
                          _mm512_and_si512(hi_half, low), _mm512_and_si512(_mm512_srli_epi16(hi_half, 4), low)};
    for (int j = 0; j < 4; ++j) {  // columns 16j..16j+15, inputs 4t..4t+3
      alignas(64) uint8_t r[64];
      _mm512_store_si512(r, musicgen_bridge::columns_to_rows(q[j]));
      for (int i = 0; i < 4; ++i) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(r + 16 * i)));
        musicgen_bridge::store_row16(v, scale[j], offset[j], yt + (k0 + 4 * t + i) * N + 16 * j);
      }
    }
  }
}

}  // namespace


// x [..., K] fp32 times the packed weight's transpose (engine.quantize.pack_int4's layout, `group` inputs per
// group): [..., N] fp32. With norm_weight and norm_bias, the rows are layer-normed first (eps); with gelu, GELU'd first.
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, int64_t N, int64_t group,
                       const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                       double eps, bool gelu) {
  const bool wide = musicgen_bridge::use_vnni512();
  TORCH_CHECK(wide || musicgen_bridge::avx2(), "int4_linear needs a CPU with AVX2, FMA and F16C");
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat, "int4_linear takes fp32 [..., K] rows");
  TORCH_CHECK(group > 0 && group % 4 == 0, "int4_linear: groups of a multiple of 4 inputs, got ", group);
  const int64_t K = x.size(-1), M = K ? x.numel() / K : 0, groups = K / group;
  TORCH_CHECK(K % group == 0, "int4_linear: ", K, " inputs are not whole groups of ", group);
  const int64_t group_bytes = group / 4 * kStepBytes + kScaleBytes;
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kByte && packed.size(1) == groups &&
              packed.size(2) == group_bytes && packed.is_contiguous(),
              "int4_linear takes a weight packed by pack_int4 for ", K, " inputs in groups of ", group);
  const int64_t blocks = packed.size(0);
  TORCH_CHECK(N > (blocks - 1) * kBlock && N <= blocks * kBlock, "int4_linear: ", N, " outputs from ", blocks, " blocks");
  at::Tensor nw, nb;
  const RowPrep prep = musicgen_bridge::row_prep(norm_weight, norm_bias, eps, gelu, K, "int4_linear", nw, nb);
  const at::Tensor rows = x.contiguous();
  musicgen_bridge::RowScratch& scratch = musicgen_bridge::row_scratch(M, K, K, M * groups);
  const float* xp = rows.data_ptr<float>();
  int8_t* qp = reinterpret_cast<int8_t*>(scratch.rows.data());
  int32_t* sp = scratch.sums.data();
  for (int64_t m = 0; m < M; ++m) {
    if (wide) {
      scratch.scales[m] = quantize_row(xp + m * K, K, K, prep, 0, scratch.tmp.data(), scratch.rows.data() + m * K);
      group_sums(qp + m * K, groups, group, sp + m * groups);
    } else {
      scratch.scales[m] = musicgen_bridge::quantize_row_avx2(xp + m * K, K, K, prep, 0, scratch.tmp.data(),
                                                             scratch.rows.data() + m * K);
      group_sums_avx2(qp + m * K, groups, group, sp + m * groups);
    }
  }
  at::Tensor y = at::empty(musicgen_bridge::out_shape(x, N), at::kFloat);
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float* rs = scratch.scales.data();
  float* yp = y.data_ptr<float>();
  const int64_t block_bytes = groups * group_bytes;
  // As the w8a8 kernel: blocks split across the threads, at least kMinBytes of weights each.
  const int64_t grain = std::max<int64_t>(1, kMinBytes / block_bytes);
  musicgen_bridge::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m = 0; m < M; m += 4)
        block_rows(wide, std::min<int64_t>(4, M - m), w + b * block_bytes, qp + m * K, K, group, sp + m * groups, groups,
                   yp + m * N, N, b * kBlock, rs + m);
  });
  return y;
}

// The packed weight's transpose as bf16 [K, N] (lo + s q rounded to nearest even; N whole blocks, the padding
// columns zero): for many rows at once (a prefill), where a bf16 matmul on the CPU's matrix units (AMX) beats this
// kernel's dot products. The caller slices the padding off.
at::Tensor int4_widen(const at::Tensor& packed, int64_t group) {
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kByte && packed.is_contiguous() && group > 0 && group % 4 == 0 &&
              packed.size(2) == group / 4 * kStepBytes + kScaleBytes, "int4_widen takes a weight packed by pack_int4");
  TORCH_CHECK(musicgen_bridge::widen_supported(), "int4_widen needs a CPU with AVX512_BF16");
  const int64_t blocks = packed.size(0), groups = packed.size(1), K = groups * group, N = blocks * kBlock, steps = group / 4;
  const int64_t group_bytes = steps * kStepBytes + kScaleBytes;
  at::Tensor out = at::empty({K, N}, at::kBFloat16);
  const uint8_t* src = packed.data_ptr<uint8_t>();
  auto* yt = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  musicgen_bridge::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t g = 0; g < groups; ++g)
        widen_group(src + (b * groups + g) * group_bytes, steps, yt + b * kBlock, N, g * group);
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(musicgen_bridge, m) {
  m.def("int4_linear(Tensor x, Tensor packed, int n, int group, Tensor? norm_weight=None, Tensor? norm_bias=None, "
        "float eps=1e-5, bool gelu=False) -> Tensor");
  m.def("int4_widen(Tensor packed, int group) -> Tensor");
}

TORCH_LIBRARY_IMPL(musicgen_bridge, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int4_widen", &int4_widen);
}
