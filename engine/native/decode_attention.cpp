// One query per row against the bf16 KV cache: softmax(q k^T * scale + mask) v, the decode step's self-attention.
//
// Why by hand: at a long context this reads the whole cache (keys and values of every head), and PyTorch's SDPA
// kernel, built for blocks of queries, reads it well below the memory's rate for a single query
// (benchmarks/RESULTS.md). Here each (row, head) reads its keys once, in memory order, with bf16 dot products
// (AVX512_BF16), then its values once; the heads are split across torch's OpenMP threads.
//
// Numbers as SDPA's bf16 path: the query rounded to bf16, products and sums in fp32, the scale applied to the
// fp32 score. A key whose score is -inf (masked) gets exactly zero weight.
//
// The int8 cache (kv_pack_int8): each position's keys (and values) of one head are d int8 values and their fp32
// scale (max |x| / 127) in 4 more bytes, d + 4 bytes a row: half of bf16's bytes per position. The query stays fp32
// against the dequantized keys, and keys and values are read in one pass (attend_head_i8).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "quantize_row.h"
#include "vec_math.h"

namespace {

// Self-attention heads are 64 wide; the folded cross-attention (cross_attention_folded) attends with the model's
// whole width.
constexpr int64_t kMaxHeadDim = 2048;
constexpr int64_t kWideKeys = 512;  // attend_wide's int32 sums: keys at a time (even)
// Bytes ahead of the loads: each head's keys (then values) are one stream of L x 2d bytes, and the hardware
// prefetcher alone kept one thread at ~2/3 of the memory's rate on it (benchmarks/RESULTS.md: 1-8 KB measured).
constexpr int64_t kPrefetch = 4096;
constexpr int64_t kMinBytes = 64 * 1024;  // cache bytes per thread at least (see the parallel_for)

bool int8_dot() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

bool bf16_dot() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
}

struct Head {
  const float* q;         // [d]
  const uint16_t* k;      // [L, d] bf16, rows `step` apart
  const uint16_t* v;
  int64_t step;
  const float* mask;      // [L] additive, `mask_step` apart, or null
  int64_t mask_step;
  float* out;             // [d]
};

// out[i] = the sum of v[i]'s 16 lanes, for 16 vectors at once: a transposing tree of 45 shuffles and adds, where
// 16 separate horizontal sums would take ~8 dependent steps each.
__attribute__((target("avx512f"), always_inline)) inline __m512 sum16(const __m512* v) {
  __m512 a[8], c[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [v2i 0+2, v2i+1 0+2, v2i 1+3, v2i+1 1+3]
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: the lane's sum of v4i .. v4i+3
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  __m512 f[2];
  for (int i = 0; i < 2; ++i)  // lanes: [c2i L0+L1, c2i L2+L3, c2i+1 L0+L1, c2i+1 L2+L3]
    f[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88), _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(f[0], f[1], 0x88), _mm512_shuffle_f32x4(f[0], f[1], 0xDD));
}

// scores -> unnormalized softmax weights exp(s - top), in place; returns 1 / their sum, or NaN for a row with a
// NaN score or nothing to attend to (every key masked).
__attribute__((target("avx512f"))) float softmax_weights(float* scores, int64_t L, float top, bool nan) {
  if (nan || top == -INFINITY) return NAN;
  __m512 total = _mm512_setzero_ps();
  const __m512 shift = _mm512_set1_ps(top);
  int64_t l = 0;
  for (; l + 16 <= L; l += 16) {
    const __m512 w = musicgen_bridge::exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + l), shift));
    _mm512_storeu_ps(scores + l, w);
    total = _mm512_add_ps(total, w);
  }
  if (l < L) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (L - l)) - 1);
    const __m512 w = musicgen_bridge::exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, scores + l), shift));
    _mm512_mask_storeu_ps(scores + l, tail, w);
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(tail, w));
  }
  return 1.f / _mm512_reduce_add_ps(total);
}

// A key the mask rules out is not read: its score is the mask's -inf whatever the key holds (a batch row shorter
// than the longest, a padded prompt), so it costs no memory traffic and its leftovers cannot turn the row to NaN.
__attribute__((always_inline)) inline bool masked_out(const float* mask, int64_t mask_step, int64_t l) {
  return mask && mask[l * mask_step] == -INFINITY;
}

// A block of 16 keys' scores s (the first n live) at keys l..: plus the mask, stored, and folded into the running
// maximum and NaN flags.
__attribute__((target("avx512f"), always_inline)) inline void keep_scores(__m512 s, const float* mask, int64_t mask_step,
                                                                         int64_t l, int64_t n, float* scores,
                                                                         __m512& top16, __mmask16& nan16) {
  const __mmask16 live = n == 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
  if (mask) {
    alignas(64) float m[16] = {};
    for (int i = 0; i < n; ++i) m[i] = mask[(l + i) * mask_step];
    s = _mm512_add_ps(s, _mm512_load_ps(m));
  }
  _mm512_mask_storeu_ps(scores + l, live, s);
  nan16 |= _mm512_mask_cmp_ps_mask(live, s, s, _CMP_UNORD_Q);
  top16 = _mm512_mask_max_ps(top16, live, top16, s);
}

// q . key for one key: 16 partial sums (bf16 products, fp32 sums).
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512 key_dot(const __m512bh* q, int64_t chunks,
                                                                                         const uint16_t* key) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) acc = _mm512_dpbf16_ps(acc, q[c], (__m512bh)_mm512_loadu_si512(key + 32 * c));
  return acc;
}

