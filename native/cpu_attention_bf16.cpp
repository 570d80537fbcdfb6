// cpu_attention_bf16.cpp - see cpu_attention_bf16.h. Both products are one product (A . B into C,
// accumulating or not): on AMX it blocks C as 32 x 32 and runs amx_tiles::step over K in steps of
// 32 (amx_tiles.h); with dot products it blocks C as 8 x 32 in registers (bf16_dot.h).

#include "cpu_attention_bf16.h"

#include "amx_tiles.h"
#include "bf16_dot.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#define CAB_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define CAA_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))
#endif

namespace cpu_attn_bf16 {

#if defined(__x86_64__)

CAB_TARGET void to_bf16_rows(const float * src, int64_t lds, int64_t rows, int64_t cols, int64_t cols_p,
                             uint16_t * dst) {
    for (int64_t r = 0; r < rows; r++) {
        const float * s = src + r * lds;
        uint16_t * d = dst + r * cols_p;
        int64_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            const __m512 lo = _mm512_loadu_ps(s + c), hi = _mm512_loadu_ps(s + c + 16);
            _mm512_storeu_si512((void *) (d + c), (__m512i) _mm512_cvtne2ps_pbh(hi, lo));
        }
        for (; c < cols; c++) d[c] = to_bf16(s[c]);
        if (cols_p > c) memset(d + c, 0, (size_t) (cols_p - c) * 2);
    }
}

namespace {
// lanes [0, n) of 16 (n may be <= 0 or >= 16)
CAB_TARGET inline __mmask16 first_lanes(int64_t n) {
    return n >= 16 ? (__mmask16) 0xffff : n <= 0 ? (__mmask16) 0 : (__mmask16) ((1u << n) - 1);
}
// 16 channels from c of x (+ bias), zero past hd or for a null x
CAB_TARGET inline __m512 load16(const float * x, const float * bias, int64_t c, int64_t hd) {
    if (!x) return _mm512_setzero_ps();
    const __mmask16 m = first_lanes(hd - c);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + c);
    return bias ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + c)) : v;
}
} // namespace

