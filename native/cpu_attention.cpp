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

#include "cpu_attention_bf16.h"

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
    int64_t sp = 0;      // S rounded up to NR: row stride of the rel-pos terms and tables
    bool bf16 = false;   // bf16 products: rows padded to 32, bf16 copies of q/K/V/P
    int64_t dp = 0;      // bf16: hd rounded up to 32 (the K of the score product)
    size_t o_th = 0, o_tw = 0, o_br = 0, o_kp = 0, o_vp = 0, o_qu = 0, o_qs = 0, o_rh = 0, o_rw = 0, o_s = 0, o_o = 0, o_m = 0, o_l = 0;
    size_t o_qb = 0, o_kb = 0, o_vb = 0, o_pb = 0;  // bf16 buffers (offsets in floats)
    size_t total = 0;    // floats per thread
};

plan make_plan(int64_t S, int64_t hd, int MR, int NR, bool bf16 = false) {
    plan p;
    p.S = S;
    p.T = S * S;
    p.hd = hd;
    p.hdp = round_up(hd, NR);
    p.bf16 = bf16;
    p.dp = round_up(hd, 32);
    if (bf16) MR = 32;  // the bf16 products run on 32-row blocks
    p.qb = round_up(ceil_div(p.T, ceil_div(p.T, Q_ROWS_TARGET)), MR);
    p.nqb = ceil_div(p.T, p.qb);
    p.kr = std::min(S, std::max<int64_t>(1, CHUNK_KEYS / S));
    p.kc = p.kr * S;
    p.kcp = round_up(p.kc, bf16 ? std::max(NR, 32) : NR);
    p.nchunk = ceil_div(S, p.kr);
    p.sp = round_up(S, NR);
    size_t off = 0;
    auto take = [&](size_t n) { const size_t o = off; off += round_up_z(n); return o; };
    p.o_th = take((size_t) (S * hd * p.sp));
    p.o_tw = take((size_t) (S * hd * p.sp));
    p.o_br = take((size_t) (p.kcp + NR));  // a chunk's rel-pos bias row, and slack for its last vector
    p.o_kp = take((size_t) (p.nchunk * p.kcp * hd));
    p.o_vp = take((size_t) (p.hdp * p.T));
    p.o_qu = take((size_t) (p.qb * hd));
    p.o_qs = take((size_t) (p.qb * hd));
    p.o_rh = take((size_t) (p.qb * p.sp));
    p.o_rw = take((size_t) (p.qb * p.sp));
    p.o_s  = take((size_t) (p.qb * p.kcp));
    p.o_o  = take((size_t) (p.qb * p.hdp));
    p.o_m  = take((size_t) p.qb);
    p.o_l  = take((size_t) p.qb);
    if (bf16) {  // bf16 halves: two per float
        p.o_qb = take((size_t) (p.qb * p.dp / 2));
        p.o_kb = take((size_t) (p.nchunk * p.kcp * p.dp / 2));
        p.o_vb = take((size_t) (p.nchunk * p.kcp * p.hdp / 2));
        p.o_pb = take((size_t) (p.qb * p.kcp / 2));
    }
    p.total = off;
    return p;
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


// ---------------------------------------------------------------------------------------------
// the kernels, one namespace per instruction set

#if defined(__x86_64__) || defined(__i386__)
#define CA_TARGET __attribute__((target("avx512f")))
namespace k_avx512 {
#include "cpu_attention_kernels.inc"
}
#undef CA_TARGET
#define CA_TARGET __attribute__((target("avx2,fma")))
namespace k_avx2 {
#include "cpu_attention_kernels.inc"
}
#undef CA_TARGET
#endif
#define CA_TARGET
namespace k_generic {
#include "cpu_attention_kernels.inc"
}
#undef CA_TARGET

// ---------------------------------------------------------------------------------------------
// variants and dispatch

enum isa_kind { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

// (W, MR, NV) per variant: MR x NV accumulators + NV B vectors + 1 broadcast fit the registers
#define CA_GENERIC 4, 4, 2
#define CA_AVX2    8, 6, 2
#define CA_AVX512  16, 8, 2

template <int W, int MR, int NV> struct shape { static constexpr int mr = MR, nr = W * NV; };

bool isa_available(isa_kind k) {
    (void) k;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (k == ISA_AVX512) return __builtin_cpu_supports("avx512f");
    if (k == ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return true;
#else
    return k == ISA_GENERIC;
#endif
}

isa_kind detect_isa() {
    isa_kind best = isa_available(ISA_AVX512) ? ISA_AVX512 : isa_available(ISA_AVX2) ? ISA_AVX2 : ISA_GENERIC;
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

plan plan_for(isa_kind isa, int64_t S, int64_t hd, cpu_gemm_bf16::isa bf16) {
    switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
        case ISA_AVX512:
            return make_plan(S, hd, shape<CA_AVX512>::mr, shape<CA_AVX512>::nr, bf16 != cpu_gemm_bf16::isa::none);
        case ISA_AVX2:   return make_plan(S, hd, shape<CA_AVX2>::mr, shape<CA_AVX2>::nr);
#endif
        default:         return make_plan(S, hd, shape<CA_GENERIC>::mr, shape<CA_GENERIC>::nr);
    }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) void run_avx512(const cpu_attn_params & pr, const op_view & ov, float * s,
                                                   const plan & pl, int64_t t0, int64_t t1) {
    k_avx512::run<CA_AVX512>(pr, ov, s, pl, t0, t1);
}
__attribute__((target("avx2,fma"))) void run_avx2(const cpu_attn_params & pr, const op_view & ov, float * s,
                                                  const plan & pl, int64_t t0, int64_t t1) {
    k_avx2::run<CA_AVX2>(pr, ov, s, pl, t0, t1);
}
#endif
void run_generic(const cpu_attn_params & pr, const op_view & ov, float * s, const plan & pl, int64_t t0, int64_t t1) {
    k_generic::run<CA_GENERIC>(pr, ov, s, pl, t0, t1);
}

// thread ith of nth: its contiguous share of a fixed task list (the tasks, and so the arithmetic,
// do not depend on nth); threads beyond the scratch's count stay idle
void run_share(isa_kind isa, const cpu_attn_params & pr, const op_view & ov, int ith, int nth) {
    GGML_ASSERT(pr.bf16 == cpu_gemm_bf16::isa::none || (isa == ISA_AVX512 && cpu_attn_bf16_available(pr.bf16)));
    const plan pl = plan_for(isa, pr.S, pr.hd, pr.bf16);
    GGML_ASSERT(pr.scratch && pr.scratch->buf && pr.scratch->per_thread >= pl.total);
    const int nwork = std::min(nth, pr.scratch->n_threads);
    if (ith >= nwork) return;
    const int64_t ntask = ov.B * ov.nw * ov.nw * pr.H * pl.nqb;
    const int64_t t0 = ntask * ith / nwork, t1 = ntask * (ith + 1) / nwork;
    float * s = pr.scratch->buf + (size_t) ith * pr.scratch->per_thread;
    switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
        case ISA_AVX512:
            if (pr.bf16 == cpu_gemm_bf16::isa::amx) {
                cpu_gemm_bf16::amx_tile_scope tiles;  // other tile code in this worker thread keeps its own
                run_avx512(pr, ov, s, pl, t0, t1);
            } else {
                run_avx512(pr, ov, s, pl, t0, t1);
            }
            break;
        case ISA_AVX2:   run_avx2(pr, ov, s, pl, t0, t1); break;
#endif
        default:         run_generic(pr, ov, s, pl, t0, t1); break;
    }
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

size_t cpu_attn_scratch_floats(int64_t S, int64_t hd, cpu_gemm_bf16::isa bf16) {
    return plan_for(selected_isa(), S, hd, bf16).total;
}

bool cpu_attn_bf16_available(cpu_gemm_bf16::isa which) {
    return which != cpu_gemm_bf16::isa::none && selected_isa() == ISA_AVX512 && cpu_gemm_bf16::available(which);
}

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
    run_share(selected_isa(), pr, ov, ith, nth);
}

namespace {

// a test entry's isa name (not "best"): the kernel variant and the bf16 engine of its products;
// false for an unknown name
bool test_isa(const char * isa, isa_kind & k, cpu_gemm_bf16::isa & bf16) {
    bf16 = cpu_gemm_bf16::isa::none;
    if (strcmp(isa, "amx") == 0) bf16 = cpu_gemm_bf16::isa::amx;
    else if (strcmp(isa, "avx512_bf16") == 0) bf16 = cpu_gemm_bf16::isa::avx512_bf16;
    if (bf16 != cpu_gemm_bf16::isa::none) k = ISA_AVX512;
    else if (strcmp(isa, "generic") == 0) k = ISA_GENERIC;
    else if (strcmp(isa, "avx2") == 0) k = ISA_AVX2;
    else if (strcmp(isa, "avx512") == 0) k = ISA_AVX512;
    else return false;
    return true;
}

// can the test entry run (k, bf16) here?
bool test_isa_available(isa_kind k, cpu_gemm_bf16::isa bf16) {
    return bf16 != cpu_gemm_bf16::isa::none ? cpu_attn_bf16_available(bf16) : isa_available(k);
}

} // namespace

extern "C" int cpu_attn_test_run(const float * qkv, int64_t B, int64_t G, int64_t D, int64_t H, int64_t S,
                                 const float * bias, int qkv_has_bias, const float * tab_h, const float * tab_w,
                                 float scale, float * out, int n_threads, const char * isa) {
    if (!qkv || !bias || !out || !isa || (!tab_h) != (!tab_w) || n_threads < 1 || B < 1 || G < 1 || D < 1 ||
        H < 1 || D % H != 0 || S < 1 || S > G) {
        return -1;
    }
    isa_kind k = selected_isa();
    cpu_gemm_bf16::isa bf16 = cpu_gemm_bf16::isa::none;
    if (strcmp(isa, "best") != 0 && !test_isa(isa, k, bf16)) return -1;
    if (!test_isa_available(k, bf16)) return -1;
    cpu_attn_scratch scratch;
    cpu_attn_params pr;
    pr.D = D; pr.H = H; pr.hd = D / H; pr.S = S; pr.G = G; pr.scale = scale;
    pr.qkv_has_bias = qkv_has_bias != 0;
    pr.rel_pos = tab_h != nullptr;
    pr.bf16 = bf16;
    pr.scratch = &scratch;
    if (!scratch.reserve(n_threads, plan_for(k, S, pr.hd, bf16).total)) return -2;
    op_view ov;
    ov.qkv = (const char *) qkv;
    ov.nb1 = (size_t) (3 * D) * sizeof(float);
    ov.nb2 = ov.nb1 * (size_t) G;
    ov.nb3 = ov.nb2 * (size_t) G;
    ov.bias = bias;
    ov.tab_h = tab_h;
    ov.tab_w = tab_w;
    ov.out = out;
    ov.B = B;
    ov.nw = ceil_div(G, S);
    // the threads' shares one after the other on this thread: results must not depend on the split
    for (int ith = 0; ith < n_threads; ith++) run_share(k, pr, ov, ith, n_threads);
    return 0;
}

extern "C" const char * cpu_attn_test_best_isa(void) {
    return isa_available(ISA_AVX512) ? "avx512" : isa_available(ISA_AVX2) ? "avx2" : "generic";
}

extern "C" int cpu_attn_test_available(const char * isa) {
    isa_kind k;
    cpu_gemm_bf16::isa bf16;
    return isa && test_isa(isa, k, bf16) && test_isa_available(k, bf16) ? 1 : 0;
}