// even/odd += w x value's even/odd dimensions (bf16 pairs: the low half shifted up and the high half masked are
// both exact fp32).
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void value_fma(float w, const uint16_t* value, int64_t pairs,
                                                                              __m512i high, __m512* even, __m512* odd) {
  const __m512 wv = _mm512_set1_ps(w);
  for (int64_t c = 0; c < pairs; ++c) {
    const __m512i two = _mm512_loadu_si512(value + 32 * c);
    even[c] = _mm512_fmadd_ps(wv, _mm512_castsi512_ps(_mm512_slli_epi32(two, 16)), even[c]);
    odd[c] = _mm512_fmadd_ps(wv, _mm512_castsi512_ps(_mm512_and_si512(two, high)), odd[c]);
  }
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void attend_head(const Head& h, int64_t L, int64_t d,
                                                                           float scale, float* scores) {
  // The query as bf16 pairs, 32 values per register.
  __m512bh q[kMaxHeadDim / 32];
  const int64_t chunks = d / 32;
  for (int64_t c = 0; c < chunks; ++c)
    q[c] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(h.q + 32 * c + 16), _mm512_loadu_ps(h.q + 32 * c));
  // Scores 16 keys at a time (the last block's missing keys as zeros): each key's sum takes the same order in any
  // block, so a row gives the same bits whatever its length and its batch's.
  __m512 top16 = _mm512_set1_ps(-INFINITY);
  __mmask16 nan16 = 0;
  const __m512 scale16 = _mm512_set1_ps(scale);
  for (int64_t l = 0; l < L; l += 16) {
    const int64_t n = std::min<int64_t>(16, L - l);
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) {
      const char* key = reinterpret_cast<const char*>(h.k + (l + i) * h.step);
      for (int64_t b = 0; b < 2 * d; b += 64) _mm_prefetch(key + kPrefetch + b, _MM_HINT_T0);
      acc[i] = i < n && !masked_out(h.mask, h.mask_step, l + i) ? key_dot(q, chunks, h.k + (l + i) * h.step)
                                                                 : _mm512_setzero_ps();
    }
    __m512 s = _mm512_mul_ps(sum16(acc), scale16);
    keep_scores(s, h.mask, h.mask_step, l, n, scores, top16, nan16);
  }
  const float top = _mm512_reduce_max_ps(top16);
  const bool nan = nan16 != 0;
  const float norm = softmax_weights(scores, L, top, nan);
  if (norm != norm) {  // a NaN row (an idle batch slot's leftovers), or nothing to attend to
    for (int64_t c = 0; c < d / 16; ++c) _mm512_storeu_ps(h.out + 16 * c, _mm512_set1_ps(NAN));
    return;
  }
  // Values 32 at a time as bf16 pairs (value_fma). Two accumulator sets (even and odd keys) keep the FMAs' dependency chains short.
  const int64_t pairs = d / 32;
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  __m512 even[2][kMaxHeadDim / 32], odd[2][kMaxHeadDim / 32];
  for (int set = 0; set < 2; ++set)
    for (int64_t c = 0; c < pairs; ++c) even[set][c] = odd[set][c] = _mm512_setzero_ps();
  // Masked keys (weight exactly 0) add exactly nothing: their values may be anything.
  int64_t j = 0;
  for (; j + 2 <= L; j += 2) {
    for (int64_t b = 0; b < 2 * d; b += 64) {  // both keys' values, kPrefetch ahead
      _mm_prefetch(reinterpret_cast<const char*>(h.v + j * h.step) + kPrefetch + b, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(h.v + (j + 1) * h.step) + kPrefetch + b, _MM_HINT_T0);
    }
    if (scores[j] != 0.f) value_fma(scores[j], h.v + j * h.step, pairs, high, even[0], odd[0]);
    if (scores[j + 1] != 0.f) value_fma(scores[j + 1], h.v + (j + 1) * h.step, pairs, high, even[1], odd[1]);
  }
  if (j < L && scores[j] != 0.f) value_fma(scores[j], h.v + j * h.step, pairs, high, even[0], odd[0]);
  alignas(64) float e[16], o[16];
  const __m512 nv = _mm512_set1_ps(norm);
  for (int64_t c = 0; c < pairs; ++c) {
    _mm512_store_ps(e, _mm512_mul_ps(_mm512_add_ps(even[0][c], even[1][c]), nv));
    _mm512_store_ps(o, _mm512_mul_ps(_mm512_add_ps(odd[0][c], odd[1][c]), nv));
    for (int i = 0; i < 16; ++i) {
      h.out[32 * c + 2 * i] = e[i];
      h.out[32 * c + 2 * i + 1] = o[i];
    }
  }
}

// The int8 cache's row: d int8 values, then their fp32 scale.
__attribute__((always_inline)) inline float row_scale(const int8_t* row, int64_t d) {
  float s;
  std::memcpy(&s, row + d, 4);
  return s;
}

// 16 int8 values as fp32.
__attribute__((target("avx512f"), always_inline)) inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

struct HeadI8 {
  const float* q;      // [d]
  const int8_t* k;     // [L, d + 4] rows `step` bytes apart
  const int8_t* v;
  int64_t step;
  const float* mask;   // [L] additive, `mask_step` apart, or null
  int64_t mask_step;
  float* out;          // [d]
};

