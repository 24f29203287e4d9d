// int4 and int8 weight-only kernels for x86 CPUs, and a whole decode step of a Llama-family model built
// from them (mosslm/quant/q4_kernel.py loads this file; tests/test_q4_kernel.py checks it). The file builds
// two ways: for AVX-512 VNNI (Xeon since Cascade Lake, EPYC since Zen 4), and with -DMOSS_AVX2 for CPUs
// with AVX2 and FMA only (most laptops, older EPYC), where u8 x s8 products are vpmaddubsw + vpmaddwd.
//
// Weights are mosslm's portable int4 layout (mosslm/quant/linear.py): a row of K inputs is K/2 bytes,
// input 2j in the low nibble of byte j and 2j+1 in the high one, with w = q * s + b per group of g inputs
// (s the group's scale, b = zero - 8 s), s and b kept as fp16 pairs (what llama.cpp's Q4_1 carries).
// Activations are quantized to int8 with a scale per 32 inputs, as llama.cpp's Q8 activations are, and the
// kernels step through blocks of 64, so the inner product is u8 x s8 `vpdpbusd`: 64 inputs in two
// instructions. Both parts of w x use the quantized x, so the rounding error is sum(w dx), not
// sum(q s dx) + b sum(dx) (q is 0..15, its large mean would not cancel).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // activation block: 32 weight bytes

#ifdef MOSS_AVX2
#define MOSS_TARGET __attribute__((target("avx2,fma,f16c")))
#else
#define MOSS_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

// The kernels ask for the weights 4 KB ahead of the loads: on 2 Zen 3 cores (AVX2) the int8 and int4 matmuls
// read 9-10 GB/s without it and 13-20 GB/s with it, and on 2 Zen 5 cores (AVX-512) a 56 MB int8 matrix at
// batch 1 39 against 80 GB/s (the hardware prefetcher alone does not keep up with a tile's rows read side by side).
constexpr int64_t kPrefetchBytes = 4096;
MOSS_TARGET inline void prefetch_ahead(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
}

// 8 int32 lanes, each the sum of 4 neighbouring u8 x s8 products of a and b (int4 values 0..15 times
// activations within +-127: vpmaddubsw's int16 pairs cannot saturate), plus acc
MOSS_TARGET inline __m256i dot_u4s8(__m256i acc, __m256i a0, __m256i b0, __m256i a1, __m256i b1) {
#ifdef MOSS_AVX2
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b0), _mm256_maddubs_epi16(a1, b1));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#else
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, a0, b0), a1, b1);
#endif
}

struct Activations {  // x [M, K] as int8 blocks (int4: even inputs first, then odd), a scale and a sum per 32
  std::vector<int8_t> q;
  std::vector<float> scale, sum;  // [M, K / 32] each: a block's two halves side by side
  int64_t rows = 0, k = 0;
};

// One block of 64 inputs as two halves of 32, each with its own scale amax / 127 (llama.cpp's Q8
// activations are blocks of 32 too: SmolLM2-135M's int8 perplexity over fp32 was +1.6% with one scale per 64
// inputs, +0.7% with one per 32, as without rounding the activations at all); values round(x * 127 / amax)
// as std::nearbyint rounds (to even), even inputs first where `interleave`. In 256-bit vectors: the scalar
// loop was a tenth of a 16-row step.
MOSS_TARGET void quantize_block(const float* in, bool interleave, int8_t* out, float* scale, float* sums) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 v[8];
  __m256i q[8];
  for (int h = 0; h < 2; ++h) {  // inputs 0-31 and 32-63
    __m256 amax = _mm256_setzero_ps();
    for (int i = 4 * h; i < 4 * h + 4; ++i) {
      v[i] = _mm256_loadu_ps(in + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], abs_mask));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    const float top = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    const __m256 inv = _mm256_set1_ps(top > 0.f ? 127.f / top : 0.f);
    for (int i = 4 * h; i < 4 * h + 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  // MXCSR: nearest, even
    const __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[4 * h], q[4 * h + 1]), _mm256_add_epi32(q[4 * h + 2], q[4 * h + 3]));
    const __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    const __m128i w = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0x4E));
    scale[h] = top / 127.f;
    sums[h] = scale[h] * static_cast<float>(_mm_cvtsi128_si32(_mm_add_epi32(w, _mm_shuffle_epi32(w, 0xB1))));
  }
  // int32 -> int8 in input order: packs interleave 128-bit lanes, the qword permute puts them back
  const __m256i order = _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0);
  __m256i bytes[2];
  for (int h = 0; h < 2; ++h) {
    const __m256i w01 = _mm256_packs_epi32(q[4 * h], q[4 * h + 1]), w23 = _mm256_packs_epi32(q[4 * h + 2], q[4 * h + 3]);
    bytes[h] = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
  }
  if (interleave) {  // per 16 bytes evens then odds, then the halves of the four lanes regrouped
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i a = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(bytes[0], split), 0xD8);  // e0-15 o0-15
    const __m256i b = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(bytes[1], split), 0xD8);  // e16-31 o16-31
    bytes[0] = _mm256_permute2x128_si256(a, b, 0x20);
    bytes[1] = _mm256_permute2x128_si256(a, b, 0x31);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes[0]);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), bytes[1]);
}

void quantize_rows(const float* x, int64_t rows, int64_t k, Activations& a, bool interleave = true) {
  const int64_t blocks = k / kBlock;
  a.rows = rows;
  a.k = k;
  a.q.resize(rows * k);
  a.scale.resize(rows * blocks * 2);
  a.sum.resize(rows * blocks * 2);
  for (int64_t i = 0; i < rows * blocks; ++i)
    quantize_block(x + i * kBlock, interleave, a.q.data() + i * kBlock, a.scale.data() + 2 * i, a.sum.data() + 2 * i);
}

