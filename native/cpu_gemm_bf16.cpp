// cpu_gemm_bf16.cpp - see cpu_gemm_bf16.h.
//
// Per thread: its share of C (runs of 32 rows, or of 32 columns when N > M), walked as
//   for each MC-tall row block:  round A[rows, all K] to bf16 into scratch (rows padded with 0)
//     for each 32-wide column panel (two 16-column panels of the packed weights)
//       for each RB-tall row tile: the kernel sums all of K into an RB x 32 f32 tile, then the
//                                  bias and the GELU are applied and the valid part is stored.
// The whole K is summed inside the kernel (no partial sums stored to C and reloaded). MC keeps the
// bf16 row block within ~512 KB (half an L2 slice), so it stays cached while every column panel
// passes over it.

#include "cpu_gemm_bf16.h"

#include "amx_tiles.h"
#include "bf16_dot.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#if defined(__x86_64__)
#define CGB_X86 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#define CG_INLINE inline __attribute__((always_inline))

namespace cpu_gemm_bf16 {
namespace {

#include "cpu_gemm_math.inc"

constexpr int64_t PANEL = 16;         // columns per packed weight panel (one AMX B tile's width)
constexpr int64_t NB = 32;            // columns of C per kernel call (two panels)
constexpr int64_t KSTEP = 32;         // K per AMX tile row (32 bf16 = 64 bytes); K is padded to it
constexpr int64_t ROW_UNIT = 96;      // row blocks are multiples of both kernels' tile heights (32, 12)
constexpr size_t A_BLOCK_BYTES = 512 * 1024;
constexpr int64_t MC_MAX = 384;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// rows per block for a padded depth kp: as many as fit A_BLOCK_BYTES, in [ROW_UNIT, MC_MAX]
int64_t rows_per_block(int64_t kp) {
    const int64_t fit = (int64_t) (A_BLOCK_BYTES / (size_t) (kp * 2)) / ROW_UNIT * ROW_UNIT;
    return std::min(MC_MAX, std::max(ROW_UNIT, fit));
}

constexpr size_t TILE_FLOATS = 32 * NB;  // the largest kernel tile (AMX: 32 x 32)

// scratch layout of one thread: [A block: mc x kp bf16][tile: 32 x 32 f32][bias: 32 f32]
size_t a_block_bytes(int64_t kp) { return (size_t) (rows_per_block(kp) * kp * 2 + 63) / 64 * 64; }

// round-to-nearest-even f32 -> bf16 (NaN stays NaN), the rounding of VCVTNEPS2BF16 for normal numbers
uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t) ((u >> 16) | 0x40);
    return (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ---------------------------------------------------------------------------------------------
// detection

#ifdef CGB_X86
bool cpu_avx512_bf16() {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return (a >> 5) & 1u;  // CPUID.(7,1):EAX[5] AVX512_BF16
}

bool cpu_amx_bf16() {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return ((d >> 22) & 1u) && ((d >> 24) & 1u);  // CPUID.(7,0):EDX[22] AMX-BF16, [24] AMX-TILE
}

// Linux hands out the AMX tile data state only on request, once per process (every thread,
// present and future, then has it); without it the first tile instruction faults.
bool os_grants_amx() {
#if defined(__linux__)
    constexpr long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return false;
    unsigned long bits = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &bits) != 0) return false;
    return (bits >> XFEATURE_XTILEDATA) & 1ul;
#else
    return false;
#endif
}
#endif

isa detect() {
#ifdef CGB_X86
    if (!cpu_avx512_bf16()) return isa::none;  // the A conversion and the epilogue need AVX-512 (+BF16)
    isa found = cpu_amx_bf16() && os_grants_amx() ? isa::amx : isa::avx512_bf16;
    // a narrower kernel can be forced (to test it on an AMX machine)
    if (const char * e = std::getenv("GOTOCR_CPU_BF16_ISA")) {
        if (strcmp(e, "avx512_bf16") == 0) found = isa::avx512_bf16;
        else if (strcmp(e, "none") == 0) found = isa::none;
    }
    return found;
#else
    return isa::none;
#endif
}

isa detected() {
    static const isa chosen = detect();  // once per process, thread-safe
    return chosen;
}

// ---------------------------------------------------------------------------------------------
// kernels

#ifdef CGB_X86
#define CGB_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define CGB_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))

typedef vec<16>::f vf;
typedef vec<16>::i vi;