// One block of 16 keys (the first n live, from key l) of one head over the int8 cache, then the same 16 values,
// folded into the head's running softmax (maximum `top`, sum `total`; `out0`/`out1` the even and odd keys' sums,
// rescaled when the maximum rises). Reading keys and values together reads the cache faster than all keys, then
// all values (benchmarks/RESULTS.md, item 11.3). kParts: the head's width / 16 when known at compile time (then the
// sums stay in registers), else 0 and `parts`. The query stays fp32, each key is widened to fp32 and its dot
// product taken times its scale; each value is widened and added with its weight times its scale. A masked key
// (and a block of them) adds exactly nothing; a NaN score sets `nan`.
template <int kParts>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void attend_block_i8(
    const __m512* q, int64_t parts_, const int8_t* k, const int8_t* v, int64_t step, const float* mask,
    int64_t mask_step, int64_t l, int64_t n, int64_t d, float scale, __m512* out0, __m512* out1, float& top,
    float& total, bool& nan) {
  const int64_t parts = kParts ? kParts : parts_;
  __m512 acc[16];
  alignas(64) float ks[16] = {};
  bool any = false;
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    acc[i] = _mm512_setzero_ps();
    if (i >= n || masked_out(mask, mask_step, l + i)) continue;
    any = true;
    const int8_t* key = k + (l + i) * step;
    _mm_prefetch(reinterpret_cast<const char*>(key) + kPrefetch, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(v + (l + i) * step) + kPrefetch, _MM_HINT_T0);
    if (kParts || parts < 16 || parts % 4) {
#pragma GCC unroll 8
      for (int64_t c = 0; c < parts; ++c) acc[i] = _mm512_fmadd_ps(q[c], widen16(key + 16 * c), acc[i]);
    } else {  // a wide row: four chains, not one FMA after another
      __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t c = 0; c < parts; c += 4)
        for (int j = 0; j < 4; ++j) a[j] = _mm512_fmadd_ps(q[c + j], widen16(key + 16 * (c + j)), a[j]);
      acc[i] = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    }
    ks[i] = row_scale(key, d) * scale;
  }
  if (!any) return;
  __m512 s = _mm512_mul_ps(sum16(acc), _mm512_load_ps(ks));
  if (mask) {
    alignas(64) float m[16] = {};
    for (int i = 0; i < n; ++i) m[i] = mask[(l + i) * mask_step];
    s = _mm512_add_ps(s, _mm512_load_ps(m));
  }
  const __mmask16 live = n == 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
  s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), live, s);
  nan = _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q) != 0;
  const float block_top = _mm512_reduce_max_ps(s);
  if (nan || block_top == -INFINITY) return;
  if (block_top > top) {
    const float shrink = top == -INFINITY ? 0.f : std::exp(top - block_top);
    const __m512 sv = _mm512_set1_ps(shrink);
    total *= shrink;
#pragma GCC unroll 8
    for (int64_t c = 0; c < parts; ++c) {
      out0[c] = _mm512_mul_ps(out0[c], sv);
      out1[c] = _mm512_mul_ps(out1[c], sv);
    }
    top = block_top;
  }
  const __m512 e = musicgen_bridge::exp_nonpositive(_mm512_sub_ps(s, _mm512_set1_ps(top)));
  total += _mm512_reduce_add_ps(e);
  alignas(64) float w[16];
  _mm512_store_ps(w, e);
  // Even keys into out0, odd into out1: each set's FMAs wait on the other's, not on their own.
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    if (i >= n || w[i] == 0.f) continue;
    const int8_t* value = v + (l + i) * step;
    const __m512 wv = _mm512_set1_ps(w[i] * row_scale(value, d));
    __m512* a = i & 1 ? out1 : out0;
#pragma GCC unroll 8
    for (int64_t c = 0; c < parts; ++c) a[c] = _mm512_fmadd_ps(wv, widen16(value + 16 * c), a[c]);
  }
}

// attend_head over the int8 cache, in one pass: block after block (attend_block_i8), then normalized. A NaN score
// makes the row NaN, as does a row with nothing to attend to.
template <int kParts>
__attribute__((target("avx512f,avx512bw"))) void attend_head_i8(const HeadI8& h, int64_t L, int64_t d, float scale) {
  const int64_t parts = kParts ? kParts : d / 16;
  __m512 q[kParts ? kParts : kMaxHeadDim / 16];
  for (int64_t c = 0; c < parts; ++c) q[c] = _mm512_loadu_ps(h.q + 16 * c);
  __m512 out0[kParts ? kParts : kMaxHeadDim / 16], out1[kParts ? kParts : kMaxHeadDim / 16];
  for (int64_t c = 0; c < parts; ++c) out0[c] = out1[c] = _mm512_setzero_ps();
  float top = -INFINITY, total = 0.f;
  bool nan = false;
  for (int64_t l = 0; l < L && !nan; l += 16)
    attend_block_i8<kParts>(q, parts, h.k, h.v, h.step, h.mask, h.mask_step, l, std::min<int64_t>(16, L - l), d,
                            scale, out0, out1, top, total, nan);
  if (nan || top == -INFINITY) {
    for (int64_t c = 0; c < parts; ++c) _mm512_storeu_ps(h.out + 16 * c, _mm512_set1_ps(NAN));
    return;
  }
  const __m512 nv = _mm512_set1_ps(1.f / total);
  for (int64_t c = 0; c < parts; ++c) _mm512_storeu_ps(h.out + 16 * c, _mm512_mul_ps(_mm512_add_ps(out0[c], out1[c]), nv));
}

// 8 int8 values as fp32 (AVX2).
__attribute__((target("avx2,fma"), always_inline)) inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// The dot products of the query (fp32, `parts` x 8) with 8 int8 keys, each times its scale: one sum per key,
// then the eight reduced together (hadd), not one horizontal sum per key.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 key_dots8(const float* q, int64_t parts,
                                                                           const int8_t* const* key, const float* ks) {
  __m256 a[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
  for (int64_t c = 0; c < parts; ++c) {
    const __m256 qc = _mm256_loadu_ps(q + 8 * c);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qc, widen8(key[i] + 8 * c), a[i]);
  }
  // Each 128-bit lane of h0123 holds keys 0-3's partial sums, of h4567 keys 4-7's; the two lanes then add.
  const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
  return _mm256_mul_ps(s, _mm256_load_ps(ks));
}

