// int8 weights x int8 activations for the decode step's matmuls: a few rows ([M, K], M = 2 per guided stream)
// against [N, K] weights, where the cost is streaming the weights from memory once per step.
//
// Why by hand: fbgemm's and oneDNN's int8 kernels are built for GEMM and reach about half the read bandwidth on a
// few rows (benchmarks/RESULTS.md). This one reads the weights in one pass, in the order they lie in memory, with
// VNNI dot products (uint8 x int8, four products per int32 lane), split across torch's own OpenMP threads.
//
// Layout: the weight is packed as [N/64][K/4][64][4] bytes (zero padded), so one k-step of a block is 256 contiguous
// bytes: four zmm loads, 64 output columns x 4 input columns. Activations are rounded per row, round(127 x / max|x|),
// and stored as uint8 with offset 128; sum((q + 128) w) - 128 sum(w) recovers the signed product exactly.
//
// w8a16_linear reads the same packed weights with the rows rounded to 16 bits (round(32767 x / max|x|)), in 16-bit
// dot products (vpdpwssd): for the output heads, where the logits take the rounding undiluted. The weights are
// widened to int16 on the way; that costs instructions, not bytes, and a head's step stays memory-bound.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "quantize_row.h"

namespace {

using musicgen_bridge::kBlock;
using musicgen_bridge::kMinBytes;
using musicgen_bridge::quantize_row;
using musicgen_bridge::RowPrep;
using musicgen_bridge::avx2;
using musicgen_bridge::vnni512;

// Bytes ahead of the loads, into L2 (T1): far enough to keep more lines in flight than L1 has fill buffers for
// (4-8 KB into L1 read less, benchmarks/RESULTS.md).
constexpr int64_t kPrefetch = 16384;


// R rows (R <= 4) against one block: acc[r][j] holds columns 16j..16j+15 of row r.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_dot(const int8_t* w, const uint8_t* q, int64_t Kp,
                                                                       float* y, int64_t N, int64_t n0,
                                                                       const int32_t* colsum, const float* wscale,
                                                                       const float* rscale) {
  __m512i acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_si512();
  const int64_t steps = Kp / 4;
  for (int64_t k = 0; k < steps; ++k) {
    const char* p = reinterpret_cast<const char*>(w + k * 256);
    for (int j = 0; j < 4; ++j) _mm_prefetch(p + kPrefetch + 64 * j, _MM_HINT_T1);
    __m512i wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = _mm512_loadu_si512(p + 64 * j);
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, q + r * Kp + 4 * k, 4);
      const __m512i xv = _mm512_set1_epi32(four);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], xv, wv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= N) break;
      const __m512i signed_sum = _mm512_sub_epi32(acc[r][j], _mm512_slli_epi32(_mm512_loadu_si512(colsum + n), 7));
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(signed_sum), _mm512_loadu_ps(wscale + n)),
                                     _mm512_set1_ps(rscale[r]));
      const int64_t left = N - n;
      const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
      _mm512_mask_storeu_ps(y + r * N + n, mask, v);
    }
}

void block_rows(int64_t R, const int8_t* w, const uint8_t* q, int64_t Kp, float* y, int64_t N, int64_t n0,
                const int32_t* colsum, const float* wscale, const float* rscale) {
  switch (R) {
    case 1: return block_dot<1>(w, q, Kp, y, N, n0, colsum, wscale, rscale);
    case 2: return block_dot<2>(w, q, Kp, y, N, n0, colsum, wscale, rscale);
    case 3: return block_dot<3>(w, q, Kp, y, N, n0, colsum, wscale, rscale);
    default: return block_dot<4>(w, q, Kp, y, N, n0, colsum, wscale, rscale);
  }
}

// int8 weights x 16-bit activations (w8a16_linear): 16-bit products (vpdpwssd) sum two of a column's inputs per
// int32 lane, so a k-step (4 inputs) puts each column in two lanes. int32 sums are carried on in fp32 every
// kFlush16 k-steps: two lanes' sums then stay within int32 (4 x 128 x 32767 x 127 < 2^31).
constexpr int64_t kFlush16 = 128;

