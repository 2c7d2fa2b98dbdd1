// A decode step's activation row, prepared (LayerNorm, GELU) and rounded to 8 bits per value with one scale per
// row: what both integer kernels (w8a8_linear.cpp, int4_linear.cpp) multiply. Compiled per function (target
// attributes); the callers check the CPU first.
#pragma once

#include <ATen/ATen.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vec_math.h"

namespace musicgen_bridge {

constexpr int64_t kBlock = 64;  // output columns per block of the integer kernels' packed weights
constexpr int64_t kMinBytes = 64 * 1024;  // weights per thread at least (see their parallel_for)

// The integer kernels' instructions: AVX-512 with VNNI dot products.
inline bool vnni512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
  }();
  return has;
}

// The AVX-512 paths where the CPU has them, unless the AVX2 ones are asked for (the avx2_only op: tests compare
// the two on one machine).
inline std::atomic<bool>& avx2_only() {
  static std::atomic<bool> on{false};
  return on;
}

inline bool use_vnni512() { return vnni512() && !avx2_only().load(std::memory_order_relaxed); }

// What the kernels need on CPUs without AVX-512 (most laptops): AVX2 with FMA and F16C (every AVX2 CPU has both).
inline bool avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return has;
}

// The widening ops (a prefill's weights as bf16): AVX-512 with bf16 conversion.
inline bool widen_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
}

// 16 columns x 4 inputs of bytes (each 32-bit lane one column's 4 inputs, as the packed layouts hold them) as the
// inputs' rows: 4 x 16 bytes, input i's 16 columns at bytes 16i..16i+15. Signedness is the caller's.
__attribute__((target("avx512f,avx512bw"))) inline __m512i columns_to_rows(__m512i v) {
  // Within each 128-bit lane (4 columns): [c0 i0..i3, c1 ...] -> [i0: c0..c3, i1: c0..c3, ...]
  const __m512i in_lane = _mm512_set4_epi32(0x0F0B0703, 0x0E0A0602, 0x0D090501, 0x0C080400);
  const __m512i grouped = _mm512_shuffle_epi8(v, in_lane);
  // Across the 4 lanes: input i's 4-byte pieces (one per lane) together.
  const __m512i across = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_epi32(across, grouped);
}

// Input i's 16 values (q, as int32 lanes) times the 16 columns' scales plus offsets, rounded to bf16, stored at y.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void store_row16(__m512i q, __m512 scale, __m512 offset,
                                                                                 uint16_t* y) {
  const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), scale, offset);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), (__m256i)_mm512_cvtneps_pbh(v));
}

// How a row is prepared before it is rounded: optionally a LayerNorm (the one in front of this linear in the model)
// and GELU (the one between fc1 and fc2), so those need no ops, and no passes over memory, of their own.
struct RowPrep {
  const float* norm_weight = nullptr;  // [K] with norm_bias, or null: no norm
  const float* norm_bias = nullptr;
  float eps = 0.f;
  bool gelu = false;
};

// The row as `prep` prepares it: `row` itself when there is nothing to do, else tmp (K floats) holding it.
__attribute__((target("avx512f,avx512bw"))) inline const float* prepare_row(const float* row, int64_t K,
                                                                            const RowPrep& prep, float* tmp) {
  const auto mask_of = [&](int64_t k) {
    return K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
  };
  const float* y = row;
  if (prep.norm_weight || prep.gelu) {
    float mean = 0.f, rstd = 1.f;
    if (prep.norm_weight) {  // two passes in fp32, as torch's CPU layer_norm
      __m512 sum = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 16) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask_of(k), row + k));
      mean = _mm512_reduce_add_ps(sum) / static_cast<float>(K);
      __m512 sq = _mm512_setzero_ps();
      const __m512 mv = _mm512_set1_ps(mean);
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 m = mask_of(k);
        const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, row + k), mv);
        sq = _mm512_fmadd_ps(d, d, sq);
      }
      rstd = 1.f / std::sqrt(_mm512_reduce_add_ps(sq) / static_cast<float>(K) + prep.eps);
    }
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = mask_of(k);
      __m512 v = _mm512_maskz_loadu_ps(m, row + k);
      if (prep.norm_weight)
        v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(mean)), _mm512_set1_ps(rstd)),
                            _mm512_maskz_loadu_ps(m, prep.norm_weight + k), _mm512_maskz_loadu_ps(m, prep.norm_bias + k));
      if (prep.gelu) v = gelu(v);
      _mm512_mask_storeu_ps(tmp + k, m, v);
    }
    y = tmp;
  }
  return y;
}

