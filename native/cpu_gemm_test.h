// cpu_gemm_test.h - C entry to the CPU GEMM (cpu_gemm.h) for the tests (gotocr_fast._vision).
#ifndef GOTOCR_CPU_GEMM_TEST_H
#define GOTOCR_CPU_GEMM_TEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// C[M x N] = A[M x K] . B^T (+ bias) (GELU) with B rows of ggml type btype (row stride ldb bytes),
// computed as n_threads threads' shares (run one after the other on the calling thread: results
// must not depend on the split). isa: "best", "generic", "avx2" or "avx512". scratch_or_null: a
// 64-byte aligned buffer of cpu_gemm_test_scratch_floats() floats that the caller keeps between
// calls, as the encoder does (benchmarks: no fresh pages to fault in per product), or NULL.
// Returns 0, -1 (bad arguments / type, misaligned scratch, or isa unknown or not supported by this
// CPU), -2 (no memory).
int cpu_gemm_test_run(const float * a, int64_t M, int64_t K, const void * b, int btype, int64_t ldb,
                      int64_t N, const float * bias, int gelu, float * c, int n_threads, const char * isa,
                      float * scratch_or_null);

// floats of scratch cpu_gemm_test_run needs
size_t cpu_gemm_test_scratch_floats(void);

// the variant "best" resolves to on this CPU
const char * cpu_gemm_test_best_isa(void);

// One thread's measured FMA throughput in GFLOP/s: `iters` rounds of independent vector FMA chains
// on registers (16 of zmm, 12 of ymm), with the vector width of isa ("best", "avx512" or "avx2");
// -1 where this CPU lacks that width (or for "generic", which has no FMA loop) or iters < 1.
double cpu_gemm_test_fma_peak(int64_t iters, const char * isa);

// The same product in bf16 (cpu_gemm_bf16.h): B packed as bf16, A rounded to bf16, f32 sums.
// isa: "best", "amx" or "avx512_bf16". Returns 0, -1 (bad arguments / type, or isa unknown or not
// supported by this CPU), -2 (no memory).
int cpu_gemm_bf16_test_run(const float * a, int64_t M, int64_t K, const void * b, int btype, int64_t ldb,
                           int64_t N, const float * bias, int gelu, float * c, int n_threads, const char * isa);

// the bf16 kernel "best" resolves to on this CPU ("amx", "avx512_bf16", or "none")
const char * cpu_gemm_bf16_test_best_isa(void);

#ifdef __cplusplus
}
#endif

#endif // GOTOCR_CPU_GEMM_TEST_H