// R rows (R <= 2) against one block: acc[r][2j] and acc[r][2j + 1] hold columns 16j..16j+7 and 16j+8..16j+15 of row
// r, each column's inputs 0-1 (even lanes) and 2-3 (odd lanes) apart; sum[r][j] their totals in column order.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_dot16(const int8_t* w, const int16_t* q, int64_t Kp,
                                                                        float* y, int64_t N, int64_t n0,
                                                                        const float* wscale, const float* rscale) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  __m512 sum[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) sum[r][j] = _mm512_setzero_ps();
  const int64_t steps = Kp / 4;
  for (int64_t k0 = 0; k0 < steps; k0 += kFlush16) {
    __m512i acc[R][8];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 8; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t k = k0; k < std::min(steps, k0 + kFlush16); ++k) {
      const char* p = reinterpret_cast<const char*>(w + k * 256);
      for (int j = 0; j < 4; ++j) _mm_prefetch(p + kPrefetch + 64 * j, _MM_HINT_T1);
      __m512i xv[R];
      for (int r = 0; r < R; ++r) {  // the row's 4 inputs of this step, as 2 pairs, in every 64-bit lane
        int64_t four;
        std::memcpy(&four, q + r * Kp + 4 * k, 8);
        xv[r] = _mm512_set1_epi64(four);
      }
      for (int j = 0; j < 4; ++j) {
        const __m512i wv = _mm512_loadu_si512(p + 64 * j);
        const __m512i lo = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(wv));
        const __m512i hi = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(wv, 1));
        for (int r = 0; r < R; ++r) {
          acc[r][2 * j] = _mm512_dpwssd_epi32(acc[r][2 * j], lo, xv[r]);
          acc[r][2 * j + 1] = _mm512_dpwssd_epi32(acc[r][2 * j + 1], hi, xv[r]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) {
        const __m512i a = acc[r][2 * j], b = acc[r][2 * j + 1];
        const __m512i both = _mm512_add_epi32(_mm512_permutex2var_epi32(a, even, b), _mm512_permutex2var_epi32(a, odd, b));
        sum[r][j] = _mm512_add_ps(sum[r][j], _mm512_cvtepi32_ps(both));
      }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 16 * j;
      if (n >= N) break;
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(sum[r][j], _mm512_loadu_ps(wscale + n)), _mm512_set1_ps(rscale[r]));
      const int64_t left = N - n;
      const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
      _mm512_mask_storeu_ps(y + r * N + n, mask, v);
    }
}

// block_dot16 with AVX2 alone (CPUs without AVX-512): the same sums. 16-bit products (vpmaddwd) give each column
// two lanes a k-step, joined at once (vphaddd) so that 8 columns take one register. Two rows' 64 columns are then
// all 16 of AVX2's registers and the compiler keeps some in L1: that read the weights faster than two passes over
// half a block each (benchmarks/RESULTS.md).
template <int R>
__attribute__((target("avx2,fma"))) void block_dot16_avx2(const int8_t* w, const int16_t* q, int64_t Kp, float* y,
                                                          int64_t N, int64_t n0, const float* wscale,
                                                          const float* rscale) {
  // acc[r][j] lanes hold columns 0 1 4 5 2 3 6 7 of its 8 (vphaddd's order): back to 0..7
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  alignas(32) float sum[R][kBlock] = {};
  const int64_t steps = Kp / 4;
  for (int64_t k0 = 0; k0 < steps; k0 += kFlush16) {
    __m256i acc[R][8];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 8; ++j) acc[r][j] = _mm256_setzero_si256();
    for (int64_t k = k0; k < std::min(steps, k0 + kFlush16); ++k) {
      const char* p = reinterpret_cast<const char*>(w + k * 256);
      for (int j = 0; j < 4; ++j) _mm_prefetch(p + kPrefetch + 64 * j, _MM_HINT_T1);
      __m256i xv[R];
      for (int r = 0; r < R; ++r) {  // the row's 4 inputs of this step, as 2 pairs, in every 64-bit lane
        int64_t four;
        std::memcpy(&four, q + r * Kp + 4 * k, 8);
        xv[r] = _mm256_set1_epi64x(four);
      }
      for (int j = 0; j < 8; ++j) {  // columns 8j..8j+7: 4 columns x 4 inputs per 16 bytes
        const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32 * j)));
        const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32 * j + 16)));
        for (int r = 0; r < R; ++r)
          acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_hadd_epi32(_mm256_madd_epi16(a, xv[r]),
                                                                    _mm256_madd_epi16(b, xv[r])));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 8; ++j) {
        float* s = sum[r] + 8 * j;
        const __m256 v = _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(acc[r][j], order));
        _mm256_store_ps(s, _mm256_add_ps(_mm256_load_ps(s), v));
      }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < kBlock && n0 + c < N; ++c) y[r * N + n0 + c] = sum[r][c] * wscale[n0 + c] * rscale[r];
}