// attend_head_i8 with AVX2 alone (CPUs without AVX-512): the same one pass over keys and values, in blocks of 8
// keys (their scores together, then their values), the same online softmax (the same exp), the sums in another
// order. kParts: the head's width / 8 when known at compile time (the output's sums then stay in registers), else
// 0. A masked key adds exactly nothing; a NaN score, or nothing to attend to, makes the row NaN.
template <int kParts>
__attribute__((target("avx2,fma"))) void attend_head_i8_avx2(const HeadI8& h, int64_t L, int64_t d, float scale) {
  const int64_t parts = kParts ? kParts : d / 8;
  __m256 out[kParts ? kParts : kMaxHeadDim / 8];
  for (int64_t c = 0; c < parts; ++c) out[c] = _mm256_setzero_ps();
  float top = -INFINITY, total = 0.f;
  bool nan = false;
  for (int64_t l = 0; l < L && !nan; l += 8) {
    const int64_t n = std::min<int64_t>(8, L - l);
    const int8_t* key[8];
    alignas(32) float ks[8], m[8];
    bool any = false;
    for (int i = 0; i < 8; ++i) {
      const bool live = i < n && !masked_out(h.mask, h.mask_step, l + i);
      any |= live;
      key[i] = h.k + (l + (i < n ? i : 0)) * h.step;  // past the cache's end: key l again, its score dropped
      ks[i] = row_scale(key[i], d) * scale;
      m[i] = !live ? -INFINITY : h.mask ? h.mask[(l + i) * h.mask_step] : 0.f;
      _mm_prefetch(reinterpret_cast<const char*>(key[i]) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(h.v + (l + i) * h.step) + kPrefetch, _MM_HINT_T0);
    }
    if (!any) continue;
    // A key that is not live scores -inf whatever its row holds (a NaN in a masked row must not leak).
    const __m256 mv = _mm256_load_ps(m);
    __m256 sc = _mm256_add_ps(key_dots8(h.q, parts, key, ks), mv);
    sc = _mm256_blendv_ps(sc, mv, _mm256_cmp_ps(mv, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
    nan = _mm256_movemask_ps(_mm256_cmp_ps(sc, sc, _CMP_UNORD_Q)) != 0;
    alignas(32) float s[8];
    _mm256_store_ps(s, sc);
    float block_top = -INFINITY;
    for (int i = 0; i < 8; ++i) block_top = std::max(block_top, s[i]);
    if (nan || block_top == -INFINITY) continue;
    if (block_top > top) {
      const float shrink = top == -INFINITY ? 0.f : std::exp(top - block_top);
      const __m256 sv = _mm256_set1_ps(shrink);
      total *= shrink;
      for (int64_t c = 0; c < parts; ++c) out[c] = _mm256_mul_ps(out[c], sv);
      top = block_top;
    }
    const __m256 e = musicgen_bridge::exp_nonpositive8(_mm256_sub_ps(sc, _mm256_set1_ps(top)));
    total += musicgen_bridge::sum8(e);
    alignas(32) float w[8];
    _mm256_store_ps(w, e);
    for (int i = 0; i < n; ++i) {
      if (w[i] == 0.f) continue;  // masked (exp of -inf), or too small to count
      const int8_t* value = h.v + (l + i) * h.step;
      const __m256 wv = _mm256_set1_ps(w[i] * row_scale(value, d));
#pragma GCC unroll 8
      for (int64_t c = 0; c < parts; ++c) out[c] = _mm256_fmadd_ps(wv, widen8(value + 8 * c), out[c]);
    }
  }
  const float inv = nan || top == -INFINITY ? NAN : 1.f / total;
  for (int64_t c = 0; c < parts; ++c) _mm256_storeu_ps(h.out + 8 * c, _mm256_mul_ps(out[c], _mm256_set1_ps(inv)));
}

inline void pack_row(const float* x, int64_t stride, int64_t d, int8_t* y) {
  static const bool avx512 = int8_dot();
  if (stride == 1 && avx512) {  // the integer kernels' row rounding (quantize_row.h), its scale after the row
    const float s = musicgen_bridge::quantize_row(x, d, d, musicgen_bridge::RowPrep{}, 0, nullptr, reinterpret_cast<uint8_t*>(y));
    std::memcpy(y + d, &s, 4);
    return;
  }
  float top = 0.f;
  bool bad = false;
  for (int64_t j = 0; j < d; ++j) {
    const float a = std::fabs(x[j * stride]);
    bad |= !(a <= 3.4028235e38f);  // NaN or infinity
    top = std::max(top, a);
  }
  const float s = bad ? NAN : top / 127.f, inv = top > 0.f && !bad ? 127.f / top : 0.f;
  for (int64_t j = 0; j < d; ++j) y[j] = static_cast<int8_t>(std::nearbyint(x[j * stride] * inv));  // ties to even
  std::memcpy(y + d, &s, 4);
}

// 32 int8 values as int16.
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i widen32(const int8_t* p) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The value rows' int16-weighted sums for columns c0 .. c0 + 32 parts (attend_wide): two rows at a time, their int16
// pairs interleaved (unpacklo/hi within each 128-bit lane). int32 sums over kWideKeys keys at most (2 x 127 x 32767
// a pair: within int32), then carried on in fp32 in flo, fhi. kParts: parts when known at compile time (the sums
// then stay in registers), else 0.
template <int kParts>
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline void wide_values(
    const int8_t* u, int64_t step, int64_t S, const int16_t* w16, int64_t c0, int64_t parts_, __m512* flo, __m512* fhi) {
  const int64_t parts = kParts ? kParts : parts_;
  for (int64_t j0 = 0; j0 < S; j0 += kWideKeys) {
    __m512i lo[4], hi[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) lo[c] = hi[c] = _mm512_setzero_si512();
    for (int64_t j = j0; j < std::min(S, j0 + kWideKeys); j += 2) {
      const int64_t j1 = j + 1 < S ? j + 1 : j;  // an odd last row pairs with itself at weight 0
      if (w16[j] == 0 && w16[j + 1] == 0) continue;
      const __m512i w = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint16_t>(w16[j]) |
                                                               (static_cast<uint32_t>(static_cast<uint16_t>(w16[j + 1])) << 16)));
#pragma GCC unroll 4
      for (int64_t c = 0; c < parts; ++c) {
        const int64_t at = c0 + 32 * c;
        const __m512i a = widen32(u + j * step + at), b = widen32(u + j1 * step + at);
        lo[c] = _mm512_dpwssd_epi32(lo[c], _mm512_unpacklo_epi16(a, b), w);
        hi[c] = _mm512_dpwssd_epi32(hi[c], _mm512_unpackhi_epi16(a, b), w);
      }
    }
#pragma GCC unroll 4
    for (int64_t c = 0; c < parts; ++c) {
      flo[c] = _mm512_add_ps(flo[c], _mm512_cvtepi32_ps(lo[c]));
      fhi[c] = _mm512_add_ps(fhi[c], _mm512_cvtepi32_ps(hi[c]));
    }
  }
}

