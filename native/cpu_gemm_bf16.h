// cpu_gemm_bf16.h - the encoder's weight matmuls in bf16 on CPUs that multiply bf16 natively.
//
//   C[M x N] = A[M x K] . B^T  (+ bias[N]) (then optionally GELU-erf), as cpu_gemm.h, but
//   B (the weights) is rounded to bf16 once and packed (packed_weights), each A row is rounded to
//   bf16 as it is used, products are exact and sums are f32.
//
// Two kernels, picked at run time from the CPU (never at build time):
//   amx          Intel AMX tiles (TDPBF16PS), a 32 x 32 block of C in four tile registers;
//   avx512_bf16  AVX512_BF16 dot products (VDPBF16PS), a 12 x 32 register tile.
// Both read the same packed weights and give results within f32 rounding of each other (their
// sums run in different orders). AMX needs the kernel's permission once per process
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA), requested by detection) and a tile configuration
// in every thread that runs tiles: run() loads its own at entry and restores whatever the thread
// had at exit, so ggml's or anyone else's tile code in the same worker threads is unaffected.
//
// Results are bit-identical for any thread count on one machine (the split never changes an
// element's instruction sequence).

#ifndef GOTOCR_CPU_GEMM_BF16_H
#define GOTOCR_CPU_GEMM_BF16_H

#include "cpu_gemm.h"

#include <cstddef>
#include <cstdint>

namespace cpu_gemm_bf16 {

enum class isa { none, avx512_bf16, amx };

// The best bf16 kernel this CPU (and kernel, for AMX) allows; isa::none when there is none.
isa best();
// Is this kernel usable here?
bool available(isa which);
const char * name(isa which);  // "amx", "avx512_bf16", "none"

// While alive, the calling thread holds the AMX tile configuration of the bf16 kernels (eight
// tiles of 16 rows x 64 bytes); the destructor puts back the thread's previous configuration, or
// releases the tiles if it had none. Only where available(isa::amx).
class amx_tile_scope {
public:
    amx_tile_scope();
    ~amx_tile_scope();
    amx_tile_scope(const amx_tile_scope &) = delete;
    amx_tile_scope & operator=(const amx_tile_scope &) = delete;

private:
    alignas(64) unsigned char saved_[64];
};

// Weights packed once for the bf16 kernels: panels of 16 columns (B rows), K in pairs,
// [N/16][K/2][16][2] bf16 with N padded to 32 and K to 32 with zeros.
class packed_weights {
public:
    packed_weights() = default;
    ~packed_weights();
    packed_weights(const packed_weights &) = delete;
    packed_weights & operator=(const packed_weights &) = delete;

    // B: N rows of K values of ggml type btype (row stride ldb bytes), as cpu_gemm::args.b.
    // False (and empty) when the type is not supported (cpu_gemm::supports) or out of memory.
    bool pack(const void * b, ggml_type btype, size_t ldb, int64_t N, int64_t K);

    int64_t N() const { return n_; }
    int64_t K() const { return k_; }
    int64_t K_padded() const { return kp_; }
    const uint16_t * data() const { return data_; }
    size_t bytes() const;

private:
    uint16_t * data_ = nullptr;
    int64_t n_ = 0, np_ = 0, k_ = 0, kp_ = 0;
};

// Bytes of scratch one thread needs for GEMMs of depth up to K (64-byte aligned pointer).
size_t scratch_bytes_per_thread(int64_t K);

// Per-thread scratch for run(), preallocated by the caller (the op itself never allocates).
// Not thread-safe: reserve() only while no op runs.
class scratch {
public:
    scratch() = default;
    ~scratch();
    scratch(const scratch &) = delete;
    scratch & operator=(const scratch &) = delete;

    // Room for n_threads threads of GEMMs up to depth K; false when out of memory (the old
    // buffer is then kept). Never shrinks.
    bool reserve(int n_threads, int64_t K);
    int threads() const { return n_; }
    void * for_thread(int ith) const { return data_ + (size_t) ith * per_thread_; }

private:
    unsigned char * data_ = nullptr;
    size_t per_thread_ = 0;
    int n_ = 0;
};

// Thread ith's share of C = A . W^T (+ bias) (GELU); p.a, p.lda, p.bias, p.gelu, p.c, p.ldc, p.M
// are used as in cpu_gemm::run (p.b / p.btype are ignored: w replaces them), N and K come from w.
// scratch: scratch_bytes_per_thread(w.K()) bytes for this thread. False (computing nothing)
// when `which` is not available or the arguments are invalid.
bool run(const cpu_gemm::args & p, const packed_weights & w, int ith, int nth, void * scratch, isa which);

} // namespace cpu_gemm_bf16

#endif // GOTOCR_CPU_GEMM_BF16_H