// One block of the packed weight into its 64 columns of the [Kp, N] bf16 transpose yt (see w8a8_widen).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void widen_block(const int8_t* w, int64_t steps, const float* ws,
                                                                           uint16_t* yt, int64_t N) {
  __m512 scale[4];
  for (int j = 0; j < 4; ++j) scale[j] = _mm512_loadu_ps(ws + 16 * j);
  for (int64_t t = 0; t < steps; ++t)
    for (int j = 0; j < 4; ++j) {  // columns 16j..16j+15, inputs 4t..4t+3
      const __m512i rows = musicgen_bridge::columns_to_rows(_mm512_loadu_si512(w + t * kBlock * 4 + 64 * j));
      alignas(64) int8_t r[64];
      _mm512_store_si512(r, rows);
      for (int i = 0; i < 4; ++i) {
        const __m512i q = _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(r + 16 * i)));
        musicgen_bridge::store_row16(q, scale[j], _mm512_setzero_ps(), yt + (4 * t + i) * N + 16 * j);
      }
    }
}

}  // namespace


// int8 [N, K] -> the packed [ceil(N/64), ceil(K/4), 64, 4] layout, zero padded.
at::Tensor w8a8_pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar, "w8a8_pack takes an int8 [N, K] weight");
  const at::Tensor w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1), blocks = (N + kBlock - 1) / kBlock, steps = (K + 3) / 4;
  at::Tensor out = at::zeros({blocks, steps, kBlock, 4}, at::kChar);
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      dst[((n / kBlock) * steps + k / 4) * kBlock * 4 + (n % kBlock) * 4 + k % 4] = src[n * K + k];
  return out;
}

// What both int8-weight ops check of their fp32 rows [..., K] and their packed weight for N outputs; returns the
// packed inputs Kp.
int64_t check_rows_and_weight(const char* op, const at::Tensor& x, const at::Tensor& packed, int64_t N) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat, op, " takes fp32 [..., K] rows");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kChar && packed.size(2) == kBlock && packed.size(3) == 4,
              op, " takes a weight packed by w8a8_pack");
  const int64_t blocks = packed.size(0), Kp = packed.size(1) * 4, K = x.size(-1);
  TORCH_CHECK((K + 3) / 4 * 4 == Kp, op, ": rows of ", K, " values against a weight packed for ", Kp);
  TORCH_CHECK(N > (blocks - 1) * kBlock && N <= blocks * kBlock, op, ": ", N, " outputs from ", blocks, " blocks");
  return Kp;
}