// Byte j of a 32-byte block holds inputs 2j and 2j+1, so bytes 0-15 are the block's inputs 0-31 and
// vpdpbusd's int32 lanes 0-3 sum them, lanes 4-7 inputs 32-63: groups of 32 get a scale per 128-bit half.
// The offsets' part, b * (the group's sum of x), rides in the same accumulator: each lane of a half adds
// b * sum / 4. Four output rows at a time share the activation loads and keep four sums in flight.
// A row's groups are (scale, offset) fp16 pairs. Groups of 32: lanes 0-3 take group g0's value, lanes 4-7
// group g0 + 1's; larger groups cover whole blocks, so every lane takes g0's.
template <bool kHalfGroups>
MOSS_TARGET inline void group_values(const uint16_t* sb, int64_t g0, __m256& scale, __m256& offset) {
  if constexpr (kHalfGroups) {
    const __m256 four = _mm256_castps128_ps256(
        _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 2 * g0))));  // s0 b0 s1 b1
    scale = _mm256_permutevar8x32_ps(four, _mm256_set_epi32(2, 2, 2, 2, 0, 0, 0, 0));
    offset = _mm256_permutevar8x32_ps(four, _mm256_set_epi32(3, 3, 3, 3, 1, 1, 1, 1));
  } else {
    int32_t pair;
    std::memcpy(&pair, sb + 2 * g0, sizeof(pair));
    const __m256 two = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(pair)));  // s b
    scale = _mm256_permutevar8x32_ps(two, _mm256_setzero_si256());
    offset = _mm256_permutevar8x32_ps(two, _mm256_set1_epi32(1));
  }
}

MOSS_TARGET inline float hsum(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

#ifndef MOSS_AVX2  // AVX2 goes a block at a time in 256 bits
// Two blocks (128 inputs, 64 weight bytes) a 512-bit step, then one 64-input block in 256 bits if K is
// an odd number of blocks. Scales for the 512-bit step, per 32-bit lane group of 4: groups of 32 take
// g0..g0+3 (one per 128-bit quarter), 64 take g0 and g0+1 (one per half), larger ones g0 throughout.
template <int kGroup>  // 32, 64, or 0 for a group spanning both blocks
MOSS_TARGET inline void group_values2(const uint16_t* sb, int64_t g0, __m512& scale, __m512& offset) {
  if constexpr (kGroup == 32) {
    const __m512 v = _mm512_castps256_ps512(
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 2 * g0))));  // s0 b0 .. s3 b3
    scale = _mm512_permutexvar_ps(_mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0), v);
    offset = _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1), v);
  } else if constexpr (kGroup == 64) {
    const __m512 v = _mm512_castps128_ps512(
        _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 2 * g0))));  // s0 b0 s1 b1
    scale = _mm512_permutexvar_ps(_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0), v);
    offset = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1), v);
  } else {
    int32_t pair;
    std::memcpy(&pair, sb + 2 * g0, sizeof(pair));
    const __m512 v = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(pair)));  // s b
    scale = _mm512_permutexvar_ps(_mm512_setzero_si512(), v);
    offset = _mm512_permutexvar_ps(_mm512_set1_epi32(1), v);
  }
}
#endif

// kRows output rows times kCols activation rows: each weight block is unpacked once for all kCols rows.
template <int kGroup, int kRows, int kCols>
MOSS_TARGET void gemv_tile(const uint8_t* w, const uint16_t* sb, int64_t group, const Activations& a,
                           const float* xscale, const float* xsum, float* y, int64_t n_out, int64_t n, int64_t m0) {
  const int64_t k = a.k, blocks = k / kBlock, groups = k / group;
  const int shift = __builtin_ctzll(static_cast<uint64_t>(group / kBlock));  // block -> group, g >= 64
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[kCols][kRows];
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r) acc[c][r] = _mm256_setzero_ps();
  int64_t blk = 0;
#ifndef MOSS_AVX2
  const __m512i low2 = _mm512_set1_epi8(0x0F);
  __m512 acc2[kCols][kRows];
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r) acc2[c][r] = _mm512_setzero_ps();
  for (; blk + 2 <= blocks; blk += 2) {
    const int64_t g0 = kGroup == 32 ? 2 * blk : (kGroup == 64 ? blk : blk >> shift);
    __m512i lo[kRows], hi[kRows];
    __m512 scale[kRows], offset[kRows];
    for (int r = 0; r < kRows; ++r) {
      prefetch_ahead(w + (n + r) * (k / 2) + blk * 32);  // two blocks are a cache line
      const __m512i bytes = _mm512_loadu_si512(w + (n + r) * (k / 2) + blk * 32);
      lo[r] = _mm512_and_si512(bytes, low2);
      hi[r] = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low2);
      group_values2<kGroup>(sb + (n + r) * groups * 2, g0, scale[r], offset[r]);
    }
    for (int c = 0; c < kCols; ++c) {
      const int64_t m = m0 + c;
      const int8_t* x0 = a.q.data() + m * k + blk * kBlock;
      const __m512i xe = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + kBlock)), 1);
      const __m512i xo = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + 32))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + kBlock + 32)), 1);
      const __m512 xs2 = _mm512_loadu_ps(xscale + (m * blocks + blk) * 8);
      const __m512 xm2 = _mm512_loadu_ps(xsum + (m * blocks + blk) * 8);
      for (int r = 0; r < kRows; ++r) {
        __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], xe);
        d = _mm512_dpbusd_epi32(d, hi[r], xo);
        acc2[c][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(scale[r], xs2), acc2[c][r]);
        acc2[c][r] = _mm512_fmadd_ps(offset[r], xm2, acc2[c][r]);
      }
    }
  }
#endif
  for (; blk < blocks; ++blk) {  // AVX2: every block; VNNI: the last one when K is an odd number of them
    const int64_t g0 = kGroup == 32 ? 2 * blk : blk >> shift;
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* row = w + (n + r) * (k / 2) + blk * 32;
      if ((blk & 1) == 0) prefetch_ahead(row);  // a cache line is two blocks
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
      const __m256i lo = _mm256_and_si256(bytes, low);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
      __m256 scale, offset;
      group_values<kGroup == 32>(sb + (n + r) * groups * 2, g0, scale, offset);
      for (int c = 0; c < kCols; ++c) {
        const int64_t m = m0 + c;
        const int8_t* x0 = a.q.data() + m * k + blk * kBlock;
        const __m256i d = dot_u4s8(_mm256_setzero_si256(), lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0)),
                                   hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + 32)));
        const float* xs = xscale + (m * blocks + blk) * 8;
        const float* xm = xsum + (m * blocks + blk) * 8;
        acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(scale, _mm256_loadu_ps(xs)), acc[c][r]);
        acc[c][r] = _mm256_fmadd_ps(offset, _mm256_loadu_ps(xm), acc[c][r]);
      }
    }
  }
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r) {
#ifdef MOSS_AVX2
      y[(m0 + c) * n_out + n + r] = hsum(acc[c][r]);
#else
      y[(m0 + c) * n_out + n + r] = _mm512_reduce_add_ps(acc2[c][r]) + hsum(acc[c][r]);
#endif
    }
}

