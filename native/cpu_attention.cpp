// cpu_attention.cpp - fused, tiled attention with SAM's decomposed rel-pos (see cpu_attention.h).
//
// One task = (group, head, block of query rows). A task packs K and V of its (group, head) into
// per-thread scratch (skipped when the thread's previous task had the same pair), then walks the
// keys in chunks of whole key rows with an online softmax:
//   S = (q*scale) K^T        register-blocked micro-kernel, K packed as [c][NR keys] panels
//   S += rh[q, ky] + rw[q, kx] rh/rw = unscaled q . rel-pos tables, computed per task
//   P = exp(S - m)           running row max m and sum l, earlier output rescaled
//   O += P V                 same micro-kernel, V packed as [key][NR channels] panels
// and finally writes O / l into the output. The work of a task never depends on which thread
// runs it or how many threads there are, so results are bit-identical for any thread count.
//
// The kernels are written once over the vector width (GCC/Clang vector extensions) and compiled
// for AVX-512, AVX2+FMA and a baseline; the variant is picked once from the running CPU.

#include "cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

// -std=c++17 turns FMA contraction off in GCC; the kernels are written as a*b+c and want FMAs
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define CA_INLINE inline __attribute__((always_inline))

namespace {

constexpr int64_t Q_ROWS_TARGET = 64;    // query rows per task: S tile and O stay in L1/L2
constexpr int64_t CHUNK_KEYS    = 256;   // keys per online-softmax step (rounded to key rows)
constexpr size_t  ALIGN_FLOATS  = 16;    // 64-byte aligned sub-buffers

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
size_t  round_up_z(size_t a) { return (a + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }

// tiling of one layer (group side S, head dim hd) for a micro-kernel of MR rows x NR columns
struct plan {
    int64_t S = 0, T = 0, hd = 0, hdp = 0;
    int64_t qb = 0;      // query rows per task, a multiple of MR
    int64_t nqb = 0;     // query blocks per group
    int64_t kr = 0;      // key rows (of S keys) per chunk
    int64_t kc = 0;      // keys per full chunk
    int64_t kcp = 0;     // kc rounded up to NR: the packed chunk width
    int64_t nchunk = 0;
    size_t o_kp = 0, o_vp = 0, o_qu = 0, o_qs = 0, o_rh = 0, o_rw = 0, o_s = 0, o_o = 0, o_m = 0, o_l = 0;
    size_t total = 0;    // floats per thread
};

plan make_plan(int64_t S, int64_t hd, int MR, int NR) {
    plan p;
    p.S = S;
    p.T = S * S;
    p.hd = hd;
    p.hdp = round_up(hd, NR);
    p.qb = round_up(ceil_div(p.T, ceil_div(p.T, Q_ROWS_TARGET)), MR);
    p.nqb = ceil_div(p.T, p.qb);
    p.kr = std::min(S, std::max<int64_t>(1, CHUNK_KEYS / S));
    p.kc = p.kr * S;
    p.kcp = round_up(p.kc, NR);
    p.nchunk = ceil_div(S, p.kr);
    size_t off = 0;
    auto take = [&](size_t n) { const size_t o = off; off += round_up_z(n); return o; };
    p.o_kp = take((size_t) (p.nchunk * p.kcp * hd));
    p.o_vp = take((size_t) (p.hdp * p.T));
    p.o_qu = take((size_t) (p.qb * hd));
    p.o_qs = take((size_t) (p.qb * hd));
    p.o_rh = take((size_t) (p.qb * S));
    p.o_rw = take((size_t) (p.qb * S));
    p.o_s  = take((size_t) (p.qb * p.kcp));
    p.o_o  = take((size_t) (p.qb * p.hdp));
    p.o_m  = take((size_t) p.qb);
    p.o_l  = take((size_t) p.qb);
    p.total = off;
    return p;
}

// ---------------------------------------------------------------------------------------------
// vector helpers (W floats)

template <int W> struct vt {
    typedef float f __attribute__((vector_size(W * 4)));
    typedef int32_t i __attribute__((vector_size(W * 4)));
    typedef float fu __attribute__((vector_size(W * 4), aligned(4), may_alias));  // unaligned access
};

template <int W> CA_INLINE typename vt<W>::f vload(const float * p) { return *(const typename vt<W>::fu *) p; }
template <int W> CA_INLINE void vstore(float * p, const typename vt<W>::f & v) { *(typename vt<W>::fu *) p = v; }
template <int W> CA_INLINE typename vt<W>::f vsplat(float s) {
    typename vt<W>::f r;
    for (int i = 0; i < W; i++) r[i] = s;
    return r;
}
template <int W> CA_INLINE float hsum(const typename vt<W>::f & v) {
    float s = 0.0f;
    for (int i = 0; i < W; i++) s += v[i];
    return s;
}
template <int W> CA_INLINE float hmax(const typename vt<W>::f & v) {
    float s = v[0];
    for (int i = 1; i < W; i++) s = std::max(s, v[i]);
    return s;
}

// exp(x) for x <= 0 (softmax arguments): Cody-Waite range reduction to r in [-ln2/2, ln2/2],
// Cephes' degree-5 polynomial for (exp(r) - 1 - r) / r^2, 2^n through the exponent bits.
// Max relative error ~1.2e-7; below -87 it returns exp(-87) instead of a denormal (which is
// ~0 next to the row maximum's exp(0) = 1).
template <int W> CA_INLINE typename vt<W>::f vexp(const typename vt<W>::f & xin) {
    typedef typename vt<W>::f vf;
    typedef typename vt<W>::i vi;
    const vf lo = vsplat<W>(-87.0f);
    const vf x = xin < lo ? lo : xin;
    const vf magic = vsplat<W>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const vf n = (x * vsplat<W>(1.44269504088896341f) + magic) - magic;
    vf r = x - n * vsplat<W>(0.693359375f);
    r = r - n * vsplat<W>(-2.12194440e-4f);
    vf p = vsplat<W>(1.9875691500e-4f);
    p = p * r + vsplat<W>(1.3981999507e-3f);
    p = p * r + vsplat<W>(8.3334519073e-3f);
    p = p * r + vsplat<W>(4.1665795894e-2f);
    p = p * r + vsplat<W>(1.6666665459e-1f);
    p = p * r + vsplat<W>(5.0000001201e-1f);
    p = p * (r * r) + r + vsplat<W>(1.0f);
    const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf) e;
}

template <int W> CA_INLINE float sexp(float x) { return vexp<W>(vsplat<W>(x))[0]; }

template <int W> CA_INLINE float dot(const float * a, const float * b, int64_t n) {
    typedef typename vt<W>::f vf;
    vf acc = vsplat<W>(0.0f);
    int64_t i = 0;
    for (; i + W <= n; i += W) acc += vload<W>(a + i) * vload<W>(b + i);
    float s = hsum<W>(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// C[MR][NV*W] (+)= A[MR][K] (row stride lda, broadcast) x B[K][NV*W] (contiguous panel)
template <int W, int MR, int NV>
CA_INLINE void micro(int64_t K, const float * A, int64_t lda, const float * B, float * C, int64_t ldc, bool acc) {
    typedef typename vt<W>::f vf;
    constexpr int NR = W * NV;
    vf c[MR][NV];
    for (int i = 0; i < MR; i++) {
        for (int v = 0; v < NV; v++) c[i][v] = acc ? vload<W>(C + i * ldc + v * W) : vsplat<W>(0.0f);
    }
    for (int64_t k = 0; k < K; k++) {
        vf b[NV];
        for (int v = 0; v < NV; v++) b[v] = vload<W>(B + k * NR + v * W);
        for (int i = 0; i < MR; i++) {
            const vf a = vsplat<W>(A[i * lda + k]);
            for (int v = 0; v < NV; v++) c[i][v] += a * b[v];
        }
    }
    for (int i = 0; i < MR; i++) {
        for (int v = 0; v < NV; v++) vstore<W>(C + i * ldc + v * W, c[i][v]);
    }
}

// ---------------------------------------------------------------------------------------------
// the op

struct op_view {
    const char * qkv;                   // [3D, G, G, B]
    size_t nb1, nb2, nb3;
    const float * bias;                 // [3D]
    const float * tab_h, * tab_w;       // [hd, S, S] or null
    float * out;                        // [D, G, G, B] contiguous
    int64_t B, nw;                      // views, windows per side
};

template <int W, int MR, int NV>
CA_INLINE void run(const cpu_attn_params & pr, const op_view & ov, float * scratch, const plan & pl,
                   int64_t t0, int64_t t1) {
    typedef typename vt<W>::f vf;
    constexpr int NR = W * NV;
    const int64_t D = pr.D, H = pr.H, hd = pr.hd, S = pr.S, G = pr.G, T = pl.T, hdp = pl.hdp;
    const int64_t nw = ov.nw;
    float * Kp = scratch + pl.o_kp, * Vp = scratch + pl.o_vp;
    float * qu = scratch + pl.o_qu, * qs = scratch + pl.o_qs;
    float * rh = scratch + pl.o_rh, * rw = scratch + pl.o_rw;
    float * Sb = scratch + pl.o_s, * O = scratch + pl.o_o, * M = scratch + pl.o_m, * L = scratch + pl.o_l;
    const float * bias = ov.bias;
    const bool add_bias = !pr.qkv_has_bias;

    // q/k/v of one token of view b at grid (y, x), or the bias for padding outside the grid
    auto token = [&](int64_t b, int64_t y, int64_t x) -> const float * {
        if (y >= G || x >= G) return nullptr;
        return (const float *) (ov.qkv + b * ov.nb3 + y * ov.nb2 + x * ov.nb1);
    };

    int64_t packed_g = -1, packed_h = -1;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t qbi = t % pl.nqb, h = (t / pl.nqb) % H, g = t / (pl.nqb * H);
        const int64_t b = g / (nw * nw), wy = (g / nw) % nw, wx = g % nw;
        const int64_t vh = std::min(S, G - wy * S), vw = std::min(S, G - wx * S);  // real tokens
        const int64_t q0 = qbi * pl.qb, q1 = std::min(vh * vw, q0 + pl.qb);
        if (q0 >= q1) continue;  // an edge window has fewer real queries
        const int64_t nr = q1 - q0, nrp = round_up(nr, MR);

        if (g != packed_g || h != packed_h) {
            // K: per chunk, panels of NR keys as [c][NR]; V: panels of NR channels as [key][NR]
            std::memset(Kp, 0, sizeof(float) * (size_t) (pl.nchunk * pl.kcp * hd));
            if (hdp != hd) std::memset(Vp, 0, sizeof(float) * (size_t) (hdp * T));
            for (int64_t j = 0; j < T; j++) {
                const int64_t ky = j / S, kx = j % S;
                const float * src = token(b, wy * S + ky, wx * S + kx);
                const float * k = src ? src + D + h * hd : bias + D + h * hd;
                const float * v = src ? src + 2 * D + h * hd : bias + 2 * D + h * hd;
                const float * kb = src && add_bias ? bias + D + h * hd : nullptr;
                const float * vb = src && add_bias ? bias + 2 * D + h * hd : nullptr;
                const int64_t ci = j / pl.kc, jj = j % pl.kc;
                float * kd = Kp + ci * pl.kcp * hd + (jj / NR) * hd * NR + jj % NR;
                for (int64_t c = 0; c < hd; c++) kd[c * NR] = kb ? k[c] + kb[c] : k[c];
                float * vd = Vp + j * NR;
                for (int64_t c = 0; c < hd; c++) vd[(c / NR) * T * NR + c % NR] = vb ? v[c] + vb[c] : v[c];
            }
            packed_g = g;
            packed_h = h;
        }

        // queries: unscaled (rel-pos) and scaled (scores); padding rows of the last tile are 0
        for (int64_t r = 0; r < nrp; r++) {
            float * u = qu + r * hd, * s = qs + r * hd;
            if (r >= nr) {
                std::memset(u, 0, sizeof(float) * (size_t) hd);
                std::memset(s, 0, sizeof(float) * (size_t) hd);
                continue;
            }
            const int64_t qi = q0 + r, ly = qi / vw, lx = qi % vw;
            const float * q = token(b, wy * S + ly, wx * S + lx) + h * hd;
            for (int64_t c = 0; c < hd; c++) {
                u[c] = add_bias ? q[c] + bias[h * hd + c] : q[c];
                s[c] = u[c] * pr.scale;
            }
            if (pr.rel_pos) {
                for (int64_t k = 0; k < S; k++) {
                    rh[r * S + k] = dot<W>(u, ov.tab_h + (ly * S + k) * hd, hd);
                    rw[r * S + k] = dot<W>(u, ov.tab_w + (lx * S + k) * hd, hd);
                }
            }
        }
        std::memset(O, 0, sizeof(float) * (size_t) (nrp * hdp));

        for (int64_t ci = 0; ci < pl.nchunk; ci++) {
            const int64_t ky0 = ci * pl.kr, ky1 = std::min(S, ky0 + pl.kr);
            const int64_t j0 = ky0 * S, nk = (ky1 - ky0) * S;
            const float * Kc = Kp + ci * pl.kcp * hd;

            for (int64_t p = 0; p < ceil_div(nk, NR); p++) {
                for (int64_t r0 = 0; r0 < nrp; r0 += MR) {
                    micro<W, MR, NV>(hd, qs + r0 * hd, hd, Kc + p * hd * NR, Sb + r0 * pl.kcp + p * NR, pl.kcp, false);
                }
            }

            for (int64_t r = 0; r < nr; r++) {
                float * s = Sb + r * pl.kcp;
                vf vmax = vsplat<W>(-std::numeric_limits<float>::infinity());
                float smax = -std::numeric_limits<float>::infinity();
                if (pr.rel_pos) {
                    const float * rwr = rw + r * S;
                    for (int64_t ky = ky0; ky < ky1; ky++) {
                        float * row = s + (ky - ky0) * S;
                        const float bh = rh[r * S + ky];
                        const vf vbh = vsplat<W>(bh);
                        int64_t kx = 0;
                        for (; kx + W <= S; kx += W) {
                            const vf x = vload<W>(row + kx) + (vload<W>(rwr + kx) + vbh);
                            vstore<W>(row + kx, x);
                            vmax = x > vmax ? x : vmax;
                        }
                        for (; kx < S; kx++) {
                            row[kx] += rwr[kx] + bh;
                            smax = std::max(smax, row[kx]);
                        }
                    }
                } else {
                    int64_t j = 0;
                    for (; j + W <= nk; j += W) {
                        const vf x = vload<W>(s + j);
                        vmax = x > vmax ? x : vmax;
                    }
                    for (; j < nk; j++) smax = std::max(smax, s[j]);
                }
                const float m_old = M[r];
                const float m_new = std::max(std::max(smax, hmax<W>(vmax)), ci == 0 ? smax : m_old);
                const vf vm = vsplat<W>(m_new);
                vf vsum = vsplat<W>(0.0f);
                int64_t j = 0;
                for (; j + W <= nk; j += W) {
                    const vf e = vexp<W>(vload<W>(s + j) - vm);
                    vstore<W>(s + j, e);
                    vsum += e;
                }
                float sum = hsum<W>(vsum);
                for (; j < nk; j++) {
                    s[j] = sexp<W>(s[j] - m_new);
                    sum += s[j];
                }
                if (ci == 0) {
                    L[r] = sum;
                } else {
                    const float alpha = sexp<W>(m_old - m_new);
                    L[r] = L[r] * alpha + sum;
                    if (alpha != 1.0f) {
                        float * o = O + r * hdp;
                        for (int64_t c = 0; c < hdp; c++) o[c] *= alpha;
                    }
                }
                M[r] = m_new;
            }
            // rows nr..nrp of the tile hold P of zero queries: finite, computed, never written out

            for (int64_t cp = 0; cp < hdp / NR; cp++) {
                for (int64_t r0 = 0; r0 < nrp; r0 += MR) {
                    micro<W, MR, NV>(nk, Sb + r0 * pl.kcp, pl.kcp, Vp + cp * T * NR + j0 * NR, O + r0 * hdp + cp * NR,
                                     hdp, true);
                }
            }
        }

        for (int64_t r = 0; r < nr; r++) {
            const int64_t qi = q0 + r, y = wy * S + qi / vw, x = wx * S + qi % vw;
            float * dst = ov.out + ((b * G + y) * G + x) * D + h * hd;
            const float inv = 1.0f / L[r];
            const float * o = O + r * hdp;
            for (int64_t c = 0; c < hd; c++) dst[c] = o[c] * inv;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// variants and dispatch

enum isa_kind { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

// (W, MR, NV) per variant: MR x NV accumulators + NV B vectors + 1 broadcast fit the registers
#define CA_GENERIC 4, 4, 2
#define CA_AVX2    8, 6, 2
#define CA_AVX512  16, 8, 2

template <int W, int MR, int NV> struct shape { static constexpr int mr = MR, nr = W * NV; };

isa_kind detect_isa() {
    isa_kind best = ISA_GENERIC;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        best = ISA_AVX512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        best = ISA_AVX2;
    }
#endif
    if (const char * e = std::getenv("GOTOCR_CPU_ATTN_ISA")) {
        if (strcmp(e, "generic") == 0) best = ISA_GENERIC;
        else if (strcmp(e, "avx2") == 0 && best >= ISA_AVX2) best = ISA_AVX2;
    }
    return best;
}

isa_kind selected_isa() {
    static const isa_kind isa = detect_isa();  // initialised once, thread-safe
    return isa;
}

plan plan_for(int64_t S, int64_t hd) {
    switch (selected_isa()) {
#if defined(__x86_64__) || defined(__i386__)
        case ISA_AVX512: return make_plan(S, hd, shape<CA_AVX512>::mr, shape<CA_AVX512>::nr);
        case ISA_AVX2:   return make_plan(S, hd, shape<CA_AVX2>::mr, shape<CA_AVX2>::nr);
#endif
        default:         return make_plan(S, hd, shape<CA_GENERIC>::mr, shape<CA_GENERIC>::nr);
    }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) void run_avx512(const cpu_attn_params & pr, const op_view & ov, float * s,
                                                   const plan & pl, int64_t t0, int64_t t1) {
    run<CA_AVX512>(pr, ov, s, pl, t0, t1);
}
__attribute__((target("avx2,fma"))) void run_avx2(const cpu_attn_params & pr, const op_view & ov, float * s,
                                                  const plan & pl, int64_t t0, int64_t t1) {
    run<CA_AVX2>(pr, ov, s, pl, t0, t1);
}
#endif
void run_generic(const cpu_attn_params & pr, const op_view & ov, float * s, const plan & pl, int64_t t0, int64_t t1) {
    run<CA_GENERIC>(pr, ov, s, pl, t0, t1);
}

} // namespace

cpu_attn_scratch::~cpu_attn_scratch() { std::free(buf); }

bool cpu_attn_scratch::reserve(int n, size_t floats) {
    if (n < 1) n = 1;
    floats = round_up_z(floats);
    if (buf && n <= n_threads && floats <= per_thread) return true;
    const size_t nt = (size_t) std::max(n, n_threads), pt = std::max(floats, per_thread);
    if (pt != 0 && nt > SIZE_MAX / sizeof(float) / pt) return false;
    void * p = nullptr;
    if (posix_memalign(&p, ALIGN_FLOATS * sizeof(float), std::max<size_t>(1, nt * pt * sizeof(float))) != 0) {
        return false;
    }
    std::free(buf);
    buf = (float *) p;
    n_threads = (int) nt;
    per_thread = pt;
    return true;
}

size_t cpu_attn_scratch_floats(int64_t S, int64_t hd) { return plan_for(S, hd).total; }

const char * cpu_attn_isa() {
    switch (selected_isa()) {
        case ISA_AVX512: return "avx512";
        case ISA_AVX2:   return "avx2";
        default:         return "generic";
    }
}

void cpu_attn_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const cpu_attn_params & pr = *(const cpu_attn_params *) userdata;
    const ggml_tensor * qkv = dst->src[0];
    const plan pl = plan_for(pr.S, pr.hd);
    GGML_ASSERT(pr.scratch && pr.scratch->buf && pr.scratch->per_thread >= pl.total);
    GGML_ASSERT(qkv->type == GGML_TYPE_F32 && qkv->nb[0] == sizeof(float) && qkv->ne[0] == 3 * pr.D);
    GGML_ASSERT(qkv->ne[1] == pr.G && qkv->ne[2] == pr.G && ggml_is_contiguous(dst));

    op_view ov;
    ov.qkv = (const char *) qkv->data;
    ov.nb1 = qkv->nb[1];
    ov.nb2 = qkv->nb[2];
    ov.nb3 = qkv->nb[3];
    ov.bias = (const float *) dst->src[1]->data;
    ov.tab_h = pr.rel_pos ? (const float *) dst->src[2]->data : nullptr;
    ov.tab_w = pr.rel_pos ? (const float *) dst->src[3]->data : nullptr;
    ov.out = (float *) dst->data;
    ov.B = qkv->ne[3];
    ov.nw = ceil_div(pr.G, pr.S);

    // a fixed task list split into contiguous ranges: the tasks (and so the arithmetic) do not
    // depend on nth; threads beyond the scratch's count stay idle
    const int nwork = std::min(nth, pr.scratch->n_threads);
    if (ith >= nwork) return;
    const int64_t ntask = ov.B * ov.nw * ov.nw * pr.H * pl.nqb;
    const int64_t t0 = ntask * ith / nwork, t1 = ntask * (ith + 1) / nwork;
    float * s = pr.scratch->buf + (size_t) ith * pr.scratch->per_thread;
    switch (selected_isa()) {
#if defined(__x86_64__) || defined(__i386__)
        case ISA_AVX512: run_avx512(pr, ov, s, pl, t0, t1); break;
        case ISA_AVX2:   run_avx2(pr, ov, s, pl, t0, t1); break;
#endif
        default:         run_generic(pr, ov, s, pl, t0, t1); break;
    }
}