// rows [m0, m0 + mc) of A -> dst [rows_p][kp] bf16; K past the end and rows past mc are 0
CGB_TARGET void convert_a(const cpu_gemm::args & p, int64_t m0, int64_t mc, int64_t rows_p, int64_t K, int64_t kp,
                          uint16_t * dst) {
    for (int64_t r = 0; r < rows_p; r++) {
        uint16_t * d = dst + r * kp;
        if (r >= mc) {
            memset(d, 0, (size_t) kp * 2);
            continue;
        }
        const float * s = p.a + (m0 + r) * p.lda;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            const __m512 lo = _mm512_loadu_ps(s + k), hi = _mm512_loadu_ps(s + k + 16);
            _mm512_storeu_si512((void *) (d + k), (__m512i) _mm512_cvtne2ps_pbh(hi, lo));
        }
        if (k < kp) {  // the last partial step, zero-filled to kp (a multiple of 32)
            const int64_t rest = K - k;
            const __mmask16 mlo = (__mmask16) (rest >= 16 ? 0xffff : (1u << rest) - 1);
            const __mmask16 mhi = (__mmask16) (rest >= 32 ? 0xffff : rest > 16 ? (1u << (rest - 16)) - 1 : 0);
            const __m512 lo = _mm512_maskz_loadu_ps(mlo, s + k), hi = _mm512_maskz_loadu_ps(mhi, s + k + 16);
            _mm512_storeu_si512((void *) (d + k), (__m512i) _mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

// C rows [0, mr) x cols [0, nr) = tile[RB][32] (+ bias) (GELU); bias: 32 floats or null
CGB_TARGET void epilogue(const float * tile, int64_t mr, int64_t nr, const float * bias, bool gelu, float * c,
                         int64_t ldc) {
    const vf b0 = bias ? load<vf>(bias) : vf{}, b1 = bias ? load<vf>(bias + 16) : vf{};
    for (int64_t i = 0; i < mr; i += 2) {
        vf x[4];
        x[0] = load<vf>(tile + i * NB) + b0;
        x[1] = load<vf>(tile + i * NB + 16) + b1;
        x[2] = load<vf>(tile + (i + 1) * NB) + b0;  // row i + 1 exists in the tile even past mr
        x[3] = load<vf>(tile + (i + 1) * NB + 16) + b1;
        if (gelu) gelu_erf<vf, vi, 4>(x);  // 4 vectors in lockstep, as in cpu_gemm
        for (int64_t r = 0; r < 2 && i + r < mr; r++) {
            float * dst = c + (i + r) * ldc;
            if (nr == NB) {
                store(dst, x[2 * r]);
                store(dst + 16, x[2 * r + 1]);
            } else {
                alignas(64) float row[NB];
                store(row, x[2 * r]);
                store(row + 16, x[2 * r + 1]);
                memcpy(dst, row, (size_t) nr * sizeof(float));
            }
        }
    }
}

// AVX512_BF16: 12 rows x 32 columns of C per bf16_dot::block, 24 accumulators
constexpr int64_t RB_AVX = 12;

// AMX: a 32 x 32 block of C in tiles, one amx_tiles::step per K step of 32 (amx_tiles.h)
constexpr int64_t RB_AMX = 32;

struct alignas(64) tile_config {
    uint8_t palette = 0, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

tile_config amx_config() {
    tile_config t;
    t.palette = 1;
    for (int i = 0; i < 8; i++) {
        t.rows[i] = 16;
        t.colsb[i] = 64;
    }
    return t;
}

CGB_TARGET_AMX void kernel_amx(const uint16_t * a, int64_t kp, const uint16_t * b0, const uint16_t * b1, float * tile) {
    const size_t lda = (size_t) kp * 2;
    const char * a0 = (const char *) a, * a1 = (const char *) (a + 16 * kp);
    amx_tiles::zero_c();
    for (int64_t k = 0; k < kp; k += KSTEP) {
        // K pair k/2 of a weight panel starts at (k/2) * 32 bf16
        amx_tiles::step(a0 + k * 2, a1 + k * 2, lda, b0 + k * PANEL, b1 + k * PANEL);
    }
    amx_tiles::store_c(tile, NB);
}

template <isa K>
CGB_TARGET_AMX void gemm(const cpu_gemm::args & p, const packed_weights & w, int ith, int nth, uint8_t * scratch) {
    constexpr int64_t RB = K == isa::amx ? RB_AMX : RB_AVX;
    const int64_t M = p.M, N = w.N(), kp = w.K_padded(), Kr = w.K();
    const int64_t mc_max = rows_per_block(kp);
    uint16_t * abuf = (uint16_t *) scratch;
    float * tile = (float *) (scratch + a_block_bytes(kp));
    float * bias_pad = tile + TILE_FLOATS;

    // this thread's share, in units of 32 rows or 32 columns (the longer side, as cpu_gemm)
    int64_t m_lo = 0, m_hi = M, n_lo = 0, n_hi = N;
    if (N > M) {
        const int64_t units = (N + NB - 1) / NB;
        n_lo = units * ith / nth * NB;
        n_hi = std::min(N, units * (ith + 1) / nth * NB);
    } else {
        const int64_t units = (M + 31) / 32;
        m_lo = units * ith / nth * 32;
        m_hi = std::min(M, units * (ith + 1) / nth * 32);
    }
    if (m_lo >= m_hi || n_lo >= n_hi) return;

    const size_t panel_stride = (size_t) (kp / 2) * 32;  // bf16 per 16-column panel
    for (int64_t ic = m_lo; ic < m_hi; ic += mc_max) {
        const int64_t mc = std::min(mc_max, m_hi - ic), rows_p = round_up(mc, RB);
        convert_a(p, ic, mc, rows_p, Kr, kp, abuf);
        for (int64_t jc = n_lo; jc < n_hi; jc += NB) {
            const int64_t nr = std::min(NB, n_hi - jc);
            const uint16_t * b0 = w.data() + (size_t) (jc / PANEL) * panel_stride;
            const uint16_t * b1 = b0 + panel_stride;
            const float * bias = block_bias(p.bias, jc, nr, NB, bias_pad);
            for (int64_t ir = 0; ir < rows_p; ir += RB) {
                if (K == isa::amx) kernel_amx(abuf + ir * kp, kp, b0, b1, tile);
                else bf16_dot::block<RB_AVX>(abuf + ir * kp, kp, b0, b1, kp / 2, tile, NB, false);
                const int64_t mr = std::min(RB, mc - ir);
                if (mr > 0) epilogue(tile, mr, nr, bias, p.gelu, p.c + (ic + ir) * p.ldc + jc, p.ldc);
            }
        }
    }
}

CGB_TARGET_AMX void run_amx(const cpu_gemm::args & p, const packed_weights & w, int ith, int nth, uint8_t * s) {
    amx_tile_scope tiles;  // other tile code in this worker thread keeps its configuration
    gemm<isa::amx>(p, w, ith, nth, s);
}

CGB_TARGET void run_avx512_bf16(const cpu_gemm::args & p, const packed_weights & w, int ith, int nth, uint8_t * s) {
    gemm<isa::avx512_bf16>(p, w, ith, nth, s);
}
#endif // CGB_X86

} // namespace

#ifdef CGB_X86
static_assert(sizeof(tile_config) == 64, "the tile configuration is 64 bytes");

namespace {
CGB_TARGET_AMX void save_and_load_tiles(unsigned char * saved) {
    _tile_storeconfig(saved);  // all zero (palette 0) when the thread holds no configuration
    static const tile_config ours = amx_config();
    _tile_loadconfig(&ours);
}
CGB_TARGET_AMX void restore_tiles(const unsigned char * saved) {
    if (saved[0] != 0) _tile_loadconfig(saved);
    else _tile_release();
}
} // namespace

amx_tile_scope::amx_tile_scope() { save_and_load_tiles(saved_); }
amx_tile_scope::~amx_tile_scope() { restore_tiles(saved_); }
#else
amx_tile_scope::amx_tile_scope() {}
amx_tile_scope::~amx_tile_scope() {}
#endif

isa best() { return detected(); }

bool available(isa which) {
    const isa b = detected();
    switch (which) {
        case isa::amx:         return b == isa::amx;
        case isa::avx512_bf16: return b == isa::amx || b == isa::avx512_bf16;  // AMX CPUs have AVX512_BF16
        case isa::none:        return false;
    }
    return false;
}

const char * name(isa which) {
    switch (which) {
        case isa::amx:         return "amx";
        case isa::avx512_bf16: return "avx512_bf16";
        default:               return "none";
    }
}

packed_weights::~packed_weights() { ::operator delete(data_, std::align_val_t(64)); }

size_t packed_weights::bytes() const { return (size_t) np_ * (size_t) kp_ * 2; }

bool packed_weights::pack(const void * b, ggml_type btype, size_t ldb, int64_t N, int64_t K) {
    ::operator delete(data_, std::align_val_t(64));
    data_ = nullptr;
    n_ = np_ = k_ = kp_ = 0;
    if (!b || N < 1 || K < 1 || !cpu_gemm::supports(btype, K)) return false;
    const ggml_type_traits * tr = ggml_get_type_traits(btype);
    const ggml_to_float_t to_float = btype == GGML_TYPE_F32 ? nullptr : tr->to_float;
    const int64_t np = round_up(N, NB), kp = round_up(K, KSTEP);
    uint16_t * d = (uint16_t *) ::operator new((size_t) np * (size_t) kp * 2, std::align_val_t(64), std::nothrow);
    if (!d) return false;
    std::vector<float> row;
    try {
        row.resize((size_t) K);
    } catch (const std::bad_alloc &) {
        ::operator delete(d, std::align_val_t(64));
        return false;
    }
    const size_t panel_stride = (size_t) (kp / 2) * 32;
    for (int64_t n = 0; n < np; n++) {
        uint16_t * panel = d + (size_t) (n / PANEL) * panel_stride + (size_t) (n % PANEL) * 2;
        const float * vals = nullptr;
        if (n < N) {
            const char * src = (const char *) b + (size_t) n * ldb;
            if (to_float) {
                to_float(src, row.data(), K);
                vals = row.data();
            } else {
                vals = (const float *) src;
            }
        }
        for (int64_t k = 0; k < kp; k++) {
            panel[(size_t) (k / 2) * 32 + (k & 1)] = vals && k < K ? to_bf16(vals[k]) : 0;
        }
    }
    data_ = d;
    n_ = N;
    np_ = np;
    k_ = K;
    kp_ = kp;
    return true;
}

size_t scratch_bytes_per_thread(int64_t K) {
    const int64_t kp = round_up(std::max<int64_t>(K, 1), KSTEP);
    return a_block_bytes(kp) + (TILE_FLOATS + NB) * sizeof(float);  // a multiple of 64
}

scratch::~scratch() { ::operator delete(data_, std::align_val_t(64)); }

bool scratch::reserve(int n_threads, int64_t K) {
    if (n_threads < 1) return false;
    const size_t per = scratch_bytes_per_thread(K);  // a multiple of 64: every thread's part stays aligned
    if (data_ && n_threads <= n_ && per <= per_thread_) return true;
    const size_t nt = (size_t) std::max(n_threads, n_), pt = std::max(per, per_thread_);
    if (nt > SIZE_MAX / pt) return false;
    unsigned char * d = (unsigned char *) ::operator new(nt * pt, std::align_val_t(64), std::nothrow);
    if (!d) return false;
    ::operator delete(data_, std::align_val_t(64));
    data_ = d;
    per_thread_ = pt;
    n_ = (int) nt;
    return true;
}

bool run(const cpu_gemm::args & p, const packed_weights & w, int ith, int nth, void * scratch, isa which) {
    if (nth < 1 || ith < 0 || ith >= nth || !scratch || !w.data() || !p.a || !p.c || p.M < 0 || p.lda < w.K() ||
        p.ldc < w.N() || !available(which)) {
        return false;
    }
#ifdef CGB_X86
    if (which == isa::amx) run_amx(p, w, ith, nth, (uint8_t *) scratch);
    else run_avx512_bf16(p, w, ith, nth, (uint8_t *) scratch);
    return true;
#else
    return false;
#endif
}

} // namespace cpu_gemm_bf16

// ---------------------------------------------------------------------------------------------
// test entry (cpu_gemm_test.h)

#include "cpu_gemm_test.h"

extern "C" int cpu_gemm_bf16_test_run(const float * a, int64_t M, int64_t K, const void * b, int btype, int64_t ldb,
                                      int64_t N, const float * bias, int gelu, float * c, int n_threads,
                                      const char * isa) {
    using namespace cpu_gemm_bf16;
    if (!a || !b || !c || !isa || n_threads < 1 || btype < 0 || btype >= GGML_TYPE_COUNT || ldb < 1 || M < 0) return -1;
    cpu_gemm_bf16::isa which;
    if (strcmp(isa, "best") == 0) which = best();
    else if (strcmp(isa, "amx") == 0) which = cpu_gemm_bf16::isa::amx;
    else if (strcmp(isa, "avx512_bf16") == 0) which = cpu_gemm_bf16::isa::avx512_bf16;
    else return -1;
    if (!available(which)) return -1;
    packed_weights w;
    if (!cpu_gemm::supports((ggml_type) btype, K)) return -1;
    if (!w.pack(b, (ggml_type) btype, (size_t) ldb, N, K)) return -2;
    cpu_gemm::args p;
    p.a = a; p.lda = K;
    p.bias = bias; p.gelu = gelu != 0;
    p.c = c; p.ldc = N;
    p.M = M; p.N = N; p.K = K;
    cpu_gemm_bf16::scratch s;
    if (!s.reserve(1, K)) return -2;
    // the threads' shares one after the other on this thread: results must not depend on the split
    for (int ith = 0; ith < n_threads; ith++) {
        if (!run(p, w, ith, n_threads, s.for_thread(0), which)) return -1;
    }
    return 0;
}

extern "C" const char * cpu_gemm_bf16_test_best_isa(void) { return cpu_gemm_bf16::name(cpu_gemm_bf16::best()); }
