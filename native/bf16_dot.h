// bf16_dot.h - the one AVX512_BF16 register block every bf16 dot-product kernel here is made of
// (cpu_gemm_bf16.cpp's GEMM, cpu_attention_bf16.cpp's scores and update): R rows x 32 columns of
// f32 C in 2R accumulators, over K pairs of bf16. Its right operand is the layout the AMX kernels
// read too: two panels of 16 columns, K pair i of a panel at i * 32 bf16 (one 64-byte vector).
// x86-64 only; callers are compiled for AVX512_BF16 and run only where CPUID has it.

#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define BF16_DOT_INLINE inline __attribute__((always_inline, target("avx512f,avx512bw,avx512bf16")))

namespace bf16_dot {

// C[R x 32] (row stride ldc floats) = (accumulate ? C : 0) + A . B over `pairs` K pairs: A rows of
// bf16 (row stride lda), b0 / b1 the two panels. Per K pair: two panel loads, one broadcast of each
// row's pair, 2R VDPBF16PS; R <= 12 leaves the registers the operands need.
template <int R>
BF16_DOT_INLINE void block(const uint16_t * a, int64_t lda, const uint16_t * b0, const uint16_t * b1, int64_t pairs,
                           float * c, int64_t ldc, bool accumulate) {
    static_assert(R >= 1 && R <= 12, "2R accumulators, two panel vectors and a broadcast must fit 32 registers");
    __m512 acc[R][2];
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) {
        acc[i][0] = accumulate ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
        acc[i][1] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
    }
    for (int64_t kk = 0; kk < pairs; kk++) {
        const __m512bh w0 = (__m512bh) _mm512_loadu_si512((const void *) (b0 + kk * 32));
        const __m512bh w1 = (__m512bh) _mm512_loadu_si512((const void *) (b1 + kk * 32));
#pragma GCC unroll 12
        for (int i = 0; i < R; i++) {
            int32_t pair;
            memcpy(&pair, a + i * lda + kk * 2, sizeof pair);
            const __m512bh av = (__m512bh) _mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, w0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, w1);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) {
        _mm512_storeu_ps(c + i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
    }
}

} // namespace bf16_dot

#undef BF16_DOT_INLINE
#endif