// The folded cross-attention's head (below): the query row x (as int16, x = x16 * sx) against S keys p and values u
// of the model's width D (packed int8 rows, `step` bytes apart), in 16-bit integer dot products (AVX512_VNNI's
// vpdpwssd, 32 products an instruction where widening each int8 to fp32 for an FMA does 16 in four). The query's
// 16 bits and the weights' 15 (each softmax weight times its row's scale, rounded against the head's largest) are
// far finer than the rows' 8. Writes out[D] (NaN when nothing can be attended to, as attend_head_i8).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void attend_wide(const int16_t* x16, float sx, const int8_t* p,
                                                                      const int8_t* u, int64_t step, int64_t S,
                                                                      int64_t D, const float* mask, int64_t mask_step,
                                                                      float* scores, int16_t* w16, float* out) {
  const int64_t chunks = D / 32;
  // The value rows, into L2 while the keys are read: the values are read 128 columns at a time across the rows,
  // an order the hardware's prefetchers do not follow from memory.
  for (int64_t j = 0; j < S; ++j)
    for (int64_t b = 0; b < D + 4; b += 64) _mm_prefetch(reinterpret_cast<const char*>(u + j * step + b), _MM_HINT_T1);
  __m512 top16 = _mm512_set1_ps(-INFINITY);
  __mmask16 nan16 = 0;
  for (int64_t l = 0; l < S; l += 16) {
    const int64_t n = std::min<int64_t>(16, S - l);
    __m512 dots[16];  // each key's 16 partial sums (exact integers, as fp32), summed 16 keys at once by sum16
    alignas(64) float ks[16] = {};
    for (int i = 0; i < 16; ++i) {
      dots[i] = _mm512_setzero_ps();
      if (i >= n || masked_out(mask, mask_step, l + i)) continue;
      const int8_t* key = p + (l + i) * step;
      _mm_prefetch(reinterpret_cast<const char*>(key) + kPrefetch, _MM_HINT_T0);
      // Four chains, each in a register (an index c & 3 kept them in memory, a store and a load per product).
      __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
      int64_t c = 0;
      for (; c + 4 <= chunks; c += 4) {
        a0 = _mm512_dpwssd_epi32(a0, _mm512_loadu_si512(x16 + 32 * c), widen32(key + 32 * c));
        a1 = _mm512_dpwssd_epi32(a1, _mm512_loadu_si512(x16 + 32 * c + 32), widen32(key + 32 * c + 32));
        a2 = _mm512_dpwssd_epi32(a2, _mm512_loadu_si512(x16 + 32 * c + 64), widen32(key + 32 * c + 64));
        a3 = _mm512_dpwssd_epi32(a3, _mm512_loadu_si512(x16 + 32 * c + 96), widen32(key + 32 * c + 96));
      }
      for (; c < chunks; ++c) a0 = _mm512_dpwssd_epi32(a0, _mm512_loadu_si512(x16 + 32 * c), widen32(key + 32 * c));
      dots[i] = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
      ks[i] = sx * row_scale(key, D);
    }
    keep_scores(_mm512_mul_ps(sum16(dots), _mm512_load_ps(ks)), mask, mask_step, l, n, scores, top16, nan16);
  }
  const float norm = softmax_weights(scores, S, _mm512_reduce_max_ps(top16), nan16 != 0);
  if (norm != norm) {
    for (int64_t c = 0; c < D; ++c) out[c] = NAN;
    return;
  }
  // Each value row's weight (softmax weight times its scale), as int16 against the largest.
  float wmax = 0.f;
  for (int64_t j = 0; j < S; ++j) {
    scores[j] *= scores[j] != 0.f ? row_scale(u + j * step, D) : 0.f;
    wmax = std::max(wmax, std::fabs(scores[j]));
  }
  const float to16 = wmax > 0.f ? 32767.f / wmax : 0.f;
  for (int64_t j = 0; j < S + 1; ++j) w16[j] = j < S ? static_cast<int16_t>(std::nearbyint(scores[j] * to16)) : 0;
  // Values 128 columns at a time (wide_values): the int32 sums come out as columns 8L+i (lo) and 8L+4+i (hi) of
  // 128-bit lane L, i < 4.
  const float back = wmax / 32767.f * norm;
  for (int64_t c0 = 0; c0 < D; c0 += 128) {
    const int64_t parts = std::min<int64_t>(4, (D - c0) / 32);
    __m512 flo[4], fhi[4];
    for (int c = 0; c < 4; ++c) flo[c] = fhi[c] = _mm512_setzero_ps();
    if (parts == 4) wide_values<4>(u, step, S, w16, c0, parts, flo, fhi);  // sums in registers
    else wide_values<0>(u, step, S, w16, c0, parts, flo, fhi);
    // Back in column order: columns 0-15 are lo 0-3, hi 0-3, lo 4-7, hi 4-7; columns 16-31 the same from 8 on.
    const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(8));
    const __m512 scale = _mm512_set1_ps(back);
    for (int64_t c = 0; c < parts; ++c) {
      float* o = out + c0 + 32 * c;
      _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_permutex2var_ps(flo[c], first, fhi[c]), scale));
      _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_permutex2var_ps(flo[c], second, fhi[c]), scale));
    }
  }
}