#ifdef MOSS_AVX2
// AVX2 with several activation rows: one weight row against kCols of them. AVX2 has 16 vector registers,
// and the tile above with its offsets in the loop spills a third of them (2 x 4: 90 GOP/s on 2 Zen 3
// cores); here a block costs its unpacking once, then per activation row two vpmaddubsw, the widening and
// one fma on the block's scale. The offsets' part, sum over groups of b * (the group's sum of x), runs
// after the loop on the fp16 (s, b) pairs as they lie, against `xoff`: per activation row (0, sum) pairs.
template <bool kHalfGroups, int kCols>
MOSS_TARGET void gemv_cols(const uint8_t* w, const uint16_t* sb, int64_t group, const Activations& a,
                           const float* xscale, const float* xoff, float* y, int64_t n_out, int64_t n, int64_t m0) {
  const int64_t k = a.k, blocks = k / kBlock, pairs = 2 * (k / group);
  const int shift = __builtin_ctzll(static_cast<uint64_t>(group / kBlock));  // block -> group, g >= 64
  const uint8_t* row = w + n * (k / 2);
  const uint16_t* srow = sb + n * pairs;
  const int8_t* xq = a.q.data() + m0 * k;
  const float* xs = xscale + m0 * blocks * 8;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[kCols];
  for (int c = 0; c < kCols; ++c) acc[c] = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const uint8_t* p = row + blk * 32;
    if ((blk & 1) == 0) prefetch_ahead(p);
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i lo = _mm256_and_si256(bytes, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
    __m256 scale, unused;
    group_values<kHalfGroups>(srow, kHalfGroups ? 2 * blk : blk >> shift, scale, unused);
    for (int c = 0; c < kCols; ++c) {
      const int8_t* x0 = xq + c * k + blk * kBlock;
      const __m256i two = _mm256_add_epi16(
          _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0))),
          _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + 32))));
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(two, ones)),
                               _mm256_mul_ps(scale, _mm256_loadu_ps(xs + (c * blocks + blk) * 8)), acc[c]);
    }
  }
  int64_t i = 0;
  for (; i + 8 <= pairs; i += 8) {
    const __m256 sbv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(srow + i)));
    for (int c = 0; c < kCols; ++c) acc[c] = _mm256_fmadd_ps(sbv, _mm256_loadu_ps(xoff + (m0 + c) * pairs + i), acc[c]);
  }
  float tail[kCols] = {};
  for (; i < pairs; i += 2) {
    const float b = _cvtsh_ss(srow[i + 1]);
    for (int c = 0; c < kCols; ++c) tail[c] += b * xoff[(m0 + c) * pairs + i + 1];
  }
  for (int c = 0; c < kCols; ++c) y[(m0 + c) * n_out + n] = hsum(acc[c]) + tail[c];
}
#endif

// one activation row: four output rows a tile; several: two output rows by four activation rows (AVX2:
// one output row by eight, then four)
template <int kGroup>
MOSS_TARGET void gemv_rows(const uint8_t* w, const uint16_t* sb, int64_t group, const Activations& a,
               const float* xscale, const float* xsum, const float* xoff, float* y, int64_t n_out, int64_t n0,
               int64_t n1) {
  int64_t m = 0;
#ifdef MOSS_AVX2
  for (; m + 8 <= a.rows; m += 8)
    for (int64_t n = n0; n < n1; ++n) gemv_cols<kGroup == 32, 8>(w, sb, group, a, xscale, xoff, y, n_out, n, m);
  for (; m + 4 <= a.rows; m += 4)
    for (int64_t n = n0; n < n1; ++n) gemv_cols<kGroup == 32, 4>(w, sb, group, a, xscale, xoff, y, n_out, n, m);
#else
  (void)xoff;
#endif
  for (; m + 4 <= a.rows; m += 4) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) gemv_tile<kGroup, 2, 4>(w, sb, group, a, xscale, xsum, y, n_out, n, m);
    for (; n < n1; ++n) gemv_tile<kGroup, 1, 4>(w, sb, group, a, xscale, xsum, y, n_out, n, m);
  }
  for (; m < a.rows; ++m) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) gemv_tile<kGroup, 4, 1>(w, sb, group, a, xscale, xsum, y, n_out, n, m);
    for (; n < n1; ++n) gemv_tile<kGroup, 1, 1>(w, sb, group, a, xscale, xsum, y, n_out, n, m);
  }
}

