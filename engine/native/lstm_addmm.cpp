// The codec LSTM's matmuls: input + x @ w.T for a few rows x (one per stream each frame, or a push's frames for
// the input projection) against weights read once. Each frame's recurrent product reads the recurrent weights
// ([4H, H], 16 MB per layer in fp32), so they may be fp16: half the bytes, widened in registers (F16C), the
// arithmetic fp32. fp16 keeps 11 significant bits (bf16: 8), so its rounding is 8x finer than bf16's (the codec's
// output it moves: benchmarks/RESULTS.md). fp32 weights too: each output's sum runs in one fixed order whatever the
// thread count or the state of a BLAS library, so a seed gives the same audio in any process.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>

#include "parallel.h"
#include "quantize_row.h"

namespace {

constexpr int64_t kRows = 4;  // weight rows per pass: their chunks stay in L1 for every input row
constexpr int64_t kAhead = 16384;  // prefetch distance in each weight row's stream

__attribute__((target("avx2,fma,f16c"), always_inline)) inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2,fma,f16c"), always_inline)) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma,f16c"), always_inline)) inline float widen(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("avx2,fma,f16c"), always_inline)) inline float widen(float f) { return f; }

// out[b, n0 + r] = input[b, n0 + r] + x[b] . w[n0 + r] for r < R, every b: R weight rows read once, each input
// row against them.
template <int R, typename W>
__attribute__((target("avx2,fma,f16c"))) void rows_dot(const float* input, const float* x, const W* w, float* out,
                                                        int64_t B, int64_t K, int64_t N, int64_t n0) {
  const int64_t K8 = K / 8 * 8;
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x + b * K;
    __m256 acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
      const __m256 xv = _mm256_loadu_ps(xb + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const W* row = w + (n0 + r) * K + k;
        // One thread alone cannot keep enough misses in flight from the rows' addresses: ask kAhead bytes ahead.
        if (b == 0 && (k * sizeof(W)) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(row) + kAhead, _MM_HINT_T0);
        acc[r] = _mm256_fmadd_ps(xv, load8(row), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float s = musicgen_bridge::sum8(acc[r]);
      for (int64_t k = K8; k < K; ++k) s += xb[k] * widen(w[(n0 + r) * K + k]);
      out[b * N + n0 + r] = input[b * N + n0 + r] + s;
    }
  }
}

template <typename W>
void all_rows(const float* ip, const float* xp, const W* wp, float* op, int64_t B, int64_t K, int64_t N) {
  // Groups of kRows weight rows; a thread takes at least kMinBytes of weights (fewer would cost more than they save).
  const int64_t groups = (N + kRows - 1) / kRows;
  const int64_t grain = std::max<int64_t>(1, musicgen_bridge::kMinBytes / std::max<int64_t>(1, kRows * K * int64_t(sizeof(W))));
  musicgen_bridge::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * kRows;
      if (n0 + kRows <= N) {
        rows_dot<kRows>(ip, xp, wp, op, B, K, N, n0);
      } else {
        for (int64_t n = n0; n < N; ++n) rows_dot<1>(ip, xp, wp, op, B, K, N, n);
      }
    }
  });
}

}  // namespace


// input [B, N] fp32, x [B, K] fp32, w [N, K] fp16 or fp32 (contiguous): input + x @ w.T, fp32, each output summed
// in one fixed order.
at::Tensor lstm_addmm(const at::Tensor& input_, const at::Tensor& x_, const at::Tensor& w) {
  TORCH_CHECK(musicgen_bridge::avx2(), "lstm_addmm needs a CPU with AVX2, FMA and F16C");
  TORCH_CHECK(w.dim() == 2 && (w.scalar_type() == at::kHalf || w.scalar_type() == at::kFloat) && w.is_contiguous(),
              "lstm_addmm: w is contiguous fp16 or fp32 [N, K]");
  TORCH_CHECK(x_.dim() == 2 && x_.scalar_type() == at::kFloat && x_.size(1) == w.size(1), "lstm_addmm: x is fp32 [B, K]");
  TORCH_CHECK(input_.scalar_type() == at::kFloat && input_.sizes() == at::IntArrayRef({x_.size(0), w.size(0)}),
              "lstm_addmm: input is fp32 [B, N]");
  const at::Tensor x = x_.contiguous(), input = input_.contiguous();
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = at::empty({B, N}, at::kFloat);
  if (w.scalar_type() == at::kHalf)
    all_rows(input.data_ptr<float>(), x.data_ptr<float>(), reinterpret_cast<const uint16_t*>(w.data_ptr<at::Half>()),
             out.data_ptr<float>(), B, K, N);
  else
    all_rows(input.data_ptr<float>(), x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(), B, K, N);
  return out;
}

TORCH_LIBRARY_FRAGMENT(musicgen_bridge, m) {
  m.def("lstm_addmm(Tensor input, Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(musicgen_bridge, CPU, m) {
  m.impl("lstm_addmm", &lstm_addmm);
}