bool vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}

// out[D] = the sum of the H rows of heads [H, D] (D a multiple of 16).
__attribute__((target("avx512f"))) void sum_heads(const float* heads, int64_t H, int64_t D, float* out) {
  for (int64_t c = 0; c < D; c += 16) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t h = 0; h < H; ++h) a = _mm512_add_ps(a, _mm512_loadu_ps(heads + h * D + c));
    _mm512_storeu_ps(out + c, a);
  }
}

}  // namespace


// q [B, H, 1, d] fp32; k, v [B, H, L, d] bf16, or [B, H, L, d + 4] int8 rows of kv_pack_int8 (views of the cache:
// any strides but a contiguous last dim); mask additive fp32 broadcastable to [B, H, 1, L], or none. Returns
// [B, H, 1, d] fp32.
at::Tensor decode_attention(const at::Tensor& q_, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& mask_, double scale) {
  TORCH_CHECK(q_.dim() == 4 && q_.size(2) == 1 && q_.scalar_type() == at::kFloat, "decode_attention: q is fp32 [B, H, 1, d]");
  const bool int8 = k.scalar_type() == at::kChar;
  TORCH_CHECK(k.dim() == 4 && (int8 || k.scalar_type() == at::kBFloat16) && v.scalar_type() == k.scalar_type() &&
              k.sizes() == v.sizes() && k.strides() == v.strides(),
              "decode_attention: k and v are bf16 (or packed int8) [B, H, L, d] views with the same strides");
  const bool wide = int8_dot() && !musicgen_bridge::avx2_only().load(std::memory_order_relaxed);
  TORCH_CHECK(int8 ? wide || musicgen_bridge::avx2() : bf16_dot(),
              "decode_attention needs a CPU with AVX2 (the int8 cache) or AVX512_BF16 (a bf16 cache)");
  const int64_t B = q_.size(0), H = q_.size(1), d = q_.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == d + (int8 ? 4 : 0) && k.stride(3) == 1,
              "decode_attention: k does not fit q");
  TORCH_CHECK(d % 32 == 0 && d <= kMaxHeadDim, "decode_attention: head size ", d, " (a multiple of 32, at most ", kMaxHeadDim, ")");
  TORCH_CHECK(L > 0, "decode_attention: no keys");
  const at::Tensor q = q_.contiguous();
  at::Tensor mask;
  if (mask_.has_value()) {
    TORCH_CHECK(mask_->scalar_type() == at::kFloat, "decode_attention: the mask is additive fp32");
    mask = mask_->expand({B, H, 1, L});
  }
  at::Tensor out = at::empty({B, H, 1, d}, at::kFloat);
  const char* kp = static_cast<const char*>(k.data_ptr());
  const char* vp = static_cast<const char*>(v.data_ptr());
  const int64_t bytes = k.element_size();
  const float* qp = q.data_ptr<float>();
  const float* mp = mask.defined() ? mask.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // A thread takes at least kMinBytes of keys and values: a short cache runs on the calling thread (as in the
  // linear kernel, a second thread would cost more than it saves).
  const int64_t grain = std::max<int64_t>(1, kMinBytes / (2 * L * k.size(3) * bytes));
  musicgen_bridge::parallel_for(0, B * H, grain, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(L + 16);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H;
      const int64_t kv = (b * k.stride(0) + h * k.stride(1)) * bytes;
      const float* m = mp ? mp + b * mask.stride(0) + h * mask.stride(1) : nullptr;
      const int64_t m_step = mp ? mask.stride(3) : 0;
      if (i + 1 < i1) {  // the next head's first bytes, while this one runs: each head's streams start cold
        const int64_t next = ((i + 1) / H * k.stride(0) + (i + 1) % H * k.stride(1)) * bytes;
        for (int64_t o = 0; o < std::min<int64_t>(kPrefetch, L * k.stride(2) * bytes); o += 64) {
          _mm_prefetch(kp + next + o, _MM_HINT_T0);
          _mm_prefetch(vp + next + o, _MM_HINT_T0);
        }
      }
      if (int8) {
        HeadI8 head{qp + i * d, reinterpret_cast<const int8_t*>(kp + kv), reinterpret_cast<const int8_t*>(vp + kv),
                    k.stride(2), m, m_step, op + i * d};
        if (!wide && d == 64) attend_head_i8_avx2<8>(head, L, d, static_cast<float>(scale));  // MusicGen's heads
        else if (!wide) attend_head_i8_avx2<0>(head, L, d, static_cast<float>(scale));
        else if (d == 64) attend_head_i8<4>(head, L, d, static_cast<float>(scale));  // MusicGen's heads
        else attend_head_i8<0>(head, L, d, static_cast<float>(scale));
      } else {
        Head head{qp + i * d, reinterpret_cast<const uint16_t*>(kp + kv), reinterpret_cast<const uint16_t*>(vp + kv),
                  k.stride(2), m, m_step, op + i * d};
        attend_head(head, L, d, static_cast<float>(scale), scores.data());
      }
    }
  });
  return out;
}