CAB_TARGET void pack_kv_pair(const float * const k[2], const float * const kb[2], const float * const v[2],
                             const float * const vb[2], int64_t hd, int64_t j, int64_t keys, int64_t dp, int64_t dv,
                             uint16_t * K, uint16_t * V) {
    // K: key j + t is lane (j + t) % 16 of its panel; channel pair i of the panel is the dword at
    // i * 16 + lane, so one 32-channel step of a key is 16 dwords 16 apart (a scatter)
    const __m512i stride16 = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
    for (int t = 0; t < 2; t++) {
        uint32_t * panel = (uint32_t *) (K + ((j + t) / 16) * (dp / 2) * 32) + (j + t) % 16;
        for (int64_t c = 0; c < dp; c += 32) {
            const __m512bh pairs = _mm512_cvtne2ps_pbh(load16(k[t], kb[t], c + 16, hd), load16(k[t], kb[t], c, hd));
            _mm512_i32scatter_epi32(panel + (c / 2) * 16, stride16, (__m512i) pairs, 4);
        }
    }
    // V: panel c / 16 holds, per key pair, 16 dwords (v[j][c], v[j + 1][c]): one 64-byte store
    for (int64_t c = 0; c < dv; c += 16) {
        const __m512i lo = _mm512_cvtepu16_epi32((__m256i) _mm512_cvtneps_pbh(load16(v[0], vb[0], c, hd)));
        const __m512i hi = _mm512_cvtepu16_epi32((__m256i) _mm512_cvtneps_pbh(load16(v[1], vb[1], c, hd)));
        _mm512_storeu_si512((void *) (V + (c / 16) * (keys / 2) * 32 + (j / 2) * 32),
                            _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

namespace {

// Both products are C[rows x cols] (row stride ldc floats) = (accumulate ? C : 0) + A . B with A
// rows of bf16 (row stride `depth`) and B in panels of 16 columns, K pair i of a panel at i * 32
// bf16: scores with A = Q, B = K (depth dp), the update with A = P, B = V (depth = keys).

CAA_TARGET void product_amx(const uint16_t * a, int64_t rows, int64_t depth, const uint16_t * b, int64_t cols,
                            float * c, int64_t ldc, bool accumulate) {
    const size_t as = (size_t) depth * 2, panel = (size_t) (depth / 2) * 32;
    for (int64_t rb = 0; rb < rows; rb += 32) {
        const uint16_t * a0 = a + rb * depth, * a1 = a0 + 16 * depth;
        for (int64_t cb = 0; cb < cols; cb += 32) {
            const uint16_t * b0 = b + (size_t) (cb / 16) * panel, * b1 = b0 + panel;
            float * cc = c + rb * ldc + cb;
            if (accumulate) amx_tiles::load_c(cc, (size_t) ldc);
            else amx_tiles::zero_c();
            for (int64_t d = 0; d < depth; d += 32) {
                // K pair d/2 of a panel starts at (d/2) * 32 bf16
                amx_tiles::step(a0 + d, a1 + d, as, b0 + d * 16, b1 + d * 16);
            }
            amx_tiles::store_c(cc, (size_t) ldc);
        }
    }
}

// the dot products' register block: 8 rows x 32 columns (a 32-row block of the caller is four)
constexpr int DOT_ROWS = 8;

CAB_TARGET void product_dot(const uint16_t * a, int64_t rows, int64_t depth, const uint16_t * b, int64_t cols,
                            float * c, int64_t ldc, bool accumulate) {
    // column blocks outside: a block's two panels (depth * 64 bytes) stay in L1 over the rows
    const size_t panel = (size_t) (depth / 2) * 32;
    for (int64_t cb = 0; cb < cols; cb += 32) {
        const uint16_t * b0 = b + (size_t) (cb / 16) * panel, * b1 = b0 + panel;
        for (int64_t rb = 0; rb < rows; rb += DOT_ROWS) {
            bf16_dot::block<DOT_ROWS>(a + rb * depth, depth, b0, b1, depth / 2, c + rb * ldc + cb, ldc, accumulate);
        }
    }
}

void product(cpu_gemm_bf16::isa which, const uint16_t * a, int64_t rows, int64_t depth, const uint16_t * b,
             int64_t cols, float * c, int64_t ldc, bool accumulate) {
    if (which == cpu_gemm_bf16::isa::amx) product_amx(a, rows, depth, b, cols, c, ldc, accumulate);
    else product_dot(a, rows, depth, b, cols, c, ldc, accumulate);
}

} // namespace

void scores(cpu_gemm_bf16::isa which, const uint16_t * q, int64_t rows, int64_t dp, const uint16_t * k, int64_t keys,
            float * s, int64_t lds) {
    product(which, q, rows, dp, k, keys, s, lds, false);
}

void update(cpu_gemm_bf16::isa which, const uint16_t * p, int64_t rows, int64_t keys, const uint16_t * v, int64_t dv,
            float * o, int64_t ldo) {
    product(which, p, rows, keys, v, dv, o, ldo, true);
}

#else  // no bf16 products outside x86-64: never called (cpu_attention.cpp selects them only where they exist)

void to_bf16_rows(const float *, int64_t, int64_t, int64_t, int64_t, uint16_t *) {}
void pack_kv_pair(const float * const[2], const float * const[2], const float * const[2], const float * const[2],
                  int64_t, int64_t, int64_t, int64_t, int64_t, uint16_t *, uint16_t *) {}
void scores(cpu_gemm_bf16::isa, const uint16_t *, int64_t, int64_t, const uint16_t *, int64_t, float *, int64_t) {}
void update(cpu_gemm_bf16::isa, const uint16_t *, int64_t, int64_t, const uint16_t *, int64_t, float *, int64_t) {}

#endif

} // namespace cpu_attn_bf16
