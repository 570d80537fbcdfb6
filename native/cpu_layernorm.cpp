// cpu_layernorm.cpp - fused CPU LayerNorm (see cpu_layernorm.h).
//
// Per row: mean and variance in W float lanes (two passes over the row, which stays in L1),
// then y = (x - mean) * rstd * w + b. The kernel is written once over the vector width and
// compiled for AVX-512, AVX2+FMA and a baseline (each copy with its own target attribute: a
// default-target helper inlined into an AVX function would be split into SSE pieces); the
// variant is picked once from the running CPU.

#include "cpu_layernorm.h"

#include <cmath>
#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace {

#define LN_KERNEL(NAME, TARGET, W)                                                                    \
    TARGET void NAME(const float * x, float * y, const float * w, const float * b, int64_t C, float eps) { \
        typedef float vf __attribute__((vector_size(W * 4)));                                         \
        typedef float vfu __attribute__((vector_size(W * 4), aligned(4), may_alias));                 \
        vf acc = {};                                                                                  \
        int64_t i = 0;                                                                                \
        for (; i + W <= C; i += W) acc += *(const vfu *) (x + i);                                     \
        float sum = 0.0f;                                                                             \
        for (int l = 0; l < W; l++) sum += acc[l];                                                    \
        for (; i < C; i++) sum += x[i];                                                               \
        const float mean = sum / (float) C;                                                           \
        vf vmean = mean - (vf){};                                                                     \
        acc = (vf){};                                                                                 \
        for (i = 0; i + W <= C; i += W) {                                                             \
            const vf d = *(const vfu *) (x + i) - vmean;                                              \
            acc += d * d;                                                                             \
        }                                                                                             \
        float var = 0.0f;                                                                             \
        for (int l = 0; l < W; l++) var += acc[l];                                                    \
        for (; i < C; i++) var += (x[i] - mean) * (x[i] - mean);                                      \
        const float rstd = 1.0f / std::sqrt(var / (float) C + eps);                                   \
        const vf vr = rstd - (vf){};                                                                  \
        for (i = 0; i + W <= C; i += W) {                                                             \
            *(vfu *) (y + i) = (*(const vfu *) (x + i) - vmean) * vr * *(const vfu *) (w + i) +       \
                               *(const vfu *) (b + i);                                                \
        }                                                                                             \
        for (; i < C; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];                                 \
    }

#if defined(__x86_64__) || defined(__i386__)
LN_KERNEL(row_avx512, __attribute__((target("avx512f"))), 16)
LN_KERNEL(row_avx2, __attribute__((target("avx2,fma"))), 8)
#endif
LN_KERNEL(row_generic, , 4)
#undef LN_KERNEL

typedef void (*row_fn)(const float *, float *, const float *, const float *, int64_t, float);

struct variant { row_fn fn; const char * name; };

variant pick() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return {row_avx512, "avx512"};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {row_avx2, "avx2"};
#endif
    return {row_generic, "generic"};
}

const variant & selected() {
    static const variant v = pick();  // initialised once, thread-safe
    return v;
}

} // namespace

bool cpu_layernorm_supports(const ggml_tensor * x, const ggml_tensor * w, const ggml_tensor * b) {
    return x->type == GGML_TYPE_F32 && w->type == GGML_TYPE_F32 && b->type == GGML_TYPE_F32 &&
           ggml_is_contiguous(x) && ggml_is_contiguous(w) && ggml_is_contiguous(b) &&
           ggml_nelements(w) == x->ne[0] && ggml_nelements(b) == x->ne[0];
}

void cpu_layernorm_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const float eps = *(const float *) userdata;
    const ggml_tensor * x = dst->src[0];
    const float * w = (const float *) dst->src[1]->data, * b = (const float *) dst->src[2]->data;
    const int64_t C = x->ne[0], rows = ggml_nrows(x);
    const int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    const row_fn fn = selected().fn;
    for (int64_t r = r0; r < r1; r++) {
        fn((const float *) x->data + r * C, (float *) dst->data + r * C, w, b, C, eps);
    }
}

const char * cpu_layernorm_isa() { return selected().name; }