// int8 weights (one scale per output row) stored plus 128 as uint8, so vpdpbusd takes them as its unsigned
// operand and the int8 activations as the signed one: sum (w + 128) x = sum w x + 128 sum x, and the second
// term is one number per activation row (`shift` below), taken off at the end. AVX2's vpmaddubsw would
// saturate on (w + 128) x, so there the bytes go back to w (xor 0x80) and the sign moves onto x:
// |w| x sign(w) fits its int16 pairs, and the shift is 0.
// Grouped int8 (kGrouped: a scale per output row and `group` inputs, group a multiple of 64, `scale` [N, K/g])
// applies a row's scale per block; one scale per row (`scale` [N]) applies it once, at the end.
#ifdef MOSS_AVX2
constexpr bool kShifted = false;
template <bool kGrouped, int kRows, int kCols>
MOSS_TARGET void gemv8_tile(const uint8_t* w, const float* scale, int64_t group, const Activations& a, const float*,
                            float* y, int64_t n_out, int64_t n, int64_t m0) {
  const int64_t k = a.k, blocks = k / kBlock, groups = kGrouped ? k / group : 1;
  const int gshift = kGrouped ? __builtin_ctzll(static_cast<uint64_t>(group / kBlock)) : 0;  // block -> group
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256 acc[kCols][kRows];
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r) acc[c][r] = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    __m256i ws[kRows][2], wa[kRows][2];
    for (int r = 0; r < kRows; ++r)
      for (int h = 0; h < 2; ++h) {
        const uint8_t* row = w + (n + r) * k + blk * kBlock;
        if (h == 0) prefetch_ahead(row);
        const auto* p = reinterpret_cast<const __m256i*>(row + 32 * h);
        ws[r][h] = _mm256_xor_si256(_mm256_loadu_si256(p), flip);
        wa[r][h] = _mm256_sign_epi8(ws[r][h], ws[r][h]);
      }
    for (int c = 0; c < kCols; ++c) {
      const int64_t m = m0 + c;
      const int8_t* x0 = a.q.data() + m * k + blk * kBlock;
      const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0));
      const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + 32));
      const __m256 xs_lo = _mm256_set1_ps(a.scale[2 * (m * blocks + blk)]);
      const __m256 xs_hi = _mm256_set1_ps(a.scale[2 * (m * blocks + blk) + 1]);
      for (int r = 0; r < kRows; ++r) {
        // an int16 pair is at most 2 x 127 x 127: two of them would overflow, so each widens on its own
        const __m256i d_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[r][0], _mm256_sign_epi8(x_lo, ws[r][0])), ones);
        const __m256i d_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[r][1], _mm256_sign_epi8(x_hi, ws[r][1])), ones);
        if constexpr (kGrouped) {
          const __m256 part = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d_hi), xs_hi, _mm256_mul_ps(_mm256_cvtepi32_ps(d_lo), xs_lo));
          acc[c][r] = _mm256_fmadd_ps(part, _mm256_set1_ps(scale[(n + r) * groups + (blk >> gshift)]), acc[c][r]);
        } else {
          acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d_lo), xs_lo, acc[c][r]);
          acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d_hi), xs_hi, acc[c][r]);
        }
      }
    }
  }
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r) y[(m0 + c) * n_out + n + r] = (kGrouped ? 1.f : scale[n + r]) * hsum(acc[c][r]);
}
#else
constexpr bool kShifted = true;
template <bool kGrouped, int kRows, int kCols>
MOSS_TARGET void gemv8_tile(const uint8_t* w, const float* scale, int64_t group, const Activations& a, const float* shift,
                            float* y, int64_t n_out, int64_t n, int64_t m0) {
  const int64_t k = a.k, blocks = k / kBlock, groups = kGrouped ? k / group : 1;
  const int gshift = kGrouped ? __builtin_ctzll(static_cast<uint64_t>(group / kBlock)) : 0;  // block -> group
  const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 acc[kCols][kRows];
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r) acc[c][r] = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    __m512i wv[kRows];
    for (int r = 0; r < kRows; ++r) {
      prefetch_ahead(w + (n + r) * k + blk * kBlock);  // a block is a cache line
      wv[r] = _mm512_loadu_si512(w + (n + r) * k + blk * kBlock);
    }
    for (int c = 0; c < kCols; ++c) {
      const int64_t m = m0 + c;
      const __m512i xv = _mm512_loadu_si512(a.q.data() + m * k + blk * kBlock);
      const __m512 xs = _mm512_permutexvar_ps(halves, _mm512_castpd_ps(_mm512_castpd128_pd512(
          _mm_load_sd(reinterpret_cast<const double*>(a.scale.data() + 2 * (m * blocks + blk))))));
      if constexpr (kGrouped) {  // each half's share of the shift goes here: 128 x its sum, over its 8 lanes
        const __m512 xm = _mm512_mul_ps(_mm512_set1_ps(16.f), _mm512_permutexvar_ps(halves, _mm512_castpd_ps(
            _mm512_castpd128_pd512(_mm_load_sd(reinterpret_cast<const double*>(a.sum.data() + 2 * (m * blocks + blk)))))));
        for (int r = 0; r < kRows; ++r) {
          const __m512 part = _mm512_fmsub_ps(
              _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv)), xs, xm);
          acc[c][r] = _mm512_fmadd_ps(part, _mm512_set1_ps(scale[(n + r) * groups + (blk >> gshift)]), acc[c][r]);
        }
      } else {
        for (int r = 0; r < kRows; ++r)
          acc[c][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv)), xs,
                                      acc[c][r]);
      }
    }
  }
  for (int c = 0; c < kCols; ++c)
    for (int r = 0; r < kRows; ++r)
      y[(m0 + c) * n_out + n + r] = kGrouped ? _mm512_reduce_add_ps(acc[c][r])
                                             : scale[n + r] * (_mm512_reduce_add_ps(acc[c][r]) - shift[m0 + c]);
}
#endif

template <bool kGrouped>
MOSS_TARGET void gemv8_rows(const uint8_t* w, const float* scale, int64_t group, const Activations& a, const float* shift,
                            float* y, int64_t n_out, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= a.rows; m += 4) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) gemv8_tile<kGrouped, 2, 4>(w, scale, group, a, shift, y, n_out, n, m);
    for (; n < n1; ++n) gemv8_tile<kGrouped, 1, 4>(w, scale, group, a, shift, y, n_out, n, m);
  }
  for (; m < a.rows; ++m) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) gemv8_tile<kGrouped, 4, 1>(w, scale, group, a, shift, y, n_out, n, m);
    for (; n < n1; ++n) gemv8_tile<kGrouped, 1, 1>(w, scale, group, a, shift, y, n_out, n, m);
  }
}

struct Linear4 {  // int4, or int8 where `scale8` is set
  const uint8_t* w;
  const uint16_t* sb;  // int4: fp16 (scale, offset) pairs, [N, K/g, 2]
  int64_t n, k, group;  // int8: group 0 is one scale per output row
  const float* scale8 = nullptr;  // int8: fp32 [N] or [N, K/g]; w is [N, K], the values plus 128
};

// A linear's weights as the kernels read them: int4 (uint8 [N, K/2] with fp16 [N, K/g, 2]) or int8
// (uint8 [N, K] with fp32 [N], or [N, K/g] in groups), told apart by the second tensor; an int8 layer's
// group size is read off its scales' shape.
Linear4 linear4(const torch::Tensor& w, const torch::Tensor& sb, int64_t group) {
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.is_contiguous() && w.dim() == 2, "weights: contiguous uint8 [N, *]");
  if (sb.dtype() == torch::kFloat) {
    TORCH_CHECK(sb.is_contiguous() && (sb.dim() == 1 || sb.dim() == 2) && sb.size(0) == w.size(0),
                "int8 scales: contiguous fp32 [N] or [N, K/g]");
    TORCH_CHECK(w.size(1) % kBlock == 0, "int8 input size must be a multiple of 64");
    const int64_t group8 = sb.dim() == 2 ? w.size(1) / std::max<int64_t>(1, sb.size(1)) : 0;
    TORCH_CHECK(sb.dim() == 1 || (group8 % kBlock == 0 && ((group8 / kBlock) & (group8 / kBlock - 1)) == 0 &&
                                  group8 * sb.size(1) == w.size(1)),
                "int8 groups must be 64 inputs times a power of two, dividing K");
    Linear4 l{w.data_ptr<uint8_t>(), nullptr, w.size(0), w.size(1), group8};
    l.scale8 = sb.data_ptr<float>();
    return l;
  }
  const int64_t k = w.size(1) * 2;
  TORCH_CHECK(group >= 32 && (group & (group - 1)) == 0 && k % group == 0 && k % kBlock == 0,
              "group size must be a power of two from 32 dividing K, and K a multiple of 64");
  TORCH_CHECK(sb.dtype() == torch::kHalf && sb.is_contiguous() && sb.dim() == 3 && sb.size(0) == w.size(0) &&
              sb.size(1) == k / group && sb.size(2) == 2, "int4 scales and offsets: contiguous fp16 [N, K/g, 2]");
  return {w.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(sb.data_ptr<at::Half>()), w.size(0), k, group};
}