// x [..., K] fp32 times the packed weight's transpose: [..., N] fp32, y = (round(127 x / max|x|) . w) * max|x| / 127 * wscale.
// With norm_weight and norm_bias, the rows are layer-normed first (eps); with gelu, GELU'd first.
at::Tensor w8a8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& colsum, const at::Tensor& wscale,
                       int64_t N, const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                       double eps, bool gelu) {
  TORCH_CHECK(vnni512(), "w8a8_linear needs a CPU with AVX-512 VNNI");
  const int64_t Kp = check_rows_and_weight("w8a8_linear", x, packed, N), blocks = packed.size(0), K = x.size(-1);
  const int64_t M = K ? x.numel() / K : 0;
  TORCH_CHECK(colsum.scalar_type() == at::kInt && colsum.numel() == blocks * kBlock && wscale.scalar_type() == at::kFloat &&
              wscale.numel() == blocks * kBlock, "w8a8_linear: colsum (int32) and wscale (fp32) of ", blocks * kBlock);
  at::Tensor nw, nb;
  const RowPrep prep = musicgen_bridge::row_prep(norm_weight, norm_bias, eps, gelu, K, "w8a8_linear", nw, nb);
  const at::Tensor rows = x.contiguous(), sums = colsum.contiguous(), scales = wscale.contiguous();
  musicgen_bridge::RowScratch& scratch = musicgen_bridge::row_scratch(M, Kp, K, 0);
  const float* xp = rows.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    scratch.scales[m] = quantize_row(xp + m * K, K, Kp, prep, 128, scratch.tmp.data(), scratch.rows.data() + m * Kp);
  at::Tensor y = at::empty(musicgen_bridge::out_shape(x, N), at::kFloat);
  const int8_t* w = packed.data_ptr<int8_t>();
  const uint8_t* qp = scratch.rows.data();
  const int32_t* cs = sums.data_ptr<int32_t>();
  const float* ws = scales.data_ptr<float>();
  const float* rs = scratch.scales.data();
  float* yp = y.data_ptr<float>();
  // Blocks split across the threads; each block's weights are read once for up to 4 rows, again per 4 more rows
  // (then from cache: a block is 64 x K bytes). A thread takes at least kMinBytes of weights: smaller matrices run
  // on the calling thread, where waking a second one would cost more than it saves (and, on a busy host, wait for
  // a thread that lost its core).
  const int64_t grain = std::max<int64_t>(1, kMinBytes / (Kp * kBlock));
  musicgen_bridge::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m = 0; m < M; m += 4)
        block_rows(std::min<int64_t>(4, M - m), w + b * Kp * kBlock, qp + m * Kp, Kp, yp + m * N, N, b * kBlock, cs, ws,
                   rs + m);
  });
  return y;
}


// x [..., K] fp32 times the packed weight's transpose, the rows in 16 bits: [..., N] fp32,
// y = (round(32767 x / max|x|) . w) * max|x| / 32767 * wscale; with norm_weight and norm_bias the rows layer-normed
// first (eps), with gelu GELU'd first, as w8a8_linear. For the int8 format and the output heads (where the logits
// take the rounding undiluted): the rows far finer than w8a8_linear's 8 bits (and than bf16's), the weights read
// as fast.
at::Tensor w8a16_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& wscale, int64_t N,
                        const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                        double eps, bool gelu) {
  const bool wide = musicgen_bridge::use_vnni512();
  TORCH_CHECK(wide || avx2(), "w8a16_linear needs a CPU with AVX2, FMA and F16C");
  const int64_t Kp = check_rows_and_weight("w8a16_linear", x, packed, N), blocks = packed.size(0), K = x.size(-1);
  const int64_t M = K ? x.numel() / K : 0;
  TORCH_CHECK(wscale.scalar_type() == at::kFloat && wscale.numel() == blocks * kBlock, "w8a16_linear: wscale (fp32) of ",
              blocks * kBlock);
  at::Tensor nw, nb;
  const RowPrep prep = musicgen_bridge::row_prep(norm_weight, norm_bias, eps, gelu, K, "w8a16_linear", nw, nb);
  const at::Tensor rows = x.contiguous(), scales = wscale.contiguous();
  // the rounded rows in the thread's reused scratch: 2 bytes a value
  musicgen_bridge::RowScratch& scratch = musicgen_bridge::row_scratch(M, 2 * Kp, K, 0);
  int16_t* q = reinterpret_cast<int16_t*>(scratch.rows.data());
  float* rs = scratch.scales.data();
  const float* xp = rows.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    rs[m] = wide ? musicgen_bridge::quantize_row16(xp + m * K, K, Kp, prep, scratch.tmp.data(), q + m * Kp)
                 : musicgen_bridge::quantize_row16_avx2(xp + m * K, K, Kp, prep, scratch.tmp.data(), q + m * Kp);
  at::Tensor y = at::empty(musicgen_bridge::out_shape(x, N), at::kFloat);
  const int8_t* w = packed.data_ptr<int8_t>();
  const float* ws = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kMinBytes / (Kp * kBlock));  // as w8a8_linear
  musicgen_bridge::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m = 0; m < M; m += 2) {
        const int8_t* wb = w + b * Kp * kBlock;
        const int16_t* qm = q + m * Kp;
        const bool two = M - m >= 2;
        if (wide && two) block_dot16<2>(wb, qm, Kp, yp + m * N, N, b * kBlock, ws, rs + m);
        else if (wide) block_dot16<1>(wb, qm, Kp, yp + m * N, N, b * kBlock, ws, rs + m);
        else if (two) block_dot16_avx2<2>(wb, qm, Kp, yp + m * N, N, b * kBlock, ws, rs + m);
        else block_dot16_avx2<1>(wb, qm, Kp, yp + m * N, N, b * kBlock, ws, rs + m);
      }
  });
  return y;
}


