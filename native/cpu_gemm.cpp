// cpu_gemm.cpp - see cpu_gemm.h. GotoBLAS-style blocking:
//
//   for each NC-wide column block of this thread's share of C
//     for each KC-deep slice of K:   pack B[cols, slice] into NR-wide panels (converted to f32)
//       for each MC-tall row block:  pack A[rows, slice] into MR-tall panels
//         for each NR panel, for each MR panel: micro-kernel, an MR x NR tile held in registers
//
// C is the accumulator between K slices (loaded, updated, stored), which is exact, so an element's
// value depends only on the K order, never on the blocking or on which thread owns it. The bias
// and the GELU are applied to the tile while it is still in registers after the last K slice.

// FMAs must be emitted for `acc += a * b` (ISO C++ modes default to -ffp-contract=off in GCC).
// Contraction only changes rounding within this file; no result here is compared to an unfused
// reference bit for bit.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#if defined(__clang__)
#pragma clang fp contract(fast)
#endif

#include "cpu_gemm.h"

// The vector helpers below are always inlined into the target-specific wrappers, so no call with
// the psABI in question is ever emitted. The pragma silences the -Wpsabi warnings about vector
// returns; the note about passing 64-byte vectors by value ignores the pragma, so the helpers
// take their vector arguments by const reference instead.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>

#define CG_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define CG_X86 1
// GCC 12's AVX-512 shuffle intrinsics pass an "undefined" vector as the unused merge source, which
// -Wmaybe-uninitialized reports at the header's lines wherever they are inlined
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace cpu_gemm {
namespace {

// Shared blocking: NC columns of packed B per block (a multiple of every NR), KC deep (a multiple
// of 32 so quantised rows convert in whole blocks), MC rows of packed A (a multiple of every MR).
// KC 192 rather than 256: the B micro-panel (KC x 32 floats, 24 KB) and the A micro-panel then
// share a 48 KB L1 with room to spare; 2-4 % faster over the encoder's shapes on an AVX-512 Xeon,
// 128 slower. Results do not depend on KC (C carries exact f32 sums between slices).
// NC 768: a packed B block (KC x NC, 576 KB) and the C rows it updates (MC x NC, 432 KB) then both
// stay in a 2 MB L2 while the row blocks stream past; at 1536 they did not, and the wide shapes
// (qkv, MLP up) ran 4-6 % slower. Neither NC nor MC changes any result.
constexpr int64_t KC = 192;
constexpr int64_t NC = 768;
constexpr int64_t MC = 168;
constexpr int64_t MAX_MR = 14, MAX_NR = 32;
constexpr int64_t MAX_W = 16;   // floats per vector of the widest variant (B rows packed at once)
constexpr int64_t B_AHEAD = 8;  // pack_b prefetches the row this many rows ahead

constexpr size_t align16(size_t n) { return (n + 15) / 16 * 16; }  // keep sub-buffers 64-byte aligned

constexpr size_t SCRATCH_FLOATS = align16((size_t) (KC * NC))     // packed B
                                + align16((size_t) (MC * KC))     // packed A
                                + align16((size_t) (MAX_W * KC))  // converted B row slices
                                + align16((size_t) (MAX_MR * MAX_NR))  // edge tile
                                + align16((size_t) MAX_NR);       // zero-padded bias of an edge panel

// element-wise GELU with the exact erf, vectorised (vec, splat, load, store, gelu_erf)
#include "cpu_gemm_math.inc"

// Packing MR rows of A (each a contiguous K run) into the micro-kernel's [k][MR] layout is a
// transpose. One float at a time it is a scattered store per float, 4-9 % of the big encoder
// GEMMs and 14-16 % of the neck's (N = 256); in registers it is one 16 x 16 (AVX-512) or 8 x 8
// (AVX2) transpose per 16 or 8 values of K and one store per K step, which made the GEMMs ~4 %
// faster on an AVX-512 Xeon. B's NR-wide panels are the same transpose, W rows of B (one vector
// of a panel row) at a time: the weights are packed once per product, so where few rows of A
// share them (the projector's 256 tokens) scattered stores were a quarter of the product. The
// packed bytes are the same either way.
#ifdef CG_X86

// rows[0..R) -> dst[k * stride + i] for k in [0, kc); R <= 16, kc a multiple of 16
template <int R> __attribute__((target("avx512f"))) void pack_rows_avx512(const float * const * rows, int64_t kc, float * dst,
                                                                           int64_t stride) {
    static_assert(R <= 16, "one 16 x 16 transpose");
    const __m512 z = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k += 16) {
        __m512 r[16], t[16];
        for (int i = 0; i < R; i++) r[i] = _mm512_loadu_ps(rows[i] + k);
        for (int i = R; i < 16; i++) r[i] = z;
        // 2 x 2 blocks of single floats, then of pairs, then of 128-bit lanes twice
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4) {
            for (int j = 0; j < 2; j++) {
                const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
                r[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
                r[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            }
        }
        for (int i = 0; i < 16; i += 8) {
            for (int j = 0; j < 4; j++) {
                t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
                t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
            }
        }
        for (int j = 0; j < 8; j++) {
            r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
            r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
        }
        for (int j = 0; j < 16; j++) _mm512_mask_storeu_ps(dst + (k + j) * stride, (__mmask16) ((1u << R) - 1), r[j]);
    }
}

// rows[0..R) -> dst[k * stride + i] for k in [0, kc); R <= 8, kc a multiple of 8
template <int R> __attribute__((target("avx2,fma"))) void pack_rows_avx2(const float * const * rows, int64_t kc, float * dst,
                                                                          int64_t stride) {
    static_assert(R <= 8, "one 8 x 8 transpose");
    const __m256 z = _mm256_setzero_ps();
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(R), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t k = 0; k < kc; k += 8) {
        __m256 r[8], t[8];
        for (int i = 0; i < R; i++) r[i] = _mm256_loadu_ps(rows[i] + k);
        for (int i = R; i < 8; i++) r[i] = z;
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            for (int j = 0; j < 2; j++) {
                r[i + 2 * j] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0x44);
                r[i + 2 * j + 1] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0xee);
            }
        }
        for (int j = 0; j < 4; j++) {
            t[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
            t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
        }
        for (int j = 0; j < 8; j++) _mm256_maskstore_ps(dst + (k + j) * stride, lanes, t[j]);
    }
}
#endif