MOSS_TARGET void matmul(const Linear4& l, const float* x, int64_t rows, float* y, Activations& scratch) {
  if (l.scale8 != nullptr) {
    quantize_rows(x, rows, l.k, scratch, /*interleave=*/false);
    std::vector<float> shift(rows, 0.f);  // 128 x the quantized row's sum
    for (int64_t m = 0; kShifted && l.group == 0 && m < rows; ++m)  // grouped tiles take it per block
      for (int64_t i = 0; i < 2 * (l.k / kBlock); ++i) shift[m] += 128.f * scratch.sum[m * 2 * (l.k / kBlock) + i];
    const int64_t grain = std::max<int64_t>(4, 65536 / std::max<int64_t>(1, rows * l.k));
    at::parallel_for(0, l.n, grain, [&](int64_t n0, int64_t n1) {
      if (l.group > 0)
        gemv8_rows<true>(l.w, l.scale8, l.group, scratch, shift.data(), y, l.n, n0, n1);
      else
        gemv8_rows<false>(l.w, l.scale8, 0, scratch, shift.data(), y, l.n, n0, n1);
    });
    return;
  }
  quantize_rows(x, rows, l.k, scratch);
  // per block of each row: each half's scale in its four lanes, and (rows gemv_tile takes) each half's sum / 4
  const int64_t blocks = l.k / kBlock;
  // (float arrays read with unaligned loads: a std::vector<__m256> is not 32-byte aligned here)
  std::vector<float> xscale(rows * blocks * 8), xsum(rows * blocks * 8);
#ifdef MOSS_AVX2
  const int64_t tiled = rows >= 4 ? rows / 4 * 4 : 0;  // rows gemv_cols takes: they read `xoff` instead
#else
  const int64_t tiled = 0;
#endif
  for (int64_t i = 0; i < rows * blocks; ++i) {
    const float whole = (scratch.sum[2 * i] + scratch.sum[2 * i + 1]) / 8;  // a group covers whole blocks
    for (int lane = 0; lane < 8; ++lane) {  // lanes 0-3 sum inputs 0-31, lanes 4-7 inputs 32-63
      xscale[i * 8 + lane] = scratch.scale[2 * i + (lane >= 4)];
      if (i >= tiled * blocks) xsum[i * 8 + lane] = l.group > 32 ? whole : scratch.sum[2 * i + (lane >= 4)] / 4;
    }
  }
  // per activation row, (0, the group's sum of x) for each group's (s, b) pair: gemv_cols' offsets
  std::vector<float> xoff;
#ifdef MOSS_AVX2
  if (rows >= 4) {
    const int64_t groups = l.k / l.group, halves_per_group = l.group / 32;
    xoff.assign(rows * groups * 2, 0.f);
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t j = 0; j < halves_per_group; ++j)  // scratch.sum holds each 32 inputs' sum
          xoff[(m * groups + g) * 2 + 1] += scratch.sum[m * blocks * 2 + g * halves_per_group + j];
  }
#endif
  // output rows per task: at least 16 KB of weights x rows, worth waking a thread for
  const int64_t grain = std::max<int64_t>(4, 32768 / std::max<int64_t>(1, rows * l.k));
  at::parallel_for(0, l.n, grain, [&](int64_t n0, int64_t n1) {
    if (l.group == 32)
      gemv_rows<32>(l.w, l.sb, l.group, scratch, xscale.data(), xsum.data(), xoff.data(), y, l.n, n0, n1);
    else if (l.group == 64)
      gemv_rows<64>(l.w, l.sb, l.group, scratch, xscale.data(), xsum.data(), xoff.data(), y, l.n, n0, n1);
    else
      gemv_rows<0>(l.w, l.sb, l.group, scratch, xscale.data(), xsum.data(), xoff.data(), y, l.n, n0, n1);
  });
}