// The packed weight's transpose as bf16 [Kp, N] (q x wscale rounded to nearest even; Kp = K rounded up to 4, the
// padding rows zero): for many rows at once (a prefill), where a bf16 matmul on the CPU's matrix units (AMX) beats
// this kernel's dot products. The caller passes N padded to whole blocks and slices.
at::Tensor w8a8_widen(const at::Tensor& packed, const at::Tensor& wscale) {
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kChar && packed.size(2) == kBlock && packed.size(3) == 4 &&
              packed.is_contiguous() && wscale.scalar_type() == at::kFloat && wscale.numel() == packed.size(0) * kBlock,
              "w8a8_widen takes a weight packed by w8a8_pack and its scales");
  TORCH_CHECK(musicgen_bridge::widen_supported(), "w8a8_widen needs a CPU with AVX512_BF16");
  const at::Tensor scales = wscale.contiguous();
  const int64_t blocks = packed.size(0), steps = packed.size(1), N = blocks * kBlock;
  at::Tensor out = at::empty({steps * 4, N}, at::kBFloat16);
  const int8_t* w = packed.data_ptr<int8_t>();
  const float* ws = scales.data_ptr<float>();
  auto* yt = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  musicgen_bridge::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) widen_block(w + b * steps * kBlock * 4, steps, ws + b * kBlock, yt + b * kBlock, N);
  });
  return out;
}

// Whether the ops that have both take their AVX2 paths even on an AVX-512 CPU (w8a16_linear, int4_linear).
void avx2_only(bool on) { musicgen_bridge::avx2_only().store(on); }

TORCH_LIBRARY(musicgen_bridge, m) {
  m.def("avx2_only(bool on) -> ()", &avx2_only);
  m.def("w8a8_pack(Tensor weight) -> Tensor");
  m.def("w8a8_widen(Tensor packed, Tensor wscale) -> Tensor");
  m.def("w8a16_linear(Tensor x, Tensor packed, Tensor wscale, int n, Tensor? norm_weight=None, Tensor? norm_bias=None, "
        "float eps=1e-5, bool gelu=False) -> Tensor");
  m.def("w8a8_linear(Tensor x, Tensor packed, Tensor colsum, Tensor wscale, int n, Tensor? norm_weight=None, "
        "Tensor? norm_bias=None, float eps=1e-5, bool gelu=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(musicgen_bridge, CPU, m) {
  m.impl("w8a8_pack", &w8a8_pack);
  m.impl("w8a8_widen", &w8a8_widen);
  m.impl("w8a16_linear", &w8a16_linear);
  m.impl("w8a8_linear", &w8a8_linear);
}