// Packs rows[0..R) (dst[k * stride + i]) over the largest multiple of W in [0, kc) with the
// transposing packer of this vector width, if there is one; returns how many K values it packed.
template <int W, int R> CG_INLINE int64_t pack_rows_vector(const float * const * rows, int64_t kc, float * dst,
                                                           int64_t stride) {
#ifdef CG_X86
    if constexpr (W == 16 && R <= 16) {
        const int64_t n = kc / 16 * 16;
        if (n) pack_rows_avx512<R>(rows, n, dst, stride);
        return n;
    }
    if constexpr (W == 8 && R <= 8) {
        const int64_t n = kc / 8 * 8;
        if (n) pack_rows_avx2<R>(rows, n, dst, stride);
        return n;
    }
#endif
    (void) rows; (void) kc; (void) dst; (void) stride;
    return 0;
}

// rows[0..n_rows) -> dst[k * stride + i] for k in [0, kc), i in [0, R); the rows past n_rows are
// zeros. All R rows there: the vector transpose, then the K tail one float at a time.
template <int W, int R> CG_INLINE void pack_rows(const float * const * rows, int n_rows, int64_t kc, float * dst,
                                                 int64_t stride) {
    const int64_t k_vec = n_rows == R ? pack_rows_vector<W, R>(rows, kc, dst, stride) : 0;
    for (int i = 0; i < R; i++) {
        if (i < n_rows) {
            for (int64_t k = k_vec; k < kc; k++) dst[k * stride + i] = rows[i][k];
        } else {
            for (int64_t k = 0; k < kc; k++) dst[k * stride + i] = 0.0f;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// one ISA variant: W floats per vector, MR x (NV * W) register tile

template <int W, int MR, int NV> struct variant {
    typedef typename vec<W>::f vf;
    typedef typename vec<W>::i vi;
    static constexpr int NR = NV * W;
    // rows per GELU batch: 4 independent vectors for NV = 2 (more spill registers on AVX2)
    static constexpr int GELU_ROWS = NV >= 4 ? 1 : 4 / NV;
    static_assert(MC % MR == 0 && NC % NR == 0 && MR <= MAX_MR && NR <= MAX_NR, "blocking");

    // acc(tile of C at c, row stride ldc) (+)= ap[kc x MR] . bp[kc x NR]; after the last K slice
    // (`last`) adds the bias (NR floats, or null) and applies the GELU.
    static CG_INLINE void micro(int64_t kc, const float * __restrict ap, const float * __restrict bp,
                                float * __restrict c, int64_t ldc, bool first, bool last,
                                const float * bias, bool gelu, const float * c_next) {
        // Bring the next tile of C towards L1 while this one computes: C is the accumulator
        // between K slices, and a C block of NC columns x all rows is bigger than the L3 for
        // N >= 1536, so without this every tile starts with MR x NR/16 cache misses to DRAM
        // (measured ~10% on the qkv/MLP-up shapes). One prefetch per 64-byte line, plus the
        // line of the last float in case the row is not 64-byte aligned.
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
            for (int v = 0; v < NR; v += 16) __builtin_prefetch(c_next + i * ldc + v, 1, 3);
            __builtin_prefetch(c_next + i * ldc + NR - 1, 1, 3);
        }
        vf acc[MR][NV];
        if (first) {
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[i][v] = vf{};
        } else {
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[i][v] = load<vf>(c + i * ldc + v * W);
        }
        for (int64_t k = 0; k < kc; k++) {
            vf b[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) b[v] = load<vf>(bp + v * W);
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++) {
                const float av = ap[i];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[i][v] += av * b[v];
            }
            ap += MR;
            bp += NR;
        }
        if (last) {
            if (bias) {
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) {
                    const vf bv = load<vf>(bias + v * W);
#pragma GCC unroll 16
                    for (int i = 0; i < MR; i++) acc[i][v] += bv;
                }
            }
        }
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) store(c + i * ldc + v * W, acc[i][v]);
        if (last && gelu) {
            // on the stored (L1-hot) tile, GELU_ROWS rows (GELU_ROWS * NV vectors) at a time: a
            // rolled outer loop keeps acc[][] in registers above
            static_assert(MR % GELU_ROWS == 0, "GELU batches");
            for (int i = 0; i < MR; i += GELU_ROWS) {
                vf x[GELU_ROWS * NV];
#pragma GCC unroll 8
                for (int j = 0; j < GELU_ROWS * NV; j++) x[j] = load<vf>(c + (i + j / NV) * ldc + (j % NV) * W);
                gelu_erf<vf, vi, GELU_ROWS * NV>(x);
#pragma GCC unroll 8
                for (int j = 0; j < GELU_ROWS * NV; j++) store(c + (i + j / NV) * ldc + (j % NV) * W, x[j]);
            }
        }
    }

    // rows [m0, m0+mc) x K slice [k0, k0+kc) of A -> MR-tall panels, [k][MR], zero rows past M
    static CG_INLINE void pack_a(const args & p, int64_t m0, int64_t mc, int64_t k0, int64_t kc, float * dst) {
        for (int64_t mp = 0; mp < mc; mp += MR) {
            float * panel = dst + mp * kc;
            const int64_t rows = std::min<int64_t>(MR, std::min(mc - mp, p.M - (m0 + mp)));
            const float * src[MR];
            for (int i = 0; i < rows; i++) {
                src[i] = p.a + (m0 + mp + i) * p.lda + k0;
                // Ask for the same K run of row m + MR (packed next) now: a run is only kc
                // floats of a long row (the im2col rows of the convs are 9-18 KB), too short
                // for the hardware prefetcher to lock on, so without this the packing waits
                // on DRAM for every row (measured ~1/3 of the neck conv's time). Past the last
                // row this asks for addresses past A, which a prefetch tolerates.
                const float * ahead = src[i] + MR * p.lda;
                for (int64_t k = 0; k < kc; k += 16) __builtin_prefetch(ahead + k, 0, 3);
                __builtin_prefetch(ahead + kc - 1, 0, 3);
            }
            pack_rows<W, MR>(src, (int) rows, kc, panel, MR);
        }
    }

    // B rows (= columns of C) [n0, n0+nc) x K slice [k0, k0+kc) -> NR-wide panels, [k][NR], f32;
    // W rows at a time (NR is a multiple of W, so a group never straddles two panels). Converted
    // types go through `conv` (W x KC floats) first.
    static CG_INLINE void pack_b(const args & p, ggml_to_float_t to_float, int64_t blck, size_t blck_bytes,
                                 int64_t n0, int64_t nc, int64_t k0, int64_t kc, float * dst, float * conv) {
        static_assert(NR % W == 0 && W <= MAX_W, "B groups");
        const int64_t ncp = (nc + NR - 1) / NR * NR;
        for (int64_t j0 = 0; j0 < ncp; j0 += W) {
            float * out = dst + (j0 / NR) * kc * NR + (j0 % NR);
            const float * src[W];
            int rows = 0;
            for (; rows < W; rows++) {
                const int64_t n = n0 + j0 + rows;
                if (j0 + rows >= nc || n >= p.N) break;
                const char * raw = (const char *) p.b + (size_t) n * p.ldb;
                // as in pack_a: prefetch this K run of a row packed a few rows later (B rows are
                // K-long weight rows, 18 KB for the projector's K = 4608)
                const char * ahead = raw + B_AHEAD * p.ldb + (size_t) (k0 / blck) * blck_bytes;
                const size_t run = (size_t) (kc / blck) * blck_bytes;
                for (size_t o = 0; o < run; o += 64) __builtin_prefetch(ahead + o, 0, 3);
                __builtin_prefetch(ahead + run - 1, 0, 3);
                if (!to_float) {
                    src[rows] = (const float *) raw + k0;
                } else {
                    float * row = conv + rows * KC;
                    to_float(raw + (size_t) (k0 / blck) * blck_bytes, row, kc);
                    src[rows] = row;
                }
            }
            pack_rows<W, W>(src, rows, kc, out, NR);
        }
    }

    static CG_INLINE void gemm(const args & p, int ith, int nth, float * scratch) {
        float * bp_buf = scratch;
        float * ap_buf = bp_buf + align16((size_t) (KC * NC));
        float * conv = ap_buf + align16((size_t) (MC * KC));
        float * tile = conv + align16((size_t) (MAX_W * KC));
        float * bias_pad = tile + align16((size_t) (MAX_MR * MAX_NR));

        const ggml_type_traits * tr = ggml_get_type_traits(p.btype);
        const ggml_to_float_t to_float = p.btype == GGML_TYPE_F32 ? nullptr : tr->to_float;
        const int64_t blck = tr->blck_size;
        const size_t blck_bytes = tr->type_size;

        // This thread's share: contiguous runs of NR panels (columns) or of MR rows. A thread packs
        // all of A under a column split and all of B under a row split, so split the longer side
        // (rows for the encoder's 4096-token matmuls, columns for the 256-token projector).
        const int64_t n_panels = (p.N + NR - 1) / NR;
        int64_t n_lo = 0, n_hi = p.N, m_lo = 0, m_hi = p.M;
        if (p.N > p.M) {
            const int64_t p0 = n_panels * ith / nth, p1 = n_panels * (ith + 1) / nth;
            n_lo = p0 * NR;
            n_hi = std::min(p.N, p1 * NR);
        } else {
            const int64_t units = (p.M + MR - 1) / MR;
            const int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
            m_lo = u0 * MR;
            m_hi = std::min(p.M, u1 * MR);
        }
        if (n_lo >= n_hi || m_lo >= m_hi) return;

        for (int64_t jc = n_lo; jc < n_hi; jc += NC) {
            const int64_t nc = std::min(NC, n_hi - jc);
            for (int64_t pc = 0; pc < p.K; pc += KC) {
                const int64_t kc = std::min(KC, p.K - pc);
                const bool first = pc == 0, last = pc + kc == p.K;
                pack_b(p, to_float, blck, blck_bytes, jc, nc, pc, kc, bp_buf, conv);
                for (int64_t ic = m_lo; ic < m_hi; ic += MC) {
                    const int64_t mc = std::min(MC, m_hi - ic);
                    pack_a(p, ic, mc, pc, kc, ap_buf);
                    for (int64_t jr = 0; jr < nc; jr += NR) {
                        const float * bpanel = bp_buf + (jr / NR) * kc * NR;
                        const int64_t n = jc + jr, nr = std::min<int64_t>(NR, nc - jr);
                        const float * bias = last ? block_bias(p.bias, n, nr, NR, bias_pad) : nullptr;
                        for (int64_t ir = 0; ir < mc; ir += MR) {
                            const float * apanel = ap_buf + ir * kc;
                            const int64_t m = ic + ir, mr = std::min<int64_t>(MR, mc - ir);
                            float * c = p.c + m * p.ldc + n;
                            // the tile the next micro() call works on (prefetch address only: it
                            // may lie past C at the very end, which a prefetch tolerates)
                            const float * c_next = ir + MR < mc ? c + MR * p.ldc : p.c + ic * p.ldc + n + NR;
                            if (mr == MR && nr == NR) {
                                micro(kc, apanel, bpanel, c, p.ldc, first, last, bias, p.gelu, c_next);
                                continue;
                            }
                            // edge tile: the same kernel on a full tile in scratch, so edge
                            // elements get the very same arithmetic as interior ones
                            if (!first) {
                                for (int64_t i = 0; i < mr; i++) memcpy(tile + i * NR, c + i * p.ldc, (size_t) nr * sizeof(float));
                            }
                            micro(kc, apanel, bpanel, tile, NR, first, last, bias, p.gelu, c_next);
                            for (int64_t i = 0; i < mr; i++) memcpy(c + i * p.ldc, tile + i * NR, (size_t) nr * sizeof(float));
                        }
                    }
                }
            }
        }
    }
};

