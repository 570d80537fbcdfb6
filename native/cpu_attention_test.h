// cpu_attention_test.h - C entry to the fused CPU attention (cpu_attention.h) for the tests
// (gotocr_fast._vision).
#ifndef GOTOCR_CPU_ATTENTION_TEST_H
#define GOTOCR_CPU_ATTENTION_TEST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// out[B, G, G, D] = attention of qkv[B, G, G, 3D] (q | k | v, head h at h*D/H) with H heads over
// S x S windows of the grid (S = G: global), padding tokens = bias; bias is added to the real
// tokens unless qkv_has_bias. tab_h/tab_w: [S, S, D/H] rel-pos tables, or both null. Computed as
// n_threads threads' shares run one after the other on the calling thread. isa: "best",
// "generic", "avx2", "avx512", or the AVX-512 variant with its two products in bf16: "amx" (on AMX
// tiles), "avx512_bf16" (AVX512_BF16 dot products). Returns 0, -1 (bad arguments, isa unknown or not supported by
// this CPU), -2 (no memory).
int cpu_attn_test_run(const float * qkv, int64_t B, int64_t G, int64_t D, int64_t H, int64_t S,
                      const float * bias, int qkv_has_bias, const float * tab_h, const float * tab_w,
                      float scale, float * out, int n_threads, const char * isa);

// the widest variant this CPU supports (GOTOCR_CPU_ATTN_ISA not applied)
const char * cpu_attn_test_best_isa(void);

// 1 if cpu_attn_test_run's isa (not "best") can run here
int cpu_attn_test_available(const char * isa);

#ifdef __cplusplus
}
#endif

#endif // GOTOCR_CPU_ATTENTION_TEST_H