// One row as round(127 y / max|y|) + offset into out ([Kp] bytes, padding = offset), y the prepared row; returns
// the row's scale max|y| / 127, NaN for a row with a NaN or infinity (its outputs are NaN, the other rows
// untouched). offset 128 gives uint8 (the w8a8 kernel's unsigned operand), 0 gives int8. tmp: K floats of scratch.
__attribute__((target("avx512f,avx512bw"))) inline float quantize_row(const float* row, int64_t K, int64_t Kp,
                                                                      const RowPrep& prep, int offset, float* tmp,
                                                                      uint8_t* out) {
  const auto mask_of = [&](int64_t k) {
    return K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
  };
  const float* y = prepare_row(row, K, prep, tmp);
  __m512 top = _mm512_setzero_ps();
  __mmask16 bad = 0;
  const __m512 huge = _mm512_set1_ps(3.4028235e38f);
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask_of(k), y + k));
    bad |= _mm512_cmp_ps_mask(a, huge, _CMP_NLE_UQ);  // above the largest float, or NaN
    top = _mm512_max_ps(top, a);
  }
  std::memset(out, offset, Kp);
  if (bad) return NAN;
  const float largest = std::max(_mm512_reduce_max_ps(top), 1e-30f);  // an all-zero row gives zeros, not NaN
  const __m512 inv = _mm512_set1_ps(127.f / largest);
  const __m512i shift = _mm512_set1_epi32(offset);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = mask_of(k);
    // rounded to nearest, ties to even (the default rounding mode), as torch.round; stored as its low byte
    const __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + k), inv)), shift);
    _mm512_mask_cvtepi32_storeu_epi8(out + k, m, v);
  }
  return largest / 127.f;
}

// One row, prepared as `prep` says (tmp: K floats of scratch, unused without a norm or GELU), as 16-bit integers,
// round(32767 x / max|x|) (ties to even) into out ([Kp], padding 0); returns the row's scale max|x| / 32767: 0 for
// an all-zero row (its values 0), NaN for a row with a NaN or infinity. Far finer than the 8 bits of quantize_row,
// for where the rounding is least diluted (the int8 format, the output heads, folded cross-attention).
__attribute__((target("avx512f,avx512bw"))) inline float quantize_row16(const float* x, int64_t K, int64_t Kp,
                                                                        const RowPrep& prep, float* tmp, int16_t* out) {
  const auto mask_of = [&](int64_t k) {
    return K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
  };
  const float* row = prepare_row(x, K, prep, tmp);
  __m512 top16 = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask_of(k), row + k));
    bad |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(3.4028235e38f), _CMP_NLE_UQ);  // above the largest float, or NaN
    top16 = _mm512_max_ps(top16, a);
  }
  const float top = _mm512_reduce_max_ps(top16);
  const __m512 inv = _mm512_set1_ps(top > 0.f && !bad ? 32767.f / top : 0.f);
  std::memset(out, 0, Kp * sizeof(int16_t));
  for (int64_t k = 0; k < K; k += 16) {  // the default rounding (to nearest, ties to even), as std::nearbyint
    const __mmask16 m = mask_of(k);
    _mm512_mask_cvtsepi32_storeu_epi16(out + k, m, _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + k), inv)));
  }
  return bad ? NAN : top / 32767.f;
}