// The instantiations. Each wrapper is compiled for its instruction set, and everything above is
// always_inline, so the whole GEMM (packing, kernel, GELU) is generated once per ISA.
#ifdef CG_X86
__attribute__((target("avx512f"))) void gemm_avx512(const args & p, int ith, int nth, float * s) {
    // 14 rows: 28 accumulators, the two B vectors and the broadcast A value fill 31 of the 32 zmm
    // registers, and each broadcast feeds more FMAs than at 12 rows; 3-4 % faster over the
    // encoder's shapes than 12 x 32 on an AVX-512 Xeon (five alternating runs, five wins)
    variant<16, 14, 2>::gemm(p, ith, nth, s);
}
__attribute__((target("avx2,fma"))) void gemm_avx2(const args & p, int ith, int nth, float * s) {
    variant<8, 6, 2>::gemm(p, ith, nth, s);    // 12 ymm accumulators of 16
}
#endif
void gemm_generic(const args & p, int ith, int nth, float * s) {
    variant<4, 4, 2>::gemm(p, ith, nth, s);    // SSE2 / NEON class: 8 accumulators of 16
}

// The FMA peak a GEMM is measured against (the test entry): C independent accumulator chains on
// registers only, so nothing but the FMA pipes and the clock limit it. 16 chains of zmm (32
// registers), 12 of ymm (16 registers: 16 chains plus the two operands would spill two chains to
// the stack every round); either is enough to keep two FMA pipes busy through a 4-5 cycle latency.
// Each chain is acc = acc * a + b (contracted to one FMA), which stays finite however long it
// runs; no chain starts at its fixed point 1 (a compiler folds such a chain away).
template <int W, int C> CG_INLINE float fma_chains(int64_t iters) {
    typedef typename vec<W>::f vf;
    vf acc[C];
    for (int j = 0; j < C; j++) acc[j] = splat<vf>((float) (j + 2));
    const vf a = splat<vf>(0.999f), b = splat<vf>(0.001f);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int j = 0; j < C; j++) acc[j] = acc[j] * a + b;
    }
    float sum = 0.0f;
    for (int j = 0; j < C; j++)
        for (int l = 0; l < W; l++) sum += acc[j][l];
    return sum;
}

