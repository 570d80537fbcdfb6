// got_vision.h - GOT-OCR2 vision encoder (SAM ViT + neck + stride-2 convs + projector) on ggml.
//
// One opaque context per loaded vision GGUF (general.architecture = "got-vision"; keys and tensor
// names in docs/ARCHITECTURE.md). Every size comes from the file, so tiny test models and the real
// model run the same code. The caller owns every buffer; functions return status codes and never
// abort the process on a bad file or bad input.
//
// Thread safety: a context may be shared between threads; calls that compute on it are
// serialised by a lock inside the context. Distinct contexts are independent (no global state).

#ifndef GOT_VISION_H
#define GOT_VISION_H

#include <stddef.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct got_vision_ctx got_vision_ctx;

// status codes returned by got_vision_encode and friends
enum got_vision_status {
    GOT_VISION_OK                  =  0,
    GOT_VISION_ERR_INVALID_ARGUMENT = -1, // NULL pointer, n_views < 1, ...
    GOT_VISION_ERR_BUFFER_TOO_SMALL = -2, // out_len_floats < n_views * tokens_per_view * output_width
    GOT_VISION_ERR_ALLOC           = -3, // a graph or buffer allocation failed
    GOT_VISION_ERR_COMPUTE         = -4, // the backend reported a failure while computing
    GOT_VISION_ERR_NONFINITE_INPUT = -5, // the pixels contain NaN or Inf
};

enum got_vision_backend_kind {
    GOT_VISION_BACKEND_CPU  = 0, // always available (default)
    GOT_VISION_BACKEND_GPU  = 1, // first GPU device ggml offers (or `device`); error if none
    GOT_VISION_BACKEND_AUTO = 2, // a GPU when ggml offers one, else CPU
};

struct got_vision_context_params {
    int  n_threads;                       // CPU threads; <= 0: all hardware threads
    enum got_vision_backend_kind backend; // GOT_VISION_BACKEND_CPU by default
    const char * device;                  // ggml backend device name (e.g. "CUDA0"), NULL: first of the kind
    int  max_batch_views;                 // views per graph evaluation; bounds the compute buffer (<= 0: 1)
    int  cpu_kernels;                     // non-zero (default): on the CPU backend, run the weight matmuls
                                          // (+ bias, + GELU) on our own kernels instead of ggml's mul_mat
    int  cpu_bf16;                        // non-zero: with cpu_kernels, run those matmuls in bf16 (weights
                                          // packed as bf16 at load, activations rounded to bf16, f32 sums)
                                          // where the CPU multiplies bf16 (AMX, else AVX512_BF16); f32
                                          // otherwise. Default 0: f32, the path that matches the oracle
};

struct got_vision_context_params got_vision_context_default_params(void);

// Loads the vision GGUF. Returns NULL on error and writes a message into err (if err_len > 0).
got_vision_ctx * got_vision_init_from_file(const char * path,
                                           struct got_vision_context_params params,
                                           char * err, size_t err_len);

void got_vision_free(got_vision_ctx * ctx);

// model facts
int          got_vision_image_size      (const got_vision_ctx * ctx); // S: views are S x S pixels
int          got_vision_num_channels    (const got_vision_ctx * ctx); // C (3)
int          got_vision_tokens_per_view (const got_vision_ctx * ctx); // T (256)
// E, the width of each image token's embedding (= the language model's hidden size); the GGUF's
// got-vision.embedding_length is the ViT width, a different number
int          got_vision_output_width    (const got_vision_ctx * ctx);
const float * got_vision_image_mean     (const got_vision_ctx * ctx); // num_channels floats
const float * got_vision_image_std      (const got_vision_ctx * ctx); // num_channels floats

// resources
const char * got_vision_backend_name     (const got_vision_ctx * ctx);
size_t       got_vision_weights_size     (const got_vision_ctx * ctx); // bytes of weight buffers
size_t       got_vision_compute_buffer_size(const got_vision_ctx * ctx); // bytes reserved for one batch graph
int          got_vision_max_batch_views  (const got_vision_ctx * ctx);
int          got_vision_set_n_threads    (got_vision_ctx * ctx, int n_threads);
int          got_vision_cpu_kernels      (const got_vision_ctx * ctx); // 1 if our CPU kernels are in use
int          got_vision_cpu_bf16         (const got_vision_ctx * ctx); // 1 if the matmuls run in bf16
// the instruction set each kind of kernel runs on: GEMM "amx", "avx512_bf16" (bf16) or "avx512",
// "avx2", "generic" (f32); attention and LayerNorm "avx512", "avx2", "generic"; "ggml" without
// our CPU kernels
const char * got_vision_gemm_isa         (const got_vision_ctx * ctx);
const char * got_vision_attention_isa    (const got_vision_ctx * ctx);
const char * got_vision_layernorm_isa    (const got_vision_ctx * ctx);

// Encodes n_views views. pixels: float32 [n_views, C, S, S] row-major, already normalised.
// out: float32 [n_views, T, E] row-major; out_len_floats must be >= n_views * T * E.
// Views are processed max_batch_views at a time. Returns GOT_VISION_OK or a negative status;
// got_vision_last_error then describes the failure.
int got_vision_encode(got_vision_ctx * ctx, const float * pixels, int n_views,
                      float * out, size_t out_len_floats);

// message of the last failed call on this context ("" if none); valid until the next call
const char * got_vision_last_error(const got_vision_ctx * ctx);

#ifdef __cplusplus
}
#endif

#endif // GOT_VISION_H