// AVX2 helpers (lambdas would not inherit a function's target): the lanes of k..k+7 below K, those values (0
// past K), and the sum of 8 lanes.
__attribute__((target("avx2,fma"), always_inline)) inline __m256i lanes8(int64_t K, int64_t k) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(8, K - k))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

__attribute__((target("avx2,fma"), always_inline)) inline __m256 load8(const float* x, int64_t K, int64_t k) {
  return _mm256_maskload_ps(x + k, lanes8(K, k));
}

__attribute__((target("avx2,fma"), always_inline)) inline float sum8(__m256 v) {
  alignas(32) float l[8];
  _mm256_store_ps(l, v);
  return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

// prepare_row with AVX2 alone (the norm's sums in another order, so a value on a rounding boundary may land one
// step apart once rounded).
__attribute__((target("avx2,fma"))) inline const float* prepare_row_avx2(const float* row, int64_t K,
                                                                        const RowPrep& prep, float* tmp) {
  const float* y = row;
  if (prep.norm_weight || prep.gelu) {
    float mean = 0.f, rstd = 1.f;
    if (prep.norm_weight) {  // two passes in fp32, as torch's CPU layer_norm
      __m256 sum = _mm256_setzero_ps();
      for (int64_t k = 0; k < K; k += 8) sum = _mm256_add_ps(sum, load8(row, K, k));
      mean = sum8(sum) / static_cast<float>(K);
      __m256 sq = _mm256_setzero_ps();
      for (int64_t k = 0; k < K; k += 8) {
        const __m256 d = _mm256_and_ps(_mm256_sub_ps(load8(row, K, k), _mm256_set1_ps(mean)),
                                       _mm256_castsi256_ps(lanes8(K, k)));
        sq = _mm256_fmadd_ps(d, d, sq);
      }
      rstd = 1.f / std::sqrt(sum8(sq) / static_cast<float>(K) + prep.eps);
    }
    for (int64_t k = 0; k < K; k += 8) {
      __m256 v = load8(row, K, k);
      if (prep.norm_weight)
        v = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(v, _mm256_set1_ps(mean)), _mm256_set1_ps(rstd)),
                            load8(prep.norm_weight, K, k), load8(prep.norm_bias, K, k));
      if (prep.gelu) v = gelu8(v);
      _mm256_maskstore_ps(tmp + k, lanes8(K, k), v);
    }
    y = tmp;
  }
  return y;
}

// quantize_row with AVX2 alone: the same rounding.
__attribute__((target("avx2,fma"))) inline float quantize_row_avx2(const float* row, int64_t K, int64_t Kp,
                                                                   const RowPrep& prep, int offset, float* tmp,
                                                                   uint8_t* out) {
  const float* y = prepare_row_avx2(row, K, prep, tmp);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 top8 = _mm256_setzero_ps(), bad8 = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    const __m256 a = _mm256_and_ps(load8(y, K, k), magnitude);
    bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(a, _mm256_set1_ps(3.4028235e38f), _CMP_NLE_UQ));  // huge, or NaN
    top8 = _mm256_max_ps(top8, a);
  }
  std::memset(out, offset, Kp);
  if (_mm256_movemask_ps(bad8)) return NAN;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, top8);
  const float largest = std::max(*std::max_element(lanes, lanes + 8), 1e-30f);  // all zero: zeros, not NaN
  const __m256 inv = _mm256_set1_ps(127.f / largest);
  // each 32-bit lane's low byte to the front of its 128 bits, then the two halves' 4 bytes together
  const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                             0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i together = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  for (int64_t k = 0; k < K; k += 8) {  // to nearest, ties to even, as torch.round; stored as its low byte
    const __m256i v = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(load8(y, K, k), inv)), _mm256_set1_epi32(offset));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, low_bytes), together);
    if (K - k >= 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + k), _mm256_castsi256_si128(bytes));
    } else {  // the last few: the row's padding (offset) stays
      alignas(16) uint8_t last[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(last), _mm256_castsi256_si128(bytes));
      std::memcpy(out + k, last, K - k);
    }
  }
  return largest / 127.f;
}