constexpr int FMA_CHAINS_AVX512 = 16, FMA_CHAINS_AVX2 = 12;

#ifdef CG_X86
__attribute__((target("avx512f"))) float fma_chains_avx512(int64_t iters) {
    return fma_chains<16, FMA_CHAINS_AVX512>(iters);
}
__attribute__((target("avx2,fma"))) float fma_chains_avx2(int64_t iters) {
    return fma_chains<8, FMA_CHAINS_AVX2>(iters);
}
#endif

isa detect() {
#ifdef CG_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return isa::avx2;
#endif
    return isa::generic;
}

isa best() {
    static const isa chosen = detect();  // initialised once, thread-safe (C++11 statics)
    return chosen;
}

} // namespace

bool isa_available(isa which) {
    const isa b = best();
    switch (which) {
        case isa::best:
        case isa::generic: return true;
        case isa::avx2:    return b == isa::avx2 || b == isa::avx512;  // AVX-512F CPUs have AVX2+FMA
        case isa::avx512:  return b == isa::avx512;
    }
    return false;
}

const char * best_isa_name() {
    switch (best()) {
        case isa::avx512: return "avx512";
        case isa::avx2:   return "avx2";
        default:          return "generic";
    }
}

bool supports(ggml_type btype, int64_t K) {
    if (btype == GGML_TYPE_F32) return true;
    const ggml_type_traits * tr = ggml_get_type_traits(btype);
    return tr && tr->to_float && tr->blck_size > 0 && KC % tr->blck_size == 0 && K % tr->blck_size == 0;
}