// Cross-attention with its query and output projections folded into the text (engine/lm.py, CrossAttention):
// out[b] = sum over heads h of softmax_s(x[b] . p[b, h, s] + mask[b, s]) u[b, h, s], with p and u packed int8 rows
// of the model's width D (kv_pack_int8; the 1/sqrt(d) scale already in p). x [B, 1, D] fp32; p, u [B, H, S, D + 4]
// (any strides but contiguous rows); mask additive fp32 [B, 1, 1, S] or none; live [B] bool. A row that is not
// live (guidance's null condition, whose keys and values are zero) is exactly zero and reads nothing.
at::Tensor cross_attention_folded(const at::Tensor& x_, const at::Tensor& p, const at::Tensor& u,
                                  const c10::optional<at::Tensor>& mask_, const at::Tensor& live_) {
  TORCH_CHECK(x_.dim() == 3 && x_.size(1) == 1 && x_.scalar_type() == at::kFloat, "cross_attention_folded: x is fp32 [B, 1, D]");
  const int64_t B = x_.size(0), D = x_.size(2);
  TORCH_CHECK(p.dim() == 4 && p.scalar_type() == at::kChar && u.scalar_type() == at::kChar && p.sizes() == u.sizes() &&
              p.strides() == u.strides() && p.size(0) == B && p.size(3) == D + 4 && p.stride(3) == 1,
              "cross_attention_folded: p and u are packed int8 [B, H, S, D + 4] views with the same strides");
  TORCH_CHECK(vnni(), "cross_attention_folded needs a CPU with AVX-512 VNNI");
  TORCH_CHECK(D % 32 == 0 && D <= kMaxHeadDim, "cross_attention_folded: width ", D, " (a multiple of 32, at most ", kMaxHeadDim, ")");
  TORCH_CHECK(live_.dim() == 1 && live_.size(0) == B && live_.scalar_type() == at::kBool, "cross_attention_folded: live is bool [B]");
  const int64_t H = p.size(1), S = p.size(2);
  const at::Tensor x = x_.contiguous(), live = live_.contiguous();
  at::Tensor mask;
  if (mask_.has_value()) {
    TORCH_CHECK(mask_->scalar_type() == at::kFloat, "cross_attention_folded: the mask is additive fp32");
    mask = mask_->expand({B, 1, 1, S});
  }
  at::Tensor heads = at::empty({B, H, D}, at::kFloat);
  const bool* lp = live.data_ptr<bool>();
  // Each live row's query as int16 and its scale (a row with a NaN or infinity: NaN, as attention would give).
  std::vector<int16_t> x16(B * D);
  std::vector<float> sx(B, 0.f);
  for (int64_t b = 0; b < B; ++b)
    if (lp[b]) sx[b] = musicgen_bridge::quantize_row16(x.data_ptr<float>() + b * D, D, D, musicgen_bridge::RowPrep{}, nullptr,
                                                         x16.data() + b * D);
  const float* mp = mask.defined() ? mask.data_ptr<float>() : nullptr;
  const int8_t* pp = p.data_ptr<int8_t>();
  const int8_t* up = u.data_ptr<int8_t>();
  float* hp = heads.data_ptr<float>();
  // The live rows' heads, split across the threads (a null row's heads would leave a thread idle).
  std::vector<int64_t> work;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H && lp[b] && S > 0; ++h) work.push_back(b * H + h);
  const int64_t grain = std::max<int64_t>(1, kMinBytes / std::max<int64_t>(1, 2 * S * (D + 4)));
  const int64_t row_stride = p.stride(0), head_stride = p.stride(1), key_stride = p.stride(2);
  const int64_t mask_row = mp ? mask.stride(0) : 0, mask_key = mp ? mask.stride(3) : 0;
  musicgen_bridge::parallel_for(0, static_cast<int64_t>(work.size()), grain, [&](int64_t w0, int64_t w1) {
    std::vector<float> scores(S + 16);
    std::vector<int16_t> w16(S + 2);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i = work[w], b = i / H, h = i % H;
      const int64_t at = b * row_stride + h * head_stride;
      if (w + 1 < w1) {  // the next head's first keys, while this one runs (each head's stream starts cold)
        const int64_t next = work[w + 1] / H * row_stride + work[w + 1] % H * head_stride;
        for (int64_t o = 0; o < std::min<int64_t>(kPrefetch, S * key_stride); o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(pp + next + o), _MM_HINT_T0);
      }
      attend_wide(x16.data() + b * D, sx[b], pp + at, up + at, key_stride, S, D, mp ? mp + b * mask_row : nullptr,
                  mask_key, scores.data(), w16.data(), hp + i * D);
    }
  });
  at::Tensor out = at::zeros({B, 1, D}, at::kFloat);
  float* op = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    if (lp[b] && S > 0) sum_heads(hp + b * H * D, H, D, op + b * D);
  return out;
}

// kv [..., d] fp32 -> [..., d + 4] int8: each row rounded to round(127 x / max|x|) and followed by its scale
// max|x| / 127 as fp32 bytes (an all-zero row: zeros; a row with a NaN or infinity: scale NaN).
at::Tensor kv_pack_int8(const at::Tensor& kv_) {
  TORCH_CHECK(kv_.scalar_type() == at::kFloat && kv_.dim() >= 1, "kv_pack_int8 takes fp32 rows");
  const at::Tensor kv = kv_.contiguous();
  const int64_t d = kv.size(-1), rows = d ? kv.numel() / d : 0;
  std::vector<int64_t> shape(kv.sizes().begin(), kv.sizes().end());
  shape.back() = d + 4;
  at::Tensor out = at::empty(shape, at::kChar);
  const float* src = kv.data_ptr<float>();
  int8_t* dst = out.data_ptr<int8_t>();
  musicgen_bridge::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) pack_row(src + r * d, 1, d, dst + r * (d + 4));
  });
  return out;
}