// The float vector the attention and swiglu loops run on: 16 lanes with AVX-512, 8 with AVX2.
#ifdef MOSS_AVX2
using vfloat = __m256;
constexpr int64_t kLanes = 8;
MOSS_TARGET inline vfloat vload(const float* p) { return _mm256_loadu_ps(p); }
MOSS_TARGET inline vfloat vload(const at::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
MOSS_TARGET inline vfloat vload(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
MOSS_TARGET inline void vstore(float* p, vfloat v) { _mm256_storeu_ps(p, v); }
MOSS_TARGET inline vfloat vset(float v) { return _mm256_set1_ps(v); }
MOSS_TARGET inline vfloat vadd(vfloat a, vfloat b) { return _mm256_add_ps(a, b); }
MOSS_TARGET inline vfloat vsub(vfloat a, vfloat b) { return _mm256_sub_ps(a, b); }
MOSS_TARGET inline vfloat vmul(vfloat a, vfloat b) { return _mm256_mul_ps(a, b); }
MOSS_TARGET inline vfloat vdiv(vfloat a, vfloat b) { return _mm256_div_ps(a, b); }
MOSS_TARGET inline vfloat vmin(vfloat a, vfloat b) { return _mm256_min_ps(a, b); }
MOSS_TARGET inline vfloat vmax(vfloat a, vfloat b) { return _mm256_max_ps(a, b); }
MOSS_TARGET inline vfloat vfmadd(vfloat a, vfloat b, vfloat c) { return _mm256_fmadd_ps(a, b, c); }
MOSS_TARGET inline vfloat vfnmadd(vfloat a, vfloat b, vfloat c) { return _mm256_fnmadd_ps(a, b, c); }
MOSS_TARGET inline float vsum(vfloat v) { return hsum(v); }
MOSS_TARGET inline vfloat vround(vfloat v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p * 2^n for whole n in [-127, 127]: n + 127 is the exponent field (0 gives 0, near enough for e^-88)
MOSS_TARGET inline vfloat vscale2(vfloat p, vfloat n) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#else
using vfloat = __m512;
constexpr int64_t kLanes = 16;
MOSS_TARGET inline vfloat vload(const float* p) { return _mm512_loadu_ps(p); }
MOSS_TARGET inline vfloat vload(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
MOSS_TARGET inline vfloat vload(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
MOSS_TARGET inline void vstore(float* p, vfloat v) { _mm512_storeu_ps(p, v); }
MOSS_TARGET inline vfloat vset(float v) { return _mm512_set1_ps(v); }
MOSS_TARGET inline vfloat vadd(vfloat a, vfloat b) { return _mm512_add_ps(a, b); }
MOSS_TARGET inline vfloat vsub(vfloat a, vfloat b) { return _mm512_sub_ps(a, b); }
MOSS_TARGET inline vfloat vmul(vfloat a, vfloat b) { return _mm512_mul_ps(a, b); }
MOSS_TARGET inline vfloat vdiv(vfloat a, vfloat b) { return _mm512_div_ps(a, b); }
MOSS_TARGET inline vfloat vmin(vfloat a, vfloat b) { return _mm512_min_ps(a, b); }
MOSS_TARGET inline vfloat vmax(vfloat a, vfloat b) { return _mm512_max_ps(a, b); }
MOSS_TARGET inline vfloat vfmadd(vfloat a, vfloat b, vfloat c) { return _mm512_fmadd_ps(a, b, c); }
MOSS_TARGET inline vfloat vfnmadd(vfloat a, vfloat b, vfloat c) { return _mm512_fnmadd_ps(a, b, c); }
MOSS_TARGET inline float vsum(vfloat v) { return _mm512_reduce_add_ps(v); }
MOSS_TARGET inline vfloat vround(vfloat v) {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
MOSS_TARGET inline vfloat vscale2(vfloat p, vfloat n) { return _mm512_scalef_ps(p, n); }
#endif

// exp(x) per lane: 2^n * e^r with |r| <= ln2/2, e^r by its Taylor series to r^7 (relative error
// ~1e-7, what std::exp's float gives to rounding); the scalar std::exp was a fifth of a decode step.
MOSS_TARGET inline vfloat vexp(vfloat x) {
  x = vmax(vmin(x, vset(88.f)), vset(-88.f));
  const vfloat n = vround(vmul(x, vset(1.44269504088896341f)));
  vfloat r = vfnmadd(n, vset(0.693145751953125f), x);
  r = vfnmadd(n, vset(1.428606765330187045e-06f), r);
  vfloat p = vset(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = vfmadd(p, r, vset(c));
  return vscale2(p, n);
}

// scores -> exp(score - best) in place over `padded` lanes (the padding's -inf gives 0); returns 1 / their sum
MOSS_TARGET inline float exp_in_place(float* row, int64_t padded, float best) {
  vfloat total = vset(0.f);
  for (int64_t t = 0; t < padded; t += kLanes) {
    const vfloat e = vexp(vsub(vload(row + t), vset(best)));
    vstore(row + t, e);
    total = vadd(total, e);
  }
  return 1.f / vsum(total);
}

// one query row's attention for one head over keys 0..len-1 of its slot: out = softmax(q k * scaling) v
template <typename T>
MOSS_TARGET void attend(const float* q, const T* keys, const T* values, int64_t len, int64_t d, float scaling,
                        float* out, std::vector<float>& scores) {
  const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
  scores.assign(padded, -INFINITY);
  float best = -INFINITY;
  for (int64_t t = 0; t < len; ++t) {
    vfloat acc = vset(0.f);
    for (int64_t i = 0; i < d; i += kLanes) acc = vfmadd(vload(q + i), vload(keys + t * d + i), acc);
    scores[t] = vsum(acc) * scaling;
    best = std::max(best, scores[t]);
  }
  const float inv = exp_in_place(scores.data(), padded, best);
  vfloat acc[1024 / kLanes];  // on the stack, so aligned (a std::vector of vectors is not, here)
  for (int64_t i = 0; i < d / kLanes; ++i) acc[i] = vset(0.f);
  for (int64_t t = 0; t < len; ++t) {
    const vfloat p = vset(scores[t] * inv);
    for (int64_t i = 0; i < d / kLanes; ++i) acc[i] = vfmadd(p, vload(values + t * d + i * kLanes), acc[i]);
  }
  for (int64_t i = 0; i < d / kLanes; ++i) vstore(out + i * kLanes, acc[i]);
}

#ifdef MOSS_AVX2
// AVX2: the query heads that share a key/value head (GQA) go through its cache together, up to three at a
// time and four keys at a time, so each cached row is loaded and widened once for all of them and a score
// costs a quarter of a horizontal sum. (The one-head loop above spends half its time on the sums, and with
// 16 rows at 400 positions attention was 40% of SmolLM2's int4 decode step.)
template <typename T, int kG>
MOSS_TARGET void attend_shared(const float* q, const T* keys, const T* values, int64_t len, int64_t d,
                               float scaling, float* out, std::vector<float>& buffer) {
  const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
  buffer.assign(kG * padded, -INFINITY);
  float* scores = buffer.data();
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(T));  // the cache is read 4 KB ahead, as weights are
  int64_t t = 0;
  for (; t + 4 <= len; t += 4) {
    __m256 acc[kG][4];
    for (int g = 0; g < kG; ++g)
      for (int j = 0; j < 4; ++j) acc[g][j] = _mm256_setzero_ps();
    for (int64_t line = 0; line < 4 * row_bytes; line += 64)
      prefetch_ahead(reinterpret_cast<const uint8_t*>(keys + t * d) + line);
    for (int64_t i = 0; i < d; i += kLanes)
      for (int j = 0; j < 4; ++j) {
        const __m256 key = vload(keys + (t + j) * d + i);
        for (int g = 0; g < kG; ++g) acc[g][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * d + i), key, acc[g][j]);
      }
    for (int g = 0; g < kG; ++g) {  // [k0 k1 k2 k3 | the same, upper halves]: four scores at once
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[g][0], acc[g][1]), _mm256_hadd_ps(acc[g][2], acc[g][3]));
      const __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      _mm_storeu_ps(scores + g * padded + t, _mm_mul_ps(four, _mm_set1_ps(scaling)));
    }
  }
  for (; t < len; ++t)
    for (int g = 0; g < kG; ++g) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += kLanes) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * d + i), vload(keys + t * d + i), acc);
      scores[g * padded + t] = hsum(acc) * scaling;
    }
  float inv[kG];
  for (int g = 0; g < kG; ++g) {
    float* row = scores + g * padded;
    inv[g] = exp_in_place(row, padded, *std::max_element(row, row + len));
  }
  for (int64_t i = 0; i < d; i += 2 * kLanes) {
    __m256 o[kG][2];
    for (int g = 0; g < kG; ++g) o[g][0] = o[g][1] = _mm256_setzero_ps();
    for (int64_t u = 0; u < len; ++u) {
      for (int64_t line = 0; i == 0 && line < row_bytes; line += 64)  // the first pass asks for the lines ahead
        prefetch_ahead(reinterpret_cast<const uint8_t*>(values + u * d) + line);
      const __m256 v0 = vload(values + u * d + i), v1 = vload(values + u * d + i + kLanes);
      for (int g = 0; g < kG; ++g) {
        const __m256 p = _mm256_broadcast_ss(scores + g * padded + u);
        o[g][0] = _mm256_fmadd_ps(p, v0, o[g][0]);
        o[g][1] = _mm256_fmadd_ps(p, v1, o[g][1]);
      }
    }
    for (int g = 0; g < kG; ++g) {
      _mm256_storeu_ps(out + g * d + i, _mm256_mul_ps(o[g][0], _mm256_set1_ps(inv[g])));
      _mm256_storeu_ps(out + g * d + i + kLanes, _mm256_mul_ps(o[g][1], _mm256_set1_ps(inv[g])));
    }
  }
}
#endif