size_t scratch_floats_per_thread() { return SCRATCH_FLOATS; }

scratch::~scratch() { ::operator delete(data_, std::align_val_t(64)); }

bool scratch::reserve(int n_threads) {
    if (n_threads < 1) return false;
    if (n_threads == n_) return true;
    const size_t bytes = (size_t) n_threads * SCRATCH_FLOATS * sizeof(float);
    float * p = (float *) ::operator new(bytes, std::align_val_t(64), std::nothrow);
    if (!p) return false;
    ::operator delete(data_, std::align_val_t(64));
    data_ = p;
    n_ = n_threads;
    return true;
}

bool run(const args & p, int ith, int nth, float * scratch, isa which) {
    if (nth < 1 || ith < 0 || ith >= nth || !scratch || p.M < 0 || p.N < 0 || p.K < 1 || !supports(p.btype, p.K)) {
        return false;
    }
    if (which == isa::best) which = best();
    if (!isa_available(which)) return false;
    switch (which) {
#ifdef CG_X86
        case isa::avx512: gemm_avx512(p, ith, nth, scratch); return true;
        case isa::avx2:   gemm_avx2(p, ith, nth, scratch); return true;
#endif
        default:          gemm_generic(p, ith, nth, scratch); return true;
    }
}

} // namespace cpu_gemm