// quantize_row16 with AVX2 alone: the same values (the same rounding, the same saturation to int16).
__attribute__((target("avx2,fma"))) inline float quantize_row16_avx2(const float* x, int64_t K, int64_t Kp,
                                                                     const RowPrep& prep, float* tmp, int16_t* out) {
  const float* row = prepare_row_avx2(x, K, prep, tmp);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 huge = _mm256_set1_ps(3.4028235e38f);
  __m256 top8 = _mm256_setzero_ps(), bad8 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(row + k), magnitude);
    bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(a, huge, _CMP_NLE_UQ));  // above the largest float, or NaN
    top8 = _mm256_max_ps(top8, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, top8);
  float top = 0.f;
  for (float v : lanes) top = std::max(top, v);
  bool bad = _mm256_movemask_ps(bad8) != 0;
  for (int64_t t = k; t < K; ++t) {
    const float a = std::fabs(row[t]);
    bad |= !(a <= 3.4028235e38f);
    top = std::max(top, a);
  }
  const float inv = top > 0.f && !bad ? 32767.f / top : 0.f;
  std::memset(out, 0, Kp * sizeof(int16_t));
  const __m256 iv = _mm256_set1_ps(inv);
  for (k = 0; k + 16 <= K; k += 16) {  // the default rounding (to nearest, ties to even), saturated to int16
    const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k), iv));
    const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k + 8), iv));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);  // packs works per 128 bits
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), packed);
  }
  for (; k < K; ++k)
    out[k] = static_cast<int16_t>(std::clamp(std::nearbyint(row[k] * inv), -32768.f, 32767.f));
  return bad ? NAN : top / 32767.f;
}

// A linear's output shape: x's [..., K] with N in place of K (the op takes the rows of any leading shape, so the
// traced step needs no reshapes around it).
inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

// A call's rounded rows and their scratch, kept per calling thread and reused: allocating them afresh was a
// measurable share of a decode step's fixed costs (144 calls a step). Valid until the thread's next call.
struct RowScratch {
  std::vector<uint8_t> rows;  // M rounded rows
  std::vector<float> scales;  // M row scales
  std::vector<float> tmp;  // one prepared row (quantize_row's scratch)
  std::vector<int32_t> sums;  // per-row group sums (the int4 kernel)
};

inline RowScratch& row_scratch(int64_t M, int64_t Kp, int64_t K, int64_t sums) {
  thread_local RowScratch s;
  if (static_cast<int64_t>(s.rows.size()) < M * Kp) s.rows.resize(M * Kp);
  if (static_cast<int64_t>(s.scales.size()) < M) s.scales.resize(M);
  if (static_cast<int64_t>(s.tmp.size()) < K) s.tmp.resize(K);
  if (static_cast<int64_t>(s.sums.size()) < sums) s.sums.resize(sums);
  return s;
}

// An op's optional LayerNorm and GELU arguments as a RowPrep for rows of K values; nw and nb keep the contiguous
// copies the RowPrep points into.
inline RowPrep row_prep(const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                        double eps, bool gelu, int64_t K, const char* op, at::Tensor& nw, at::Tensor& nb) {
  TORCH_CHECK(norm_weight.has_value() == norm_bias.has_value(), op, ": a norm needs its weight and its bias");
  RowPrep prep;
  if (norm_weight.has_value()) {
    nw = norm_weight->contiguous();
    nb = norm_bias->contiguous();
    TORCH_CHECK(nw.scalar_type() == at::kFloat && nb.scalar_type() == at::kFloat && nw.numel() == K && nb.numel() == K,
                op, ": the norm's weight and bias are fp32 [", K, "]");
    prep.norm_weight = nw.data_ptr<float>();
    prep.norm_bias = nb.data_ptr<float>();
    prep.eps = static_cast<float>(eps);
  }
  prep.gelu = gelu;
  return prep;
}

}  // namespace musicgen_bridge