template <typename T>
MOSS_TARGET void write_kv(torch::Tensor& cache, int64_t slot, int64_t head, int64_t pos, const float* v, int64_t d) {
  T* dst = cache.data_ptr<T>() + ((slot * cache.size(1) + head) * cache.size(2) + pos) * d;
  int64_t i = 0;
  if constexpr (std::is_same_v<T, at::Half>)  // F16C, rounding to nearest even as c10's conversion does
    for (; i + 8 <= d; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < d; ++i) dst[i] = static_cast<T>(v[i]);
}

template <typename T>
void attention(const torch::Tensor& kc, const torch::Tensor& vc, const float* q, const std::vector<int64_t>& slots,
               const std::vector<int64_t>& positions, int64_t heads, int64_t kv_heads, int64_t d, float scaling,
               int64_t q_stride, float* out) {
  const int64_t rows = static_cast<int64_t>(slots.size()), groups = heads / kv_heads;
  const int64_t max_len = kc.size(2);
  const T* kbase = kc.data_ptr<T>();
  const T* vbase = vc.data_ptr<T>();
#ifdef MOSS_AVX2
  const int64_t chunks = (groups + 2) / 3;  // query heads of one key/value head, three at a time
  at::parallel_for(0, rows * kv_heads * chunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> buffer;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i / (kv_heads * chunks), kvh = (i / chunks) % kv_heads, g0 = (i % chunks) * 3;
      const int64_t h = kvh * groups + g0, offset = ((slots[m] * kv_heads + kvh) * max_len) * d;
      const float* qh = q + m * q_stride + h * d;
      float* oh = out + m * heads * d + h * d;
      const int64_t len = positions[m] + 1;
      switch (std::min<int64_t>(3, groups - g0)) {
        case 3: attend_shared<T, 3>(qh, kbase + offset, vbase + offset, len, d, scaling, oh, buffer); break;
        case 2: attend_shared<T, 2>(qh, kbase + offset, vbase + offset, len, d, scaling, oh, buffer); break;
        default: attend_shared<T, 1>(qh, kbase + offset, vbase + offset, len, d, scaling, oh, buffer);
      }
    }
  });
  return;
#endif
  at::parallel_for(0, rows * heads, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i / heads, h = i % heads, kvh = h / groups;
      const int64_t offset = ((slots[m] * kv_heads + kvh) * max_len) * d;
      attend<T>(q + m * q_stride + h * d, kbase + offset, vbase + offset, positions[m] + 1, d, scaling,
                out + m * heads * d + h * d, scores);
    }
  });
}