// ---------------------------------------------------------------------------------------------
// test entry (cpu_gemm_test.h)

#include "cpu_gemm_test.h"

extern "C" size_t cpu_gemm_test_scratch_floats(void) { return cpu_gemm::scratch_floats_per_thread(); }

namespace {
// The variant a test entry names ("best", "generic", "avx2" or "avx512"), resolved to the one that
// runs; false for an unknown name or a variant this CPU lacks.
bool named_isa(const char * name, cpu_gemm::isa * out) {
    using cpu_gemm::isa;
    if (!name) return false;
    isa which;
    if (strcmp(name, "best") == 0) which = cpu_gemm::best();
    else if (strcmp(name, "generic") == 0) which = isa::generic;
    else if (strcmp(name, "avx2") == 0) which = isa::avx2;
    else if (strcmp(name, "avx512") == 0) which = isa::avx512;
    else return false;
    if (!cpu_gemm::isa_available(which)) return false;
    *out = which;
    return true;
}
} // namespace

extern "C" int cpu_gemm_test_run(const float * a, int64_t M, int64_t K, const void * b, int btype, int64_t ldb,
                                 int64_t N, const float * bias, int gelu, float * c, int n_threads, const char * isa_name,
                                 float * scratch_or_null) {
    using namespace cpu_gemm;
    if (!a || !b || !c || n_threads < 1 || btype < 0 || btype >= GGML_TYPE_COUNT || ldb < 1) return -1;
    cpu_gemm::isa which;
    if (!named_isa(isa_name, &which)) return -1;
    args p;
    p.a = a; p.lda = K;
    p.b = b; p.ldb = (size_t) ldb; p.btype = (ggml_type) btype;
    p.bias = bias; p.gelu = gelu != 0;
    p.c = c; p.ldc = N;
    p.M = M; p.N = N; p.K = K;
    if (scratch_or_null && ((uintptr_t) scratch_or_null % 64) != 0) return -1;
    scratch s;
    if (!scratch_or_null && !s.reserve(1)) return -2;
    float * work = scratch_or_null ? scratch_or_null : s.for_thread(0);
    for (int ith = 0; ith < n_threads; ith++) {
        if (!run(p, ith, n_threads, work, which)) return -1;
    }
    return 0;
}

extern "C" const char * cpu_gemm_test_best_isa(void) { return cpu_gemm::best_isa_name(); }

extern "C" double cpu_gemm_test_fma_peak(int64_t iters, const char * isa_name) {
    using namespace cpu_gemm;
    cpu_gemm::isa which;
    if (iters < 1 || !named_isa(isa_name, &which)) return -1.0;
#ifdef CG_X86
    const bool want512 = which == isa::avx512;
    if (!want512 && which != isa::avx2) return -1.0;  // the generic variant has no FMA loop
    volatile float sink = 0.0f;
    const auto t0 = std::chrono::steady_clock::now();
    sink = want512 ? fma_chains_avx512(iters) : fma_chains_avx2(iters);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    (void) sink;
    const double flops_per_iter = want512 ? FMA_CHAINS_AVX512 * 16.0 * 2.0 : FMA_CHAINS_AVX2 * 8.0 * 2.0;
    return s > 0 ? (double) iters * flops_per_iter / s / 1e9 : -1.0;
#else
    return -1.0;
#endif
}
