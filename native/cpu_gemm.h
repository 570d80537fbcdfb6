// cpu_gemm.h - packed, cache-blocked SGEMM for the vision encoder's weight matmuls on the CPU.
//
//   C[M x N] = A[M x K] . B^T  (+ bias[N]) (then optionally GELU-erf, element-wise)
//
// A: activations, f32, row-major (row i at a + i*lda, K contiguous) = ggml's mul_mat src1.
// B: weights [N x K], rows of ggml type f32/f16/bf16/q8_0/... (K contiguous) = ggml's src0; B is
//    converted to f32 panel by panel while it is packed, so the arithmetic is always f32.
// C: f32, row-major (row i at c + i*ldc).
//
// The micro-kernel is one template over the vector width, instantiated for AVX-512, AVX2+FMA and
// a baseline; the best one the CPU supports is picked at run time (never at build time: wheels
// move between machines). Every output element is computed by the same instruction sequence
// (same K order, same blocking) whichever thread computes it, so results are bit-identical for
// any thread count on one machine.

#ifndef GOTOCR_CPU_GEMM_H
#define GOTOCR_CPU_GEMM_H

#include "ggml.h"

#include <cstddef>
#include <cstdint>

namespace cpu_gemm {

struct args {
    const float * a = nullptr;  int64_t lda = 0;   // in floats
    const void *  b = nullptr;  size_t  ldb = 0;   // in bytes (ggml nb[1])
    ggml_type     btype = GGML_TYPE_F32;
    const float * bias = nullptr;                  // N floats, or nullptr
    bool          gelu = false;                    // exact-erf GELU after the bias
    float *       c = nullptr;  int64_t ldc = 0;   // in floats
    int64_t       M = 0, N = 0, K = 0;
};

enum class isa { best, generic, avx2, avx512 };

// Can B be of this type (and row length K)? Needs a ggml to_float and whole blocks per K step.
bool supports(ggml_type btype, int64_t K);

// Floats of scratch one thread needs (enough for every ISA variant); the pointer passed to run()
// must be 64-byte aligned.
size_t scratch_floats_per_thread();

// Computes thread ith's share of C (0 <= ith < nth). Every thread of the op calls it with the
// same args; the shares never overlap and together cover C. Returns false (computing nothing) if
// `which` is not supported by this CPU or the arguments are invalid.
bool run(const args & p, int ith, int nth, float * scratch, isa which = isa::best);

// Per-thread scratch for run(), preallocated by the caller (the op itself never allocates).
// Not thread-safe: reserve() only while no op runs (got_vision holds its context lock).
class scratch {
public:
    scratch() = default;
    ~scratch();
    scratch(const scratch &) = delete;
    scratch & operator=(const scratch &) = delete;

    // Room for n_threads threads; false when out of memory (the old buffer is then kept).
    bool reserve(int n_threads);
    int threads() const { return n_; }
    float * for_thread(int ith) const { return data_ + (size_t) ith * scratch_floats_per_thread(); }

private:
    float * data_ = nullptr;
    int n_ = 0;
};

// Name of the variant isa::best resolves to on this CPU ("avx512", "avx2", "generic").
const char * best_isa_name();

// Is this variant usable on this CPU?
bool isa_available(isa which);

} // namespace cpu_gemm

#endif // GOTOCR_CPU_GEMM_H