// Write new keys and values into the cache in place: kv [2, B, H, T, d] fp32 (any strides) at positions pos ([T]
// for every row, or [B, T] one per row) of cache [2, B, H, L, w] (any strides, rows contiguous): bf16 rounded to
// nearest even as torch's .to(bfloat16), fp32 copied, int8 packed as kv_pack_int8. One op per layer and step where
// a pack, a cast and an index_copy_ were three. Returns the cache.
at::Tensor kv_write(at::Tensor& cache, const at::Tensor& pos, const at::Tensor& kv) {
  TORCH_CHECK(cache.dim() == 5 && kv.dim() == 5 && kv.scalar_type() == at::kFloat && cache.stride(4) == 1,
              "kv_write: cache [2, B, H, L, w] with contiguous rows, kv [2, B, H, T, d] fp32");
  const auto type = cache.scalar_type();
  const int64_t B = kv.size(1), H = kv.size(2), T = kv.size(3), d = kv.size(4), L = cache.size(3);
  TORCH_CHECK(type == at::kChar || type == at::kBFloat16 || type == at::kFloat, "kv_write: an int8, bf16 or fp32 cache");
  TORCH_CHECK(cache.size(0) == 2 && kv.size(0) == 2 && cache.size(1) == B && cache.size(2) == H &&
              cache.size(4) == d + (type == at::kChar ? 4 : 0), "kv_write: kv does not fit the cache");
  TORCH_CHECK(pos.scalar_type() == at::kLong && ((pos.dim() == 1 && pos.size(0) == T) || (pos.dim() == 2 && pos.size(0) == B && pos.size(1) == T)),
              "kv_write: positions [T] or [B, T] (int64)");
  const at::Tensor p = pos.contiguous();
  const int64_t* pp = p.data_ptr<int64_t>();
  for (int64_t i = 0; i < p.numel(); ++i) TORCH_CHECK(pp[i] >= 0 && pp[i] < L, "kv_write: position ", pp[i], " outside the cache's ", L);
  char* base = static_cast<char*>(cache.data_ptr());
  const int64_t bytes = cache.element_size();
  const float* src = kv.data_ptr<float>();
  const auto ks = kv.strides();
  // A step's rows lie one per (key or value, row, head), each in lines (and a page) that the step has not touched:
  // asked for all at once, their misses overlap, where the stores alone met them one after another.
  if (2 * B * H * T <= 4096)
    for (int64_t r = 0; r < 2 * B * H * T; ++r) {
      const int64_t t = r % T, h = (r / T) % H, b = (r / (T * H)) % B, i = r / (T * H * B);
      const int64_t at = p.dim() == 1 ? pp[t] : pp[b * T + t];
      const char* row = base + (i * cache.stride(0) + b * cache.stride(1) + h * cache.stride(2) + at * cache.stride(3)) * bytes;
      __builtin_prefetch(row, 1, 3);
      __builtin_prefetch(row + cache.size(4) * bytes - 1, 1, 3);
    }
  // Rows split across the threads only for a prefill's thousands (a step writes 4 B H rows, on this thread).
  musicgen_bridge::parallel_for(0, 2 * B * H * T, 2048, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T, h = (r / T) % H, b = (r / (T * H)) % B, i = r / (T * H * B);
      const int64_t at = p.dim() == 1 ? pp[t] : pp[b * T + t];
      char* row = base + (i * cache.stride(0) + b * cache.stride(1) + h * cache.stride(2) + at * cache.stride(3)) * bytes;
      const float* x = src + i * ks[0] + b * ks[1] + h * ks[2] + t * ks[3];
      if (type == at::kChar) {
        pack_row(x, ks[4], d, reinterpret_cast<int8_t*>(row));
      } else if (type == at::kBFloat16) {
        auto* y = reinterpret_cast<at::BFloat16*>(row);
        for (int64_t j = 0; j < d; ++j) y[j] = static_cast<at::BFloat16>(x[j * ks[4]]);
      } else {
        auto* y = reinterpret_cast<float*>(row);
        for (int64_t j = 0; j < d; ++j) y[j] = x[j * ks[4]];
      }
    }
  });
  return cache;
}

// kv_pack_int8 undone: [..., d + 4] int8 -> [..., d] fp32 (for the paths that attend over fp32: a prefill).
at::Tensor kv_unpack_int8(const at::Tensor& packed_) {
  TORCH_CHECK(packed_.scalar_type() == at::kChar && packed_.dim() >= 1 && packed_.size(-1) > 4,
              "kv_unpack_int8 takes packed int8 rows");
  const at::Tensor packed = packed_.contiguous();
  const int64_t w = packed.size(-1), d = w - 4, rows = packed.numel() / w;
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end());
  shape.back() = d;
  at::Tensor out = at::empty(shape, at::kFloat);
  const int8_t* src = packed.data_ptr<int8_t>();
  float* dst = out.data_ptr<float>();
  musicgen_bridge::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float s = row_scale(src + r * w, d);
      for (int64_t i = 0; i < d; ++i) dst[r * d + i] = static_cast<float>(src[r * w + i]) * s;
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(musicgen_bridge, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def("kv_pack_int8(Tensor kv) -> Tensor");
  m.def("kv_unpack_int8(Tensor packed) -> Tensor");
  m.def("kv_write(Tensor(a!) cache, Tensor pos, Tensor kv) -> Tensor(a!)");
  m.def("cross_attention_folded(Tensor x, Tensor p, Tensor u, Tensor? mask, Tensor live) -> Tensor");
}

TORCH_LIBRARY_IMPL(musicgen_bridge, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("kv_pack_int8", &kv_pack_int8);
  m.impl("kv_unpack_int8", &kv_unpack_int8);
  m.impl("kv_write", &kv_write);
  m.impl("cross_attention_folded", &cross_attention_folded);
}