// out[i] = silu(gate[i]) * up[i]
MOSS_TARGET void swiglu(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vfloat g = vload(gate + i);
    const vfloat e = vexp(vsub(vset(0.f), g));
    vstore(out + i, vmul(vdiv(g, vadd(vset(1.f), e)), vload(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

// The per-row steps between the matmuls, in vectors (scalar they were 7% of a 16-row SmolLM2 step).
// RMSNorm: the mean square summed in fp32 lanes, 4 accumulators (transformers sums it in fp32 too).
MOSS_TARGET void rms_norm(const float* x, const float* weight, int64_t rows, int64_t h, double eps, float* out) {
  for (int64_t m = 0; m < rows; ++m) {
    const float* xr = x + m * h;
    vfloat acc[4] = {vset(0.f), vset(0.f), vset(0.f), vset(0.f)};
    int64_t i = 0;
    for (; i + 4 * kLanes <= h; i += 4 * kLanes)
      for (int j = 0; j < 4; ++j) {
        const vfloat v = vload(xr + i + j * kLanes);
        acc[j] = vfmadd(v, v, acc[j]);
      }
    float ss = vsum(vadd(vadd(acc[0], acc[1]), vadd(acc[2], acc[3])));
    for (; i < h; ++i) ss += xr[i] * xr[i];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(h) + static_cast<float>(eps));
    i = 0;
    for (; i + kLanes <= h; i += kLanes) vstore(out + m * h + i, vmul(vmul(vload(xr + i), vset(r)), vload(weight + i)));
    for (; i < h; ++i) out[m * h + i] = xr[i] * r * weight[i];
  }
}

// rotate-half RoPE, as transformers' Llama: (a, b) -> (a cos - b sin, b cos + a sin) for the two halves
MOSS_TARGET void rope(float* v, const float* cos, const float* sin, int64_t d) {
  const int64_t half = d / 2;
  int64_t i = 0;
  for (; i + kLanes <= half; i += kLanes) {
    const vfloat a = vload(v + i), b = vload(v + i + half);
    vstore(v + i, vfnmadd(b, vload(sin + i), vmul(a, vload(cos + i))));
    vstore(v + i + half, vfmadd(a, vload(sin + i + half), vmul(b, vload(cos + i + half))));
  }
  for (; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

}  // namespace

// x [..., K] times int4 or int8 weights (see linear4); group is the int4 group size (int8 reads its scales' shape)
torch::Tensor q4_matmul(torch::Tensor x, torch::Tensor w, torch::Tensor sb, int64_t group) {
  const Linear4 l = linear4(w, sb, group);
  TORCH_CHECK(x.size(-1) == l.k, "input size ", x.size(-1), " does not match the weights' ", l.k);
  auto rows = x.reshape({-1, l.k}).to(torch::kFloat).contiguous();
  auto y = torch::empty({rows.size(0), l.n}, torch::kFloat);
  Activations scratch;
  matmul(l, rows.data_ptr<float>(), rows.size(0), y.data_ptr<float>(), scratch);
  auto shape = x.sizes().vec();
  shape.back() = l.n;
  return y.view(shape).to(x.scalar_type());
}

// One decode step through every layer: x [M, H] fp32 residual stream (one new token per row), cos/sin
// [M, D] rotary tables of each row's position, rows writing their key/value at (slot, position) and attending
// over positions 0..position of their slot (the cache in fp32, bf16 or fp16). `layers` holds 10 tensors a layer: input norm weight, q/k/v
// (w, sb), o (w, sb), post-attention norm weight, gate/up (w, sb), down (w, sb); norms fp32.
// Returns the residual stream after the last layer (the final norm and the head stay in Python).
torch::Tensor q4_decode_step(torch::Tensor x, std::vector<torch::Tensor> layers, torch::Tensor cos, torch::Tensor sin,
                             std::vector<int64_t> slots, std::vector<int64_t> positions, std::vector<torch::Tensor> k_cache,
                             std::vector<torch::Tensor> v_cache, int64_t heads, int64_t kv_heads, int64_t head_dim,
                             int64_t group, double eps, double scaling) {
  constexpr int64_t kPerLayer = 10;
  TORCH_CHECK(layers.size() % kPerLayer == 0 && layers.size() / kPerLayer == k_cache.size(), "layer tensors");
  TORCH_CHECK(x.dtype() == torch::kFloat && x.is_contiguous() && x.dim() == 2, "x: contiguous fp32 [M, H]");
  for (size_t i = 0; i < k_cache.size(); ++i) {
    const auto dt = k_cache[i].dtype();
    TORCH_CHECK((dt == torch::kFloat || dt == torch::kBFloat16 || dt == torch::kHalf) && v_cache[i].dtype() == dt &&
                k_cache[i].is_contiguous() && v_cache[i].is_contiguous() && k_cache[i].dim() == 4 &&
                v_cache[i].sizes() == k_cache[i].sizes(), "KV cache: contiguous fp32, bf16 or fp16 [slots, kv heads, len, d]");
  }
  TORCH_CHECK(head_dim % 16 == 0 && head_dim <= 1024 && heads % kv_heads == 0, "head layout");
  const int64_t rows = x.size(0), hidden = x.size(1), d = head_dim;
  TORCH_CHECK(static_cast<int64_t>(slots.size()) == rows && static_cast<int64_t>(positions.size()) == rows, "rows");
  x = x.clone();
  float* xs = x.data_ptr<float>();
  const float* cs = cos.data_ptr<float>();
  const float* sn = sin.data_ptr<float>();
  const int64_t q_out = heads * d, kv_out = kv_heads * d;
  std::vector<float> h(rows * hidden), attn(rows * q_out), big;
  Activations scratch;
  for (size_t layer = 0; layer < k_cache.size(); ++layer) {
    const torch::Tensor* t = layers.data() + layer * kPerLayer;
    const Linear4 qkv = linear4(t[1], t[2], group), o = linear4(t[3], t[4], group);
    const Linear4 gate_up = linear4(t[6], t[7], group), down = linear4(t[8], t[9], group);
    TORCH_CHECK(qkv.n == q_out + 2 * kv_out && qkv.k == hidden && o.n == hidden && down.n == hidden, "shapes");
    rms_norm(xs, t[0].data_ptr<float>(), rows, hidden, eps, h.data());
    big.resize(rows * std::max(qkv.n, gate_up.n));
    matmul(qkv, h.data(), rows, big.data(), scratch);
    torch::Tensor& kc = k_cache[layer];
    torch::Tensor& vc = v_cache[layer];
    for (int64_t m = 0; m < rows; ++m) {
      float* row = big.data() + m * qkv.n;
      for (int64_t hd = 0; hd < heads + kv_heads; ++hd) rope(row + hd * d, cs + m * d, sn + m * d, d);
      for (int64_t hd = 0; hd < kv_heads; ++hd) {
        const float* kv_k = row + q_out + hd * d;
        const float* kv_v = row + q_out + kv_out + hd * d;
        if (kc.dtype() == torch::kBFloat16) {
          write_kv<at::BFloat16>(kc, slots[m], hd, positions[m], kv_k, d);
          write_kv<at::BFloat16>(vc, slots[m], hd, positions[m], kv_v, d);
        } else if (kc.dtype() == torch::kHalf) {
          write_kv<at::Half>(kc, slots[m], hd, positions[m], kv_k, d);
          write_kv<at::Half>(vc, slots[m], hd, positions[m], kv_v, d);
        } else {
          write_kv<float>(kc, slots[m], hd, positions[m], kv_k, d);
          write_kv<float>(vc, slots[m], hd, positions[m], kv_v, d);
        }
      }
    }
    if (kc.dtype() == torch::kBFloat16)
      attention<at::BFloat16>(kc, vc, big.data(), slots, positions, heads, kv_heads, d, scaling, qkv.n, attn.data());
    else if (kc.dtype() == torch::kHalf)
      attention<at::Half>(kc, vc, big.data(), slots, positions, heads, kv_heads, d, scaling, qkv.n, attn.data());
    else
      attention<float>(kc, vc, big.data(), slots, positions, heads, kv_heads, d, scaling, qkv.n, attn.data());
    matmul(o, attn.data(), rows, h.data(), scratch);
    for (int64_t i = 0; i < rows * hidden; ++i) xs[i] += h[i];
    rms_norm(xs, t[5].data_ptr<float>(), rows, hidden, eps, h.data());
    matmul(gate_up, h.data(), rows, big.data(), scratch);
    const int64_t inter = gate_up.n / 2;
    std::vector<float> act(rows * inter);
    for (int64_t m = 0; m < rows; ++m)
      swiglu(big.data() + m * gate_up.n, big.data() + m * gate_up.n + inter, inter, act.data() + m * inter);
    matmul(down, act.data(), rows, h.data(), scratch);
    for (int64_t i = 0; i < rows * hidden; ++i) xs[i] += h[i];
  }
  return x;
}

// whether this CPU runs the instructions this build was made for
bool cpu_supported() {
#ifdef MOSS_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#endif
}

std::string isa() {
#ifdef MOSS_AVX2
  return "avx2";
#else
  return "avx512_vnni";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("q4_matmul", &q4_matmul, "int4 or int8 weights x activations (int8 blocks)");
  m.def("q4_decode_step", &q4_decode_step, "one decode step of a Llama-family model with int4/int8 linears");
  m.def("cpu_supported", &cpu_supported);
  m.def("isa", &isa);
}
