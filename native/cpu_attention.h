// cpu_attention.h - fused CPU attention of the GOT (SAM ViT) vision encoder, run as a ggml
// custom op: scores, decomposed rel-pos, softmax and P.V per (group, head, query block) tile,
// so no [T, T] score matrix ever exists in the graph.
//
// Tensors (ggml ne, fastest first):
//   qkv   [3D, G, G, B]  projected tokens (q = [0,D), k = [D,2D), v = [2D,3D); head h at h*hd)
//   bias  [3D]           the qkv bias: added here unless qkv already holds it, and the value of
//                        SAM's zero-padding tokens (a zero token projects to the bias alone)
//   rel_h, rel_w [hd, S, S]  tab[qy][ky][c] lookup tables (optional)
//   out   [D, G, G, B]   attention output before the output projection
// Windowed attention (S < G) partitions the grid, padded to whole windows, into S x S groups
// inside the kernel; global attention is the case S = G.

#pragma once

#include "cpu_gemm_bf16.h"
#include "ggml.h"

#include <cstddef>
#include <cstdint>

struct cpu_attn_scratch;

struct cpu_attn_params {
    int64_t D = 0, H = 0, hd = 0;  // embedding, heads, head dim
    int64_t S = 0;                 // attention side: window, or the grid for global attention
    int64_t G = 0;                 // token grid side
    float scale = 1.0f;            // applied to q for the scores (not for rel-pos)
    bool qkv_has_bias = false;     // qkv already includes the bias
    bool rel_pos = false;          // args 2 and 3 are the rel-pos tables
    // the two products in bf16 on this engine (none: f32; else only if cpu_attn_bf16_available(it));
    // softmax, rel-pos and the running sums stay f32
    cpu_gemm_bf16::isa bf16 = cpu_gemm_bf16::isa::none;
    cpu_attn_scratch * scratch = nullptr;  // per-thread work memory, owned by the caller
};

// Per-thread scratch, sized once for the largest layer and for a number of threads. Not thread
// safe: resize only while no graph computes.
struct cpu_attn_scratch {
    float * buf = nullptr;
    size_t per_thread = 0;   // floats
    int n_threads = 0;

    cpu_attn_scratch() = default;
    cpu_attn_scratch(const cpu_attn_scratch &) = delete;
    cpu_attn_scratch & operator=(const cpu_attn_scratch &) = delete;
    ~cpu_attn_scratch();

    // at least `floats` per thread for n_threads threads; false when out of memory (the old
    // buffer is kept then)
    bool reserve(int n_threads, size_t floats);
};

// floats of scratch one thread needs for groups of side S (T = S*S tokens) and head dim hd
size_t cpu_attn_scratch_floats(int64_t S, int64_t hd, cpu_gemm_bf16::isa bf16 = cpu_gemm_bf16::isa::none);

// can the two products run in bf16 on this engine here (the AVX-512 kernel variant is selected
// and cpu_gemm_bf16 has that engine)?
bool cpu_attn_bf16_available(cpu_gemm_bf16::isa which);

// the ggml_custom_op_t: args (dst->src) = qkv, bias[, rel_h, rel_w]; userdata = cpu_attn_params
void cpu_attn_op(ggml_tensor * dst, int ith, int nth, void * userdata);

// which kernel variant runs ("avx512", "avx2", "generic"); chosen once per process from the CPU,
// GOTOCR_CPU_ATTN_ISA can force a narrower one (for tests)
const char * cpu_attn_isa();
