// got_vision.cpp - loader, graph and C API of the GOT-OCR2 vision encoder (see got_vision.h).
//
// Layout conventions (ggml `ne`, fastest dimension first):
//   pixels     [S, S, C, B]        (= torch [B, C, S, S])
//   tokens     [D, G, G, B]        (= torch [B, H, W, D], x fastest)
//   attention  [hd, T, heads, n]   n = windows (or views for global attention)
//   output     [E, T2, B]          (= torch [B, T2, E], token = y * G2 + x)

#include "got_vision.h"

#include "cpu_gemm.h"
#include "cpu_gemm_bf16.h"

#include "cpu_attention.h"
#include "cpu_layernorm.h"
#include "huge_pages.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "gguf.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr const char * ARCH = "got-vision";

// Key suffixes (after "got-vision.") of E, the width of each image token's embedding (the
// projector's output = the LM hidden size). `projection_dim` is the name llama.cpp's CLIP files
// give it; `embedding_length` stays D, the ViT width, as in llama.cpp's GGUF convention. Vision
// GGUFs written by earlier converters carry E as `projector.output_length`: read when the file
// lacks `projection_dim`, so they stay loadable.
constexpr const char * KEY_PROJECTION_DIM        = "projection_dim";
constexpr const char * KEY_PROJECTION_DIM_LEGACY = "projector.output_length";

// Sanity bounds: reject absurd files before any size product can overflow.
constexpr int64_t MAX_IMAGE_SIZE = 16384;
constexpr int64_t MAX_DIM        = 65536;
constexpr int64_t MAX_LAYERS     = 1024;

// A load/validation failure: the message goes to the caller's err buffer.
struct load_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string format(const char * fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

struct hparams {
    int64_t image_size = 0, patch_size = 0, n_channels = 0;
    int64_t n_embd = 0, n_layer = 0, n_head = 0, n_ff = 0, window = 0;
    float   eps = 0.0f, neck_eps = 0.0f;
    bool    use_abs_pos = true, use_rel_pos = true;
    int64_t neck_ch = 0, proj_ch = 0, out_width = 0, n_tokens = 0;
    std::vector<bool>  global;          // per layer: global (true) or windowed attention
    std::vector<float> mean, std;

    // derived
    int64_t grid = 0;   // G = image_size / patch_size
    int64_t grid1 = 0;  // after the first stride-2 conv
    int64_t grid2 = 0;  // after the second: tokens per view = grid2^2
    int64_t head_dim() const { return n_embd / n_head; }
};

struct layer {
    bool global = false;
    int64_t S = 0;  // attention side: window or grid
    ggml_tensor * ln1_w = nullptr, * ln1_b = nullptr;
    ggml_tensor * qkv_w = nullptr, * qkv_b = nullptr;
    ggml_tensor * out_w = nullptr, * out_b = nullptr;
    ggml_tensor * ln2_w = nullptr, * ln2_b = nullptr;
    ggml_tensor * up_w = nullptr, * up_b = nullptr;
    ggml_tensor * down_w = nullptr, * down_b = nullptr;
    // rel-pos lookup tables, precomputed at load: tab[q][k][c] = rel_pos_resized[q - k + S - 1][c]
    ggml_tensor * rel_h_tab = nullptr, * rel_w_tab = nullptr;
};

struct cached_graph {
    int n_views = 0;
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    ggml_tensor * inp = nullptr;
    ggml_tensor * out = nullptr;
};

int64_t conv_s2_out(int64_t n) { return (n + 2 - 3) / 2 + 1; } // k3 s2 p1

// userdata of one CPU GEMM op (see linear()): f32 on cpu_gemm, or bf16 on cpu_gemm_bf16 when
// `packed` is set (the weights then come from it, not from the op's src[1])
struct gemm_op {
    const cpu_gemm::scratch * scratch = nullptr;
    bool gelu = false;
    const cpu_gemm_bf16::packed_weights * packed = nullptr;
    const cpu_gemm_bf16::scratch * bf16_scratch = nullptr;
    cpu_gemm_bf16::isa bf16_isa = cpu_gemm_bf16::isa::none;
};

} // namespace

#ifdef GOT_VISION_PROFILE
namespace { struct prof_state; }
#endif

struct got_vision_ctx {
    hparams hp;
    std::vector<layer> layers;
    ggml_tensor * patch_w = nullptr, * patch_b = nullptr, * pos = nullptr;
    ggml_tensor * neck_conv1 = nullptr, * neck_ln1_w = nullptr, * neck_ln1_b = nullptr;
    ggml_tensor * neck_conv2 = nullptr, * neck_ln2_w = nullptr, * neck_ln2_b = nullptr;
    ggml_tensor * mm_conv1 = nullptr, * mm_conv2 = nullptr, * mm_proj_w = nullptr, * mm_proj_b = nullptr;

    ggml_context * ctx_w = nullptr;
    ggml_backend_buffer_t buf_w = nullptr;
    ggml_backend_t backend = nullptr;      // where the weights live and the graph runs
    ggml_backend_t backend_cpu = nullptr;  // fallback for ops the main backend lacks (== backend on CPU)
    ggml_backend_sched_t sched = nullptr;
    ggml_backend_set_n_threads_t set_n_threads_fn = nullptr;
    size_t graph_size = 0;
    bool fused_rel_pos = false;            // the main backend runs GGML_OP_ADD_REL_POS
    bool want_cpu_kernels = true;          // got_vision_context_params.cpu_kernels
    // CPU GEMM ops (cpu_gemm.h) for the weight matmuls: per-op parameters (userdata of cached
    // graphs, so they live as long as the context) and the per-thread scratch they share
    std::deque<gemm_op> gemm_ops;
    cpu_gemm::scratch gemm_scratch;
    // bf16 compute (got_vision_context_params.cpu_bf16 on a CPU that has it): each weight packed
    // once, keyed by its data (graphs for other batch sizes share them), and the kernels' scratch
    bool want_bf16 = false;
    cpu_gemm_bf16::isa bf16_isa = cpu_gemm_bf16::isa::none;  // none: the matmuls run in f32
    std::unordered_map<const void *, std::unique_ptr<cpu_gemm_bf16::packed_weights>> packed;
    cpu_gemm_bf16::scratch bf16_scratch;
    bool cpu_kernels = false;              // main backend is the CPU: use our fused CPU ops
    // fused CPU attention: per-layer op parameters (userdata of cached graphs, so they live as
    // long as the context) and the per-thread scratch they share
    std::deque<cpu_attn_params> attn_params;
    cpu_attn_scratch attn_scratch;

    std::vector<cached_graph> graphs;
    int allocated = -1;  // index into graphs of the graph the sched currently holds
    size_t compute_size = 0;
    int max_batch = 1;
    int n_threads = 1;
    std::string backend_name;
    std::string last_error;
    std::mutex mu;
#ifdef GOT_VISION_PROFILE
    std::unique_ptr<prof_state> prof;
#endif

    ~got_vision_ctx();
};

namespace {

// ---------------------------------------------------------------------------------------------
// GGUF metadata

struct gguf_deleter { void operator()(gguf_context * c) const { gguf_free(c); } };
using gguf_ptr = std::unique_ptr<gguf_context, gguf_deleter>;

std::string key_name(const char * suffix) { return std::string(ARCH) + "." + suffix; }

int64_t find_key(const gguf_context * g, const std::string & key, bool required) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0 && required) {
        throw load_error(format("missing GGUF key '%s'", key.c_str()));
    }
    return id;
}

bool is_int_type(gguf_type t) {
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_INT16 ||
           t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64;
}

int64_t int_from(gguf_type t, const void * p) {
    switch (t) {
        case GGUF_TYPE_UINT8:  return *(const uint8_t *) p;
        case GGUF_TYPE_INT8:   return *(const int8_t *) p;
        case GGUF_TYPE_UINT16: return *(const uint16_t *) p;
        case GGUF_TYPE_INT16:  return *(const int16_t *) p;
        case GGUF_TYPE_UINT32: return *(const uint32_t *) p;
        case GGUF_TYPE_INT32:  return *(const int32_t *) p;
        case GGUF_TYPE_UINT64: {
            const uint64_t v = *(const uint64_t *) p;
            return v > (uint64_t) INT64_MAX ? -1 : (int64_t) v;
        }
        case GGUF_TYPE_INT64:  return *(const int64_t *) p;
        default:               return -1;
    }
}

size_t gguf_type_size_of(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

// integer key in [lo, hi]; any integer GGUF type is accepted
int64_t get_int(const gguf_context * g, const char * suffix, int64_t lo, int64_t hi) {
    const std::string key = key_name(suffix);
    const int64_t id = find_key(g, key, true);
    const gguf_type t = gguf_get_kv_type(g, id);
    if (!is_int_type(t)) {
        throw load_error(format("GGUF key '%s' has type %s, expected an integer", key.c_str(), gguf_type_name(t)));
    }
    const int64_t v = int_from(t, gguf_get_val_data(g, id));
    if (v < lo || v > hi) {
        throw load_error(format("GGUF key '%s' = %" PRId64 " is out of range [%" PRId64 ", %" PRId64 "]",
                                key.c_str(), v, lo, hi));
    }
    return v;
}

float get_float(const gguf_context * g, const char * suffix) {
    const std::string key = key_name(suffix);
    const int64_t id = find_key(g, key, true);
    const gguf_type t = gguf_get_kv_type(g, id);
    double v;
    if (t == GGUF_TYPE_FLOAT32) {
        v = gguf_get_val_f32(g, id);
    } else if (t == GGUF_TYPE_FLOAT64) {
        v = gguf_get_val_f64(g, id);
    } else {
        throw load_error(format("GGUF key '%s' has type %s, expected a float", key.c_str(), gguf_type_name(t)));
    }
    if (!std::isfinite(v)) {
        throw load_error(format("GGUF key '%s' is not finite", key.c_str()));
    }
    return (float) v;
}

bool get_bool(const gguf_context * g, const char * suffix) {
    const std::string key = key_name(suffix);
    const int64_t id = find_key(g, key, true);
    const gguf_type t = gguf_get_kv_type(g, id);
    if (t == GGUF_TYPE_BOOL) {
        return gguf_get_val_bool(g, id);
    }
    if (is_int_type(t)) {
        return int_from(t, gguf_get_val_data(g, id)) != 0;
    }
    throw load_error(format("GGUF key '%s' has type %s, expected a bool", key.c_str(), gguf_type_name(t)));
}

int64_t get_arr(const gguf_context * g, const char * suffix, gguf_type * elem) {
    const std::string key = key_name(suffix);
    const int64_t id = find_key(g, key, true);
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY) {
        throw load_error(format("GGUF key '%s' is not an array", key.c_str()));
    }
    *elem = gguf_get_arr_type(g, id);
    if (gguf_type_size_of(*elem) == 0) {
        throw load_error(format("GGUF key '%s' holds %s values, expected numbers", key.c_str(), gguf_type_name(*elem)));
    }
    return id;
}

std::vector<int64_t> get_int_array(const gguf_context * g, const char * suffix) {
    gguf_type t;
    const int64_t id = get_arr(g, suffix, &t);
    if (!is_int_type(t)) {
        throw load_error(format("GGUF key '%s' must be an integer array", key_name(suffix).c_str()));
    }
    const size_t n = gguf_get_arr_n(g, id);
    const char * data = (const char *) gguf_get_arr_data(g, id);
    std::vector<int64_t> out(n);
    for (size_t i = 0; i < n; i++) {
        out[i] = int_from(t, data + i * gguf_type_size_of(t));
    }
    return out;
}

std::vector<float> get_float_array(const gguf_context * g, const char * suffix) {
    gguf_type t;
    const int64_t id = get_arr(g, suffix, &t);
    const size_t n = gguf_get_arr_n(g, id);
    const char * data = (const char *) gguf_get_arr_data(g, id);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) {
        if (t == GGUF_TYPE_FLOAT32) {
            out[i] = ((const float *) data)[i];
        } else if (t == GGUF_TYPE_FLOAT64) {
            out[i] = (float) ((const double *) data)[i];
        } else {
            throw load_error(format("GGUF key '%s' must be a float array", key_name(suffix).c_str()));
        }
        if (!std::isfinite(out[i])) {
            throw load_error(format("GGUF key '%s' holds a non-finite value", key_name(suffix).c_str()));
        }
    }
    return out;
}

// The suffix of the key that holds E in this file: the legacy name only where the file has it and
// not the current one (a file with neither then reports the current name as missing).
const char * projection_dim_key(const gguf_context * g) {
    if (find_key(g, key_name(KEY_PROJECTION_DIM), false) < 0 &&
        find_key(g, key_name(KEY_PROJECTION_DIM_LEGACY), false) >= 0) {
        return KEY_PROJECTION_DIM_LEGACY;
    }
    return KEY_PROJECTION_DIM;
}

hparams read_hparams(const gguf_context * g) {
    const int64_t arch_id = gguf_find_key(g, "general.architecture");
    if (arch_id < 0 || gguf_get_kv_type(g, arch_id) != GGUF_TYPE_STRING) {
        throw load_error("missing GGUF key 'general.architecture'");
    }
    const char * arch = gguf_get_val_str(g, arch_id);
    if (strcmp(arch, ARCH) != 0) {
        throw load_error(format("GGUF architecture is '%s', expected '%s'", arch, ARCH));
    }

    hparams hp;
    hp.image_size = get_int(g, "image_size", 1, MAX_IMAGE_SIZE);
    hp.patch_size = get_int(g, "patch_size", 1, MAX_IMAGE_SIZE);
    hp.n_channels = get_int(g, "num_channels", 1, 64);
    hp.n_embd     = get_int(g, "embedding_length", 1, MAX_DIM);
    hp.n_layer    = get_int(g, "block_count", 0, MAX_LAYERS);
    hp.n_head     = get_int(g, "attention.head_count", 1, MAX_DIM);
    hp.n_ff       = get_int(g, "feed_forward_length", 1, 4 * MAX_DIM);
    hp.eps        = get_float(g, "attention.layer_norm_epsilon");
    hp.window     = get_int(g, "window_size", 0, MAX_IMAGE_SIZE);
    hp.use_abs_pos = get_bool(g, "use_abs_pos");
    hp.use_rel_pos = get_bool(g, "use_rel_pos");
    hp.neck_ch    = get_int(g, "neck.channels", 1, MAX_DIM);
    hp.neck_eps   = get_float(g, "neck.layer_norm_epsilon");
    hp.proj_ch    = get_int(g, "projector.channels", 1, MAX_DIM);
    hp.out_width  = get_int(g, projection_dim_key(g), 1, MAX_DIM);
    hp.n_tokens   = get_int(g, "image_token_count", 1, MAX_IMAGE_SIZE * MAX_IMAGE_SIZE);
    hp.mean       = get_float_array(g, "image_mean");
    hp.std        = get_float_array(g, "image_std");
    const std::vector<int64_t> glob = get_int_array(g, "global_attention_layers");

    if (hp.eps <= 0.0f || hp.neck_eps <= 0.0f) {
        throw load_error("layer norm epsilons must be positive");
    }
    if (hp.image_size % hp.patch_size != 0) {
        throw load_error(format("image_size %" PRId64 " is not a multiple of patch_size %" PRId64,
                                hp.image_size, hp.patch_size));
    }
    if (hp.n_embd % hp.n_head != 0) {
        throw load_error(format("embedding_length %" PRId64 " is not a multiple of head_count %" PRId64,
                                hp.n_embd, hp.n_head));
    }
    if ((int64_t) hp.mean.size() != hp.n_channels || (int64_t) hp.std.size() != hp.n_channels) {
        throw load_error(format("image_mean/image_std must hold num_channels = %" PRId64 " values", hp.n_channels));
    }
    for (float s : hp.std) {
        if (!(s > 0.0f)) throw load_error("image_std values must be positive");
    }
    hp.grid  = hp.image_size / hp.patch_size;
    hp.grid1 = conv_s2_out(hp.grid);
    hp.grid2 = conv_s2_out(hp.grid1);
    if (hp.grid2 * hp.grid2 != hp.n_tokens) {
        throw load_error(format("image_token_count %" PRId64 " does not match the grid: (%" PRId64 " patches -> %" PRId64
                                " after two stride-2 convs)^2 = %" PRId64,
                                hp.n_tokens, hp.grid, hp.grid2, hp.grid2 * hp.grid2));
    }
    hp.global.assign((size_t) hp.n_layer, hp.window == 0);  // window 0: every layer is global
    for (int64_t i : glob) {
        if (i < 0 || i >= hp.n_layer) {
            throw load_error(format("global_attention_layers holds %" PRId64 ", outside [0, %" PRId64 ")", i, hp.n_layer));
        }
        hp.global[(size_t) i] = true;
    }
    return hp;
}

// ---------------------------------------------------------------------------------------------
// tensors

enum class wkind { f32_only, conv, matmul };

bool type_ok(ggml_type t, wkind k) {
    switch (k) {
        case wkind::f32_only: return t == GGML_TYPE_F32;
        case wkind::conv:     return t == GGML_TYPE_F32 || t == GGML_TYPE_F16;
        case wkind::matmul:
            return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16 || t == GGML_TYPE_Q8_0 ||
                   t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_0 || t == GGML_TYPE_Q5_1;
    }
    return false;
}

std::string shape_str(const int64_t * ne, int n) {
    std::string s = "[";
    for (int i = n - 1; i >= 0; i--) {  // torch order
        s += std::to_string(ne[i]);
        if (i) s += ", ";
    }
    return s + "]";
}

struct tensor_src {
    ggml_tensor * t;
    size_t offset;  // absolute file offset of the data
};

struct loader {
    const gguf_context * g;
    ggml_context * ctx;
    size_t data_offset;
    uint64_t file_size;
    std::vector<tensor_src> srcs;

    struct located {
        int64_t id;
        ggml_type type;
        const int64_t * ne;
        size_t offset;  // absolute file offset of the data
    };

    // A tensor that exists and whose data lies inside the file.
    located locate(const std::string & name) const {
        const int64_t id = gguf_find_tensor(g, name.c_str());
        if (id < 0) {
            throw load_error(format("missing tensor '%s'", name.c_str()));
        }
        const size_t off = data_offset + gguf_get_tensor_offset(g, id);
        const size_t nbytes = gguf_get_tensor_size(g, id);
        if (off > file_size || nbytes > file_size - off) {
            throw load_error(format("tensor '%s' data lies beyond the end of the file (truncated file?)", name.c_str()));
        }
        return {id, gguf_get_tensor_type(g, id), gguf_get_tensor_ne(g, id), off};
    }

    // torch_shape: the numpy/torch shape (outermost first), as written in ARCHITECTURE.md
    ggml_tensor * get(const std::string & name, std::vector<int64_t> torch_shape, wkind kind, bool load = true) {
        const located at = locate(name);
        const ggml_type type = at.type;
        if (!type_ok(type, kind)) {
            throw load_error(format("tensor '%s' has type %s, not allowed here", name.c_str(), ggml_type_name(type)));
        }
        const int64_t * ne = at.ne;
        int64_t want[GGML_MAX_DIMS] = {1, 1, 1, 1};
        const int n = (int) torch_shape.size();
        for (int i = 0; i < n; i++) {
            want[i] = torch_shape[(size_t) (n - 1 - i)];
        }
        for (int i = 0; i < GGML_MAX_DIMS; i++) {
            if (ne[i] != want[i]) {
                throw load_error(format("tensor '%s' has shape %s, expected %s", name.c_str(),
                                        shape_str(ne, GGML_MAX_DIMS).c_str(), shape_str(want, GGML_MAX_DIMS).c_str()));
            }
        }
        if (ne[0] % ggml_blck_size(type) != 0) {
            throw load_error(format("tensor '%s': row size %" PRId64 " is not a multiple of the %s block size",
                                    name.c_str(), ne[0], ggml_type_name(type)));
        }
        ggml_tensor * t = ggml_new_tensor(ctx, type, n == 0 ? 1 : std::max(n, 1), want);
        if (!t) throw load_error("out of memory creating a tensor");
        ggml_set_name(t, name.c_str());
        if (load) srcs.push_back({t, at.offset});
        return t;
    }
};

// Linear interpolation of a rel-pos table (L, c) to (L2, c), as torch F.interpolate(mode="linear",
// align_corners=False) does along L.
std::vector<float> resize_rel_pos(const std::vector<float> & src, int64_t L, int64_t c, int64_t L2) {
    if (L == L2) return src;
    std::vector<float> dst((size_t) (L2 * c));
    const float scale = (float) L / (float) L2;
    for (int64_t i = 0; i < L2; i++) {
        float x = ((float) i + 0.5f) * scale - 0.5f;
        if (x < 0.0f) x = 0.0f;
        int64_t i0 = (int64_t) x;
        if (i0 > L - 1) i0 = L - 1;
        const int64_t i1 = i0 < L - 1 ? i0 + 1 : i0;
        const float l1 = x - (float) i0;
        const float l0 = 1.0f - l1;
        for (int64_t j = 0; j < c; j++) {
            dst[(size_t) (i * c + j)] = l0 * src[(size_t) (i0 * c + j)] + l1 * src[(size_t) (i1 * c + j)];
        }
    }
    return dst;
}

// tab[q][k][:] = resized[q - k + S - 1][:]  (ggml ne: [c, k, q])
std::vector<float> rel_pos_table(const std::vector<float> & resized, int64_t S, int64_t c) {
    std::vector<float> tab((size_t) (S * S * c));
    for (int64_t q = 0; q < S; q++) {
        for (int64_t k = 0; k < S; k++) {
            const float * row = resized.data() + (q - k + S - 1) * c;
            std::copy(row, row + c, tab.data() + (q * S + k) * c);
        }
    }
    return tab;
}

struct file_closer { void operator()(FILE * f) const { if (f) fclose(f); } };
using file_ptr = std::unique_ptr<FILE, file_closer>;

bool seek_to(FILE * f, uint64_t off) {
#if defined(_WIN32)
    return _fseeki64(f, (__int64) off, SEEK_SET) == 0;
#else
    return fseeko(f, (off_t) off, SEEK_SET) == 0;
#endif
}

void read_at(FILE * f, uint64_t off, void * dst, size_t n, const char * what) {
    if (!seek_to(f, off) || fread(dst, 1, n, f) != n) {
        throw load_error(format("failed to read data of tensor '%s'", what));
    }
}

// ---------------------------------------------------------------------------------------------
// graph

// eps: a member of the context's hparams (the fused op keeps a pointer to it)
ggml_tensor * layer_norm(ggml_context * ctx, const got_vision_ctx * vc, ggml_tensor * x, ggml_tensor * w,
                         ggml_tensor * b, const float & eps) {
    if (vc->cpu_kernels && cpu_layernorm_supports(x, w, b)) {
        ggml_tensor * args[3] = {x, w, b};
        return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 3, cpu_layernorm_op,
                              GGML_N_TASKS_MAX, const_cast<float *>(&eps));
    }
    x = ggml_norm(ctx, x, eps);
    x = ggml_mul(ctx, x, w);
    return ggml_add(ctx, x, b);
}

// ggml custom op: dst = src[0] . src[1]^T (+ src[2]) (GELU), on the CPU GEMM (cpu_gemm.h)
void gemm_op_fn(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const gemm_op & op = *(const gemm_op *) userdata;
    const ggml_tensor * x = dst->src[0], * w = dst->src[1], * b = dst->src[2];
    cpu_gemm::args p;
    p.a = (const float *) x->data;
    p.lda = x->ne[0];
    p.b = w->data;
    p.ldb = w->nb[1];
    p.btype = w->type;
    p.bias = b ? (const float *) b->data : nullptr;
    p.gelu = op.gelu;
    p.c = (float *) dst->data;
    p.ldc = dst->ne[0];
    p.M = x->ne[1] * x->ne[2] * x->ne[3];
    p.N = w->ne[1];
    p.K = x->ne[0];
    // threads beyond the reserved scratch stay idle: the split never changes any result
    if (op.packed) {
        const int n = std::min(nth, op.bf16_scratch->threads());
        if (ith < n) {
            const bool ok = cpu_gemm_bf16::run(p, *op.packed, ith, n, op.bf16_scratch->for_thread(ith), op.bf16_isa);
            GGML_ASSERT(ok && "bf16 GEMM arguments");
        }
        return;
    }
    const int n = std::min(nth, op.scratch->threads());
    if (ith < n) {
        cpu_gemm::run(p, ith, n, op.scratch->for_thread(ith));
    }
}

// the bf16 copy of weight w for the bf16 kernels, packed on first use; nullptr when out of memory
const cpu_gemm_bf16::packed_weights * packed_bf16(got_vision_ctx * vc, const ggml_tensor * w) {
    auto it = vc->packed.find(w->data);
    if (it != vc->packed.end()) return it->second.get();
    std::unique_ptr<cpu_gemm_bf16::packed_weights> pw(new (std::nothrow) cpu_gemm_bf16::packed_weights());
    if (!pw || !pw->pack(w->data, w->type, w->nb[1], w->ne[1], w->ne[0])) return nullptr;
    try {
        return vc->packed.emplace(w->data, std::move(pw)).first->second.get();
    } catch (const std::bad_alloc &) {
        return nullptr;
    }
}

// y = w . x (+ b) (then GELU-erf): x [K, ...] f32 activations, w [K, N] weights -> [N, ...].
// One CPU GEMM op when the context runs CPU kernels, else ggml's mul_mat (+ add) (+ gelu_erf).
// nullptr when out of memory.
ggml_tensor * linear(ggml_context * ctx, got_vision_ctx * vc, ggml_tensor * w, ggml_tensor * x, ggml_tensor * b,
                     bool gelu = false) {
    if (vc->cpu_kernels && x->type == GGML_TYPE_F32 && cpu_gemm::supports(w->type, w->ne[0]) &&
        ggml_is_contiguous(w) && (!b || (b->type == GGML_TYPE_F32 && ggml_is_contiguous(b)))) {
        if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
        gemm_op op{&vc->gemm_scratch, gelu};
        if (vc->bf16_isa != cpu_gemm_bf16::isa::none) {
            op.packed = packed_bf16(vc, w);
            if (!op.packed) return nullptr;
            op.bf16_scratch = &vc->bf16_scratch;
            op.bf16_isa = vc->bf16_isa;
        }
        try {
            vc->gemm_ops.push_back(op);
        } catch (const std::bad_alloc &) {
            return nullptr;
        }
        ggml_tensor * args[3] = {x, w, b};
        return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, b ? 3 : 2,
                              gemm_op_fn, GGML_N_TASKS_MAX, &vc->gemm_ops.back());
    }
    ggml_tensor * y = ggml_mul_mat(ctx, w, x);
    if (b) y = ggml_add(ctx, y, b);
    if (gelu) y = ggml_gelu_erf(ctx, y);
    return y;
}

// x: [C, W, H, B] channel-major tokens -> conv (weights [KW, KH, C, OC]) -> [OC, OW, OH, B]
ggml_tensor * conv2d_tokens(ggml_context * ctx, got_vision_ctx * vc, ggml_tensor * kernel, ggml_tensor * x, int stride,
                            int pad) {
    ggml_tensor * whcn = ggml_cont(ctx, ggml_permute(ctx, x, 2, 0, 1, 3));  // [W, H, C, B]
    ggml_tensor * cols = ggml_im2col(ctx, kernel, whcn, stride, stride, pad, pad, 1, 1, true, GGML_TYPE_F32);
    const int64_t K = cols->ne[0];
    ggml_tensor * y = linear(ctx, vc, ggml_reshape_2d(ctx, kernel, K, kernel->ne[3]),
                             ggml_reshape_2d(ctx, cols, K, cols->ne[1] * cols->ne[2] * cols->ne[3]), nullptr);
    if (!y) return nullptr;
    return ggml_reshape_4d(ctx, y, kernel->ne[3], cols->ne[1], cols->ne[2], cols->ne[3]);
}

// Multi-head attention with decomposed rel-pos over groups of T = S*S tokens (windows, or the
// whole grid). qkv: [3D, T, n] (projected, with bias) -> [D, T, n] (before the output projection)
ggml_tensor * attention(ggml_context * ctx, const hparams & hp, const layer & L, ggml_tensor * qkv, bool fused_rel_pos) {
    const int64_t D = hp.n_embd, H = hp.n_head, hd = hp.head_dim();
    const int64_t T = qkv->ne[1], n = qkv->ne[2], S = L.S;

    const size_t es = ggml_element_size(qkv);

    // q: [hd, H, T, n] view -> contiguous [hd, T, H, n]
    ggml_tensor * q = ggml_view_4d(ctx, qkv, hd, H, T, n, hd * es, 3 * D * es, 3 * D * T * es, 0);
    q = ggml_cont(ctx, ggml_permute(ctx, q, 0, 2, 1, 3));
    // k: [hd, T, H, n], made contiguous: the strided view would push mul_mat off its fast paths
    ggml_tensor * k = ggml_view_4d(ctx, qkv, hd, T, H, n, 3 * D * es, hd * es, 3 * D * T * es, D * es);
    k = ggml_cont(ctx, k);
    // v transposed: [T, hd, H, n]
    ggml_tensor * v = ggml_view_4d(ctx, qkv, hd, T, H, n, 3 * D * es, hd * es, 3 * D * T * es, 2 * D * es);
    v = ggml_cont(ctx, ggml_permute(ctx, v, 1, 0, 2, 3));

    ggml_tensor * qs = ggml_scale(ctx, q, 1.0f / std::sqrt((float) hd));
    ggml_tensor * kq = ggml_mul_mat(ctx, k, qs);  // [T_k, T_q, H, n]

    if (hp.use_rel_pos) {
        // decomposed rel-pos: score[q, k] += q . Rh[qh, kh] + q . Rw[qw, kw]  (unscaled q)
        ggml_tensor * q4 = ggml_reshape_4d(ctx, q, hd, S, S, H * n);                 // [c, qw, qh, Hn]
        ggml_tensor * rh = ggml_mul_mat(ctx, L.rel_h_tab, q4);                       // [kh, qw, qh, Hn]
        ggml_tensor * qt = ggml_cont(ctx, ggml_permute(ctx, q4, 0, 2, 1, 3));        // [c, qh, qw, Hn]
        ggml_tensor * rw = ggml_mul_mat(ctx, L.rel_w_tab, qt);                       // [kw, qh, qw, Hn]
        rw = ggml_cont(ctx, ggml_permute(ctx, rw, 0, 2, 1, 3));                      // [kw, qw, qh, Hn]

        if (fused_rel_pos) {
            // one pass over the scores: kq[kw, kh, q] += rw[kw, q] + rh[kh, q]
            ggml_tensor * s4 = ggml_reshape_3d(ctx, kq, T, T, H * n);
            s4 = ggml_add_rel_pos_inplace(ctx, s4, rw, rh);
            kq = ggml_reshape_4d(ctx, s4, T, T, H, n);
        } else {
            // portable form (backends without ADD_REL_POS): two broadcast adds
            ggml_tensor * s4 = ggml_reshape_4d(ctx, kq, S, S, T, H * n);             // [kw, kh, T_q, Hn]
            s4 = ggml_add_inplace(ctx, s4, ggml_reshape_4d(ctx, rw, S, 1, T, H * n));
            s4 = ggml_add_inplace(ctx, s4, ggml_reshape_4d(ctx, rh, 1, S, T, H * n));
            kq = ggml_reshape_4d(ctx, s4, T, T, H, n);
        }
    }
    kq = ggml_soft_max_inplace(ctx, kq);

    ggml_tensor * o = ggml_mul_mat(ctx, v, kq);                                      // [hd, T_q, H, n]
    o = ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3));                            // [hd, H, T, n]
    return ggml_reshape_3d(ctx, o, D, T, n);
}

// bf16 precision runs the attention's two products in bf16 too, on the GEMMs' engine (AMX tiles
// or AVX512_BF16 dot products); isa::none: they stay f32
cpu_gemm_bf16::isa attention_bf16(const got_vision_ctx * vc) {
    return cpu_attn_bf16_available(vc->bf16_isa) ? vc->bf16_isa : cpu_gemm_bf16::isa::none;
}

// The CPU form of the above as one fused op (cpu_attention.h): qkv [3D, G, G, B] is the
// projection *without* its bias (the op adds it, and uses it alone for SAM's window padding);
// the op does window partition, padding and unpartition in its indexing -> [D, G, G, B].
// nullptr when out of memory.
ggml_tensor * attention_cpu(ggml_context * ctx, got_vision_ctx * vc, const layer & L, ggml_tensor * qkv) {
    const hparams & hp = vc->hp;
    const int64_t D = hp.n_embd, G = hp.grid;
    const int64_t B = ggml_nelements(qkv) / (3 * D * G * G);
    qkv = ggml_reshape_4d(ctx, qkv, 3 * D, G, G, B);
    cpu_attn_params p;
    p.D = D;
    p.H = hp.n_head;
    p.hd = hp.head_dim();
    p.S = L.S;
    p.G = G;
    p.scale = 1.0f / std::sqrt((float) p.hd);
    p.qkv_has_bias = false;
    p.rel_pos = hp.use_rel_pos;
    p.bf16 = attention_bf16(vc);
    p.scratch = &vc->attn_scratch;
    try {
        vc->attn_params.push_back(p);
    } catch (const std::bad_alloc &) {
        return nullptr;
    }
    ggml_tensor * args[4] = {qkv, L.qkv_b, L.rel_h_tab, L.rel_w_tab};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, G, G, B, args, p.rel_pos ? 4 : 2, cpu_attn_op, GGML_N_TASKS_MAX,
                          &vc->attn_params.back());
}

// scratch of the fused CPU attention for n threads and the largest layer
bool reserve_attn_scratch(got_vision_ctx * vc, int n) {
    size_t floats = 0;
    for (const layer & L : vc->layers) {
        floats = std::max(floats, cpu_attn_scratch_floats(L.S, vc->hp.head_dim(), attention_bf16(vc)));
    }
    return vc->attn_scratch.reserve(n, floats);
}

// the deepest weight matmul of the model (K of the bf16 GEMMs' scratch)
int64_t max_gemm_depth(const hparams & hp) {
    return std::max({hp.patch_size * hp.patch_size * hp.n_channels, hp.n_embd, hp.n_ff, hp.neck_ch * 9,
                     hp.proj_ch * 9, hp.out_width});
}

// per-thread scratch of the CPU kernels for n threads (none without them); nullptr when done,
// else what ran out
const char * reserve_cpu_scratch(got_vision_ctx * vc, int n) {
    if (!vc->cpu_kernels) return nullptr;
    if (!vc->gemm_scratch.reserve(n)) return "out of memory (GEMM scratch)";
    if (vc->bf16_isa != cpu_gemm_bf16::isa::none && !vc->bf16_scratch.reserve(n, max_gemm_depth(vc->hp))) {
        return "out of memory (bf16 GEMM scratch)";
    }
    if (!reserve_attn_scratch(vc, n)) return "out of memory (attention scratch)";
    return nullptr;
}

// x: [D, Gp, Gp, B] with Gp a multiple of w -> windows [D, w*w, nw*nw*B]
ggml_tensor * window_partition(ggml_context * ctx, ggml_tensor * x, int64_t w) {
    const int64_t D = x->ne[0], Gp = x->ne[1], B = x->ne[3];
    const int64_t nw = Gp / w;
    x = ggml_reshape_4d(ctx, x, D * w, nw, w, nw * B);            // [D*w (row in window), wx, y in window, wy*B]
    x = ggml_cont(ctx, ggml_permute(ctx, x, 0, 2, 1, 3));          // [D*w, y in window, wx, wy*B]
    return ggml_reshape_3d(ctx, x, D, w * w, nw * nw * B);
}

// inverse of window_partition: [D, w*w, nw*nw*B] -> [D, G, G, B]
ggml_tensor * window_unpartition(ggml_context * ctx, ggml_tensor * x, int64_t w, int64_t G, int64_t B) {
    const int64_t D = x->ne[0];
    const int64_t nw = (G + w - 1) / w, Gp = nw * w;
    x = ggml_reshape_4d(ctx, x, D * w, w, nw, nw * B);
    x = ggml_cont(ctx, ggml_permute(ctx, x, 0, 2, 1, 3));          // [D*w, wx, y in window, wy*B]
    x = ggml_reshape_4d(ctx, x, D, Gp, Gp, B);
    if (Gp != G) {
        x = ggml_view_4d(ctx, x, D, G, G, B, x->nb[1], x->nb[2], x->nb[3], 0);
        x = ggml_cont(ctx, x);
    }
    return x;
}

size_t graph_nodes_for(const hparams & hp) {
    return (size_t) (96 * hp.n_layer + 256);
}

bool build_graph(got_vision_ctx * vc, cached_graph & cg, int B) {
    const hparams & hp = vc->hp;
    const size_t mem = ggml_tensor_overhead() * vc->graph_size + ggml_graph_overhead_custom(vc->graph_size, false);
    ggml_init_params ip = {mem, nullptr, true};
    cg.ctx = ggml_init(ip);
    if (!cg.ctx) return false;
    ggml_context * ctx = cg.ctx;
    cg.n_views = B;
    cg.gf = ggml_new_graph_custom(ctx, vc->graph_size, false);

    const int64_t S = hp.image_size, C = hp.n_channels, P = hp.patch_size, G = hp.grid, D = hp.n_embd;
    cg.inp = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, S, C, B);
    ggml_set_name(cg.inp, "pixels");
    ggml_set_input(cg.inp);

    // patch embedding: conv k = s = P, + bias, + absolute position
    ggml_tensor * cols = ggml_im2col(ctx, vc->patch_w, cg.inp, (int) P, (int) P, 0, 0, 1, 1, true, GGML_TYPE_F32);
    ggml_tensor * x = linear(ctx, vc, ggml_reshape_2d(ctx, vc->patch_w, P * P * C, D),
                             ggml_reshape_2d(ctx, cols, P * P * C, G * G * B), vc->patch_b);
    if (!x) return false;
    x = ggml_reshape_4d(ctx, x, D, G, G, B);
    if (vc->pos) {
        x = ggml_add(ctx, x, vc->pos);
    }

    for (const layer & L : vc->layers) {
        ggml_tensor * res = x;
        ggml_tensor * h = layer_norm(ctx, vc, x, L.ln1_w, L.ln1_b, hp.eps);
        ggml_tensor * qkv = linear(ctx, vc, L.qkv_w, h, nullptr);              // [3D, G, G, B]
        if (!qkv) return false;
        if (vc->cpu_kernels) {
            h = attention_cpu(ctx, vc, L, qkv);                                // adds the bias, windows inside
            if (!h) return false;
        } else if (L.global) {
            qkv = ggml_add(ctx, ggml_reshape_3d(ctx, qkv, 3 * D, G * G, B), L.qkv_b);
            h = attention(ctx, hp, L, qkv, vc->fused_rel_pos);
        } else {
            // SAM zero-pads the normed tokens to whole windows before qkv; a zero token projects
            // to the bias alone, so project the real tokens only and pad the projection instead
            const int64_t Gp = (G + L.S - 1) / L.S * L.S;
            if (Gp != G) {
                qkv = ggml_pad(ctx, qkv, 0, (int) (Gp - G), (int) (Gp - G), 0);
            }
            qkv = window_partition(ctx, ggml_add(ctx, qkv, L.qkv_b), L.S);    // [3D, S*S, windows]
            h = attention(ctx, hp, L, qkv, vc->fused_rel_pos);
            h = window_unpartition(ctx, h, L.S, G, B);                         // [D, G, G, B]
        }
        h = linear(ctx, vc, L.out_w, h, L.out_b);                             // projection on real tokens
        if (!h) return false;
        x = ggml_add(ctx, res, ggml_reshape_4d(ctx, h, D, G, G, B));
        h = layer_norm(ctx, vc, x, L.ln2_w, L.ln2_b, hp.eps);
        h = linear(ctx, vc, L.up_w, h, L.up_b, true);                         // + GELU
        if (!h) return false;
        h = linear(ctx, vc, L.down_w, h, L.down_b);
        if (!h) return false;
        x = ggml_add(ctx, x, h);
    }

    // neck: conv1x1 -> LayerNorm2d -> conv3x3 -> LayerNorm2d (norms over channels = ne0)
    const int64_t N = hp.neck_ch;
    x = linear(ctx, vc, ggml_reshape_2d(ctx, vc->neck_conv1, D, N), ggml_reshape_2d(ctx, x, D, G * G * B), nullptr);
    if (!x) return false;
    x = layer_norm(ctx, vc, x, vc->neck_ln1_w, vc->neck_ln1_b, hp.neck_eps);
    x = conv2d_tokens(ctx, vc, vc->neck_conv2, ggml_reshape_4d(ctx, x, N, G, G, B), 1, 1);
    if (!x) return false;
    x = layer_norm(ctx, vc, x, vc->neck_ln2_w, vc->neck_ln2_b, hp.neck_eps);

    // projector: two stride-2 convs, then a linear layer per token
    x = conv2d_tokens(ctx, vc, vc->mm_conv1, x, 2, 1);
    if (!x) return false;
    x = conv2d_tokens(ctx, vc, vc->mm_conv2, x, 2, 1);           // [E, G2, G2, B]
    if (!x) return false;
    x = ggml_reshape_3d(ctx, x, hp.out_width, hp.grid2 * hp.grid2, B);
    x = linear(ctx, vc, vc->mm_proj_w, x, vc->mm_proj_b);
    if (!x) return false;

    cg.out = x;
    ggml_set_name(cg.out, "embeddings");
    ggml_set_output(cg.out);
    ggml_build_forward_expand(cg.gf, cg.out);
    return true;
}

void copy_err(char * err, size_t err_len, const std::string & msg) {
    if (err && err_len > 0) {
        snprintf(err, err_len, "%s", msg.c_str());
    }
}

// The first GPU (or integrated GPU) device, or the one named ``name``; nullptr if none.
ggml_backend_dev_t pick_gpu_device(const char * name) {
    const size_t n = ggml_backend_dev_count();
    for (size_t i = 0; i < n; i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto t = ggml_backend_dev_type(dev);
        if (t != GGML_BACKEND_DEVICE_TYPE_GPU && t != GGML_BACKEND_DEVICE_TYPE_IGPU) continue;
        if (name && *name && strcmp(ggml_backend_dev_name(dev), name) != 0) continue;
        return dev;
    }
    return nullptr;
}

void init_backends(got_vision_ctx * vc, const got_vision_context_params & p) {
    ggml_backend_dev_t cpu_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu_dev) {
        throw load_error("ggml offers no CPU backend");
    }
    if (p.backend == GOT_VISION_BACKEND_GPU || p.backend == GOT_VISION_BACKEND_AUTO) {
        ggml_backend_dev_t dev = pick_gpu_device(p.device);
        if (dev) {
            vc->backend = ggml_backend_dev_init(dev, nullptr);
            if (!vc->backend && p.backend == GOT_VISION_BACKEND_GPU) {
                throw load_error(format("failed to initialise ggml device '%s'", ggml_backend_dev_name(dev)));
            }
        } else if (p.backend == GOT_VISION_BACKEND_GPU) {
            throw load_error(p.device && *p.device ? format("no ggml GPU device named '%s'", p.device)
                                                   : std::string("no ggml GPU device available"));
        }
    } else if (p.backend != GOT_VISION_BACKEND_CPU) {
        throw load_error("unknown backend kind");
    }
    vc->backend_cpu = ggml_backend_dev_init(cpu_dev, nullptr);
    if (!vc->backend_cpu) {
        throw load_error("failed to initialise the ggml CPU backend");
    }
    if (!vc->backend) {
        vc->backend = vc->backend_cpu;
    }
    vc->backend_name = ggml_backend_name(vc->backend);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu_dev);
    vc->set_n_threads_fn = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
}

// n <= 0: one thread per hardware thread
int resolve_threads(int n) {
    if (n <= 0) {
        n = (int) std::thread::hardware_concurrency();
        if (n <= 0) n = 1;
    }
    return n;
}

void apply_threads(got_vision_ctx * vc, int n) {
    n = resolve_threads(n);
    vc->n_threads = n;
    if (vc->set_n_threads_fn) {
        vc->set_n_threads_fn(vc->backend_cpu, n);
    }
}

// A rel-pos table read on the host, resized to the block's extent and expanded to the per-position
// table the graph adds; uploaded once the weight buffer exists.
struct pending_table {
    ggml_tensor * t;
    std::vector<float> data;
};

// The file, checked to be a GGUF before gguf_init_from_file sees it (it is chatty on other files).
file_ptr open_gguf_file(const char * path, uint64_t * file_size) {
    file_ptr f(fopen(path, "rb"));
    if (!f) {
        throw load_error(format("cannot open '%s': %s", path, strerror(errno)));
    }
    char magic[4] = {0};
    if (fread(magic, 1, 4, f.get()) != 4 || memcmp(magic, "GGUF", 4) != 0) {
        throw load_error(format("'%s' is not a GGUF file", path));
    }
    if (fseeko(f.get(), 0, SEEK_END) != 0) {
        throw load_error(format("cannot seek in '%s'", path));
    }
    *file_size = (uint64_t) ftello(f.get());
    return f;
}

ggml_tensor * read_rel_table(got_vision_ctx * vc, const loader & ld, FILE * f, const std::string & name, int64_t S,
                             std::vector<pending_table> & tables) {
    const int64_t hd = vc->hp.head_dim();
    const loader::located at = ld.locate(name);
    const int64_t Lr = at.ne[1];
    if (at.type != GGML_TYPE_F32) {
        throw load_error(format("tensor '%s' must be f32", name.c_str()));
    }
    if (at.ne[0] != hd || Lr < 1 || Lr > 4 * MAX_IMAGE_SIZE || at.ne[2] != 1 || at.ne[3] != 1) {
        throw load_error(format("tensor '%s' has shape %s, expected [%" PRId64 ", %" PRId64 "]", name.c_str(),
                                shape_str(at.ne, GGML_MAX_DIMS).c_str(), 2 * S - 1, hd));
    }
    std::vector<float> raw((size_t) (Lr * hd));
    read_at(f, at.offset, raw.data(), raw.size() * sizeof(float), name.c_str());
    for (float v : raw) {
        if (!std::isfinite(v)) throw load_error(format("tensor '%s' holds non-finite values", name.c_str()));
    }
    ggml_tensor * t = ggml_new_tensor_3d(vc->ctx_w, GGML_TYPE_F32, hd, S, S);
    if (!t) throw load_error("out of memory creating a tensor");
    ggml_set_name(t, (name + ".table").c_str());
    tables.push_back({t, rel_pos_table(resize_rel_pos(raw, Lr, hd, 2 * S - 1), S, hd)});
    return t;
}

void declare_block(got_vision_ctx * vc, loader & ld, FILE * f, int64_t i, std::vector<pending_table> & tables) {
    const hparams & hp = vc->hp;
    const int64_t D = hp.n_embd;
    layer & L = vc->layers[(size_t) i];
    const std::string p = "v.blk." + std::to_string(i) + ".";
    L.global = hp.global[(size_t) i];
    L.S = L.global ? hp.grid : hp.window;
    L.ln1_w  = ld.get(p + "ln1.weight", {D}, wkind::f32_only);
    L.ln1_b  = ld.get(p + "ln1.bias", {D}, wkind::f32_only);
    L.qkv_w  = ld.get(p + "attn_qkv.weight", {3 * D, D}, wkind::matmul);
    L.qkv_b  = ld.get(p + "attn_qkv.bias", {3 * D}, wkind::f32_only);
    L.out_w  = ld.get(p + "attn_out.weight", {D, D}, wkind::matmul);
    L.out_b  = ld.get(p + "attn_out.bias", {D}, wkind::f32_only);
    L.ln2_w  = ld.get(p + "ln2.weight", {D}, wkind::f32_only);
    L.ln2_b  = ld.get(p + "ln2.bias", {D}, wkind::f32_only);
    L.up_w   = ld.get(p + "ffn_up.weight", {hp.n_ff, D}, wkind::matmul);
    L.up_b   = ld.get(p + "ffn_up.bias", {hp.n_ff}, wkind::f32_only);
    L.down_w = ld.get(p + "ffn_down.weight", {D, hp.n_ff}, wkind::matmul);
    L.down_b = ld.get(p + "ffn_down.bias", {D}, wkind::f32_only);
    if (hp.use_rel_pos) {
        L.rel_h_tab = read_rel_table(vc, ld, f, p + "attn_rel_pos_h", L.S, tables);
        L.rel_w_tab = read_rel_table(vc, ld, f, p + "attn_rel_pos_w", L.S, tables);
    }
}

// Allocates the weight buffer and fills it: the file's tensors, then the rel-pos tables.
void upload_weights(got_vision_ctx * vc, const loader & ld, FILE * f, const std::vector<pending_table> & tables) {
    vc->buf_w = ggml_backend_alloc_ctx_tensors(vc->ctx_w, vc->backend);
    if (!vc->buf_w) {
        throw load_error(format("failed to allocate the weight buffer on %s", vc->backend_name.c_str()));
    }
    ggml_backend_buffer_set_usage(vc->buf_w, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    const bool host = ggml_backend_buffer_is_host(vc->buf_w);
    if (host) {
        // before the weights are read in: pages are backed at first touch
        huge_pages::advise(ggml_backend_buffer_get_base(vc->buf_w), ggml_backend_buffer_get_size(vc->buf_w));
    }
    std::vector<uint8_t> staging;
    for (const tensor_src & s : ld.srcs) {
        const size_t nbytes = ggml_nbytes(s.t);
        if (host) {
            read_at(f, s.offset, s.t->data, nbytes, ggml_get_name(s.t));
        } else {
            staging.resize(nbytes);
            read_at(f, s.offset, staging.data(), nbytes, ggml_get_name(s.t));
            ggml_backend_tensor_set(s.t, staging.data(), 0, nbytes);
        }
    }
    for (const pending_table & pt : tables) {
        ggml_backend_tensor_set(pt.t, pt.data.data(), 0, pt.data.size() * sizeof(float));
    }
}

void load_model(got_vision_ctx * vc, const char * path) {
    uint64_t file_size = 0;
    file_ptr f = open_gguf_file(path, &file_size);
    gguf_init_params gp = {true, nullptr};
    gguf_ptr g(gguf_init_from_file(path, gp));
    if (!g) {
        throw load_error(format("'%s' is not a valid GGUF file (corrupt or truncated header)", path));
    }
    vc->hp = read_hparams(g.get());
    const hparams & hp = vc->hp;
    const int64_t D = hp.n_embd, C = hp.n_channels, P = hp.patch_size, G = hp.grid;
    const int64_t N = hp.neck_ch, E = hp.out_width;

    const size_t n_tensors = (size_t) (16 * hp.n_layer + 32);
    ggml_init_params ip = {ggml_tensor_overhead() * n_tensors, nullptr, true};
    vc->ctx_w = ggml_init(ip);
    if (!vc->ctx_w) {
        throw load_error("out of memory (weight context)");
    }
    loader ld{g.get(), vc->ctx_w, gguf_get_data_offset(g.get()), file_size, {}};

    vc->patch_w = ld.get("v.patch_embd.weight", {D, C, P, P}, wkind::conv);
    vc->patch_b = ld.get("v.patch_embd.bias", {D}, wkind::f32_only);
    if (hp.use_abs_pos) {
        vc->pos = ld.get("v.pos_embd", {1, G, G, D}, wkind::f32_only);
    }
    std::vector<pending_table> tables;
    vc->layers.resize((size_t) hp.n_layer);
    for (int64_t i = 0; i < hp.n_layer; i++) {
        declare_block(vc, ld, f.get(), i, tables);
    }
    vc->neck_conv1 = ld.get("v.neck.conv1.weight", {N, D, 1, 1}, wkind::conv);
    vc->neck_ln1_w = ld.get("v.neck.ln1.weight", {N}, wkind::f32_only);
    vc->neck_ln1_b = ld.get("v.neck.ln1.bias", {N}, wkind::f32_only);
    vc->neck_conv2 = ld.get("v.neck.conv2.weight", {N, N, 3, 3}, wkind::conv);
    vc->neck_ln2_w = ld.get("v.neck.ln2.weight", {N}, wkind::f32_only);
    vc->neck_ln2_b = ld.get("v.neck.ln2.bias", {N}, wkind::f32_only);
    vc->mm_conv1   = ld.get("mm.conv1.weight", {hp.proj_ch, N, 3, 3}, wkind::conv);
    vc->mm_conv2   = ld.get("mm.conv2.weight", {E, hp.proj_ch, 3, 3}, wkind::conv);
    vc->mm_proj_w  = ld.get("mm.proj.weight", {E, E}, wkind::matmul);
    vc->mm_proj_b  = ld.get("mm.proj.bias", {E}, wkind::f32_only);
    upload_weights(vc, ld, f.get(), tables);
}

void set_error(got_vision_ctx * vc, const std::string & msg) { vc->last_error = msg; }

// index of the graph for B views, building it if needed; -1 on failure
int graph_for(got_vision_ctx * vc, int B) {
    for (size_t i = 0; i < vc->graphs.size(); i++) {
        if (vc->graphs[i].n_views == B) return (int) i;
    }
    cached_graph cg;
    if (!build_graph(vc, cg, B)) {
        ggml_free(cg.ctx);
        return -1;
    }
    vc->graphs.push_back(cg);
    return (int) vc->graphs.size() - 1;
}

#ifdef GOT_VISION_PROFILE
// development aid: per-op wall time to stderr (compile with -DGOT_VISION_PROFILE)
struct prof_state { int64_t t0 = 0; double ms[GGML_OP_COUNT] = {0}; int n[GGML_OP_COUNT] = {0}; };
bool prof_cb(ggml_tensor * t, bool ask, void * ud) {
    prof_state & p = *(prof_state *) ud;
    if (ask) { p.t0 = ggml_time_us(); return true; }
    const double dt = (ggml_time_us() - p.t0) / 1000.0;
    p.ms[t->op] += dt; p.n[t->op]++;
    if (t->op == GGML_OP_MUL_MAT && dt > 200) {
        fprintf(stderr, "mul_mat %s[%lld,%lld,%lld,%lld] x [%lld,%lld,%lld,%lld] %.1f ms\n", ggml_type_name(t->src[0]->type),
                (long long) t->src[0]->ne[0], (long long) t->src[0]->ne[1], (long long) t->src[0]->ne[2], (long long) t->src[0]->ne[3],
                (long long) t->src[1]->ne[0], (long long) t->src[1]->ne[1], (long long) t->src[1]->ne[2], (long long) t->src[1]->ne[3], dt);
    }
    if (strcmp(ggml_get_name(t), "embeddings") == 0) {
        for (int i = 0; i < GGML_OP_COUNT; i++) {
            if (p.n[i]) fprintf(stderr, "%-14s %5d %9.1f ms\n", ggml_op_name((ggml_op) i), p.n[i], p.ms[i]);
        }
        p = prof_state();
    }
    return true;
}
#endif

// Does the main backend implement ADD_REL_POS (the CPU does; most GPU backends do not)?
bool backend_has_add_rel_pos(ggml_backend_t backend) {
    ggml_init_params ip = {8 * ggml_tensor_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) return false;
    ggml_tensor * a = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, 4, 4, 1);  // [T_k, T_q, heads]
    ggml_tensor * pw = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 2, 2, 2, 1);
    ggml_tensor * ph = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 2, 2, 2, 1);
    ggml_tensor * r = ggml_add_rel_pos_inplace(ctx, a, pw, ph);
    const bool ok = ggml_backend_supports_op(backend, r);
    ggml_free(ctx);
    return ok;
}

// Huge pages for the compute buffers, which the scheduler allocates without exposing them: the
// span of the allocated graph's tensors in one host buffer lies inside that buffer. Advised when
// a graph is (re)allocated, so before the first compute touches the pages.
void advise_huge_pages(ggml_cgraph * gf) {
    struct span { ggml_backend_buffer_t buf; uintptr_t lo, hi; };
    std::vector<span> spans;
    const int n = ggml_graph_n_nodes(gf);
    for (int i = 0; i < n; i++) {
        const ggml_tensor * t = ggml_graph_node(gf, i);
        if (!t->data || !t->buffer || !ggml_backend_buffer_is_host(t->buffer) ||
            ggml_backend_buffer_get_usage(t->buffer) == GGML_BACKEND_BUFFER_USAGE_WEIGHTS) {
            continue;
        }
        const uintptr_t lo = (uintptr_t) t->data, hi = lo + ggml_nbytes(t);
        auto it = std::find_if(spans.begin(), spans.end(), [&](const span & s) { return s.buf == t->buffer; });
        if (it == spans.end()) {
            spans.push_back({t->buffer, lo, hi});
        } else {
            it->lo = std::min(it->lo, lo);
            it->hi = std::max(it->hi, hi);
        }
    }
    for (const span & s : spans) {
        huge_pages::advise((void *) s.lo, (size_t) (s.hi - s.lo));
    }
}

void init_compute(got_vision_ctx * vc, int max_batch) {
    vc->fused_rel_pos = backend_has_add_rel_pos(vc->backend);
    vc->cpu_kernels = vc->want_cpu_kernels && vc->backend == vc->backend_cpu;
    vc->bf16_isa = vc->cpu_kernels && vc->want_bf16 ? cpu_gemm_bf16::best() : cpu_gemm_bf16::isa::none;
    if (const char * e = reserve_cpu_scratch(vc, vc->n_threads)) {
        throw load_error(e);
    }
    vc->graph_size = graph_nodes_for(vc->hp);
    ggml_backend_t backends[2] = {vc->backend, vc->backend_cpu};
    const int nb = vc->backend == vc->backend_cpu ? 1 : 2;
    if (nb == 1) backends[0] = vc->backend_cpu;
    vc->sched = ggml_backend_sched_new(backends, nullptr, nb, vc->graph_size, false, nb > 1);
    if (!vc->sched) {
        throw load_error("failed to create the ggml scheduler");
    }
#ifdef GOT_VISION_PROFILE
    vc->prof = std::make_unique<prof_state>();
    ggml_backend_sched_set_eval_callback(vc->sched, prof_cb, vc->prof.get());
#endif
    vc->max_batch = max_batch;
    const int gi = graph_for(vc, max_batch);
    if (gi < 0) {
        throw load_error("out of memory building the graph");
    }
    if (!ggml_backend_sched_reserve(vc->sched, vc->graphs[(size_t) gi].gf)) {
        throw load_error(format("failed to reserve the compute buffer for %d view(s) on %s", max_batch,
                                vc->backend_name.c_str()));
    }
    vc->compute_size = 0;
    for (int i = 0; i < nb; i++) {
        vc->compute_size += ggml_backend_sched_get_buffer_size(vc->sched, backends[i]);
    }
}

} // namespace

got_vision_ctx::~got_vision_ctx() {
    for (auto & g : graphs) {
        ggml_free(g.ctx);
    }
    if (sched) ggml_backend_sched_free(sched);
    if (buf_w) ggml_backend_buffer_free(buf_w);
    if (ctx_w) ggml_free(ctx_w);
    if (backend_cpu && backend_cpu != backend) ggml_backend_free(backend_cpu);
    if (backend) ggml_backend_free(backend);
}

// ---------------------------------------------------------------------------------------------
// C API

extern "C" {

got_vision_context_params got_vision_context_default_params(void) {
    got_vision_context_params p;
    p.n_threads = 0;
    p.backend = GOT_VISION_BACKEND_CPU;
    p.device = nullptr;
    p.max_batch_views = 1;
    p.cpu_kernels = 1;
    p.cpu_bf16 = 0;
    return p;
}

got_vision_ctx * got_vision_init_from_file(const char * path, got_vision_context_params params,
                                           char * err, size_t err_len) {
    copy_err(err, err_len, "");
    if (!path) {
        copy_err(err, err_len, "path is NULL");
        return nullptr;
    }
    got_vision_ctx * vc = new (std::nothrow) got_vision_ctx();
    if (!vc) {
        copy_err(err, err_len, "out of memory");
        return nullptr;
    }
    try {
        init_backends(vc, params);
        apply_threads(vc, params.n_threads);
        load_model(vc, path);
        vc->want_cpu_kernels = params.cpu_kernels != 0;
        vc->want_bf16 = params.cpu_bf16 != 0;
        init_compute(vc, params.max_batch_views > 0 ? params.max_batch_views : 1);
    } catch (const std::exception & e) {
        copy_err(err, err_len, std::string(path) + ": " + e.what());
        delete vc;
        return nullptr;
    }
    return vc;
}

void got_vision_free(got_vision_ctx * ctx) {
    delete ctx;
}

int got_vision_image_size(const got_vision_ctx * ctx) { return ctx ? (int) ctx->hp.image_size : 0; }
int got_vision_num_channels(const got_vision_ctx * ctx) { return ctx ? (int) ctx->hp.n_channels : 0; }
int got_vision_tokens_per_view(const got_vision_ctx * ctx) { return ctx ? (int) ctx->hp.n_tokens : 0; }
int got_vision_output_width(const got_vision_ctx * ctx) { return ctx ? (int) ctx->hp.out_width : 0; }
const float * got_vision_image_mean(const got_vision_ctx * ctx) { return ctx ? ctx->hp.mean.data() : nullptr; }
const float * got_vision_image_std(const got_vision_ctx * ctx) { return ctx ? ctx->hp.std.data() : nullptr; }
const char * got_vision_backend_name(const got_vision_ctx * ctx) { return ctx ? ctx->backend_name.c_str() : ""; }
size_t got_vision_weights_size(const got_vision_ctx * ctx) {
    return ctx && ctx->buf_w ? ggml_backend_buffer_get_size(ctx->buf_w) : 0;
}
size_t got_vision_compute_buffer_size(const got_vision_ctx * ctx) { return ctx ? ctx->compute_size : 0; }
int got_vision_max_batch_views(const got_vision_ctx * ctx) { return ctx ? ctx->max_batch : 0; }
int got_vision_cpu_kernels(const got_vision_ctx * ctx) { return ctx && ctx->cpu_kernels ? 1 : 0; }
int got_vision_cpu_bf16(const got_vision_ctx * ctx) {
    return ctx && ctx->bf16_isa != cpu_gemm_bf16::isa::none ? 1 : 0;
}
const char * got_vision_gemm_isa(const got_vision_ctx * ctx) {
    if (!ctx) return "";
    if (!ctx->cpu_kernels) return "ggml";
    if (ctx->bf16_isa != cpu_gemm_bf16::isa::none) return cpu_gemm_bf16::name(ctx->bf16_isa);
    return cpu_gemm::best_isa_name();
}
const char * got_vision_attention_isa(const got_vision_ctx * ctx) {
    if (!ctx) return "";
    if (!ctx->cpu_kernels) return "ggml";
    const cpu_gemm_bf16::isa bf16 = attention_bf16(ctx);
    return bf16 != cpu_gemm_bf16::isa::none ? cpu_gemm_bf16::name(bf16) : cpu_attn_isa();
}
const char * got_vision_layernorm_isa(const got_vision_ctx * ctx) {
    if (!ctx) return "";
    return ctx->cpu_kernels ? cpu_layernorm_isa() : "ggml";
}

int got_vision_set_n_threads(got_vision_ctx * ctx, int n_threads) {
    if (!ctx) return GOT_VISION_ERR_INVALID_ARGUMENT;
    std::lock_guard<std::mutex> lock(ctx->mu);
    const int n = resolve_threads(n_threads);
    if (const char * e = reserve_cpu_scratch(ctx, n)) {
        set_error(ctx, e);
        return GOT_VISION_ERR_ALLOC;
    }
    apply_threads(ctx, n);
    return GOT_VISION_OK;
}

const char * got_vision_last_error(const got_vision_ctx * ctx) {
    return ctx ? ctx->last_error.c_str() : "context is NULL";
}

int got_vision_encode(got_vision_ctx * ctx, const float * pixels, int n_views, float * out, size_t out_len_floats) {
    if (!ctx) return GOT_VISION_ERR_INVALID_ARGUMENT;
    std::lock_guard<std::mutex> lock(ctx->mu);
    ctx->last_error.clear();
    if (!pixels || !out || n_views < 1) {
        set_error(ctx, "pixels and out must be non-NULL and n_views >= 1");
        return GOT_VISION_ERR_INVALID_ARGUMENT;
    }
    const hparams & hp = ctx->hp;
    const size_t in_per_view = (size_t) (hp.n_channels * hp.image_size * hp.image_size);
    const size_t out_per_view = (size_t) (hp.n_tokens * hp.out_width);
    if (out_len_floats / out_per_view < (size_t) n_views) {
        set_error(ctx, format("output buffer holds %zu floats, %d view(s) need %zu", out_len_floats, n_views,
                              out_per_view * (size_t) n_views));
        return GOT_VISION_ERR_BUFFER_TOO_SMALL;
    }
    const size_t n_in = in_per_view * (size_t) n_views;
    for (size_t i = 0; i < n_in; i++) {
        if (!std::isfinite(pixels[i])) {
            set_error(ctx, format("pixel value %zu (view %zu) is not finite", i, i / in_per_view));
            return GOT_VISION_ERR_NONFINITE_INPUT;
        }
    }

    try {
        for (int v0 = 0; v0 < n_views; v0 += ctx->max_batch) {
            const int B = std::min(ctx->max_batch, n_views - v0);
            const int gi = graph_for(ctx, B);
            if (gi < 0) {
                set_error(ctx, "out of memory building the graph");
                return GOT_VISION_ERR_ALLOC;
            }
            cached_graph & cg = ctx->graphs[(size_t) gi];
            if (ctx->allocated != gi) {
                ggml_backend_sched_reset(ctx->sched);
                ctx->allocated = -1;
                if (!ggml_backend_sched_alloc_graph(ctx->sched, cg.gf)) {
                    set_error(ctx, format("failed to allocate the compute graph for %d view(s)", B));
                    return GOT_VISION_ERR_ALLOC;
                }
                ctx->allocated = gi;
                advise_huge_pages(cg.gf);
            }
            ggml_backend_tensor_set(cg.inp, pixels + in_per_view * (size_t) v0, 0, in_per_view * (size_t) B * sizeof(float));
            const ggml_status st = ggml_backend_sched_graph_compute(ctx->sched, cg.gf);
            if (st != GGML_STATUS_SUCCESS) {
                ctx->allocated = -1;
                ggml_backend_sched_reset(ctx->sched);
                set_error(ctx, format("graph compute failed (ggml status %d)", (int) st));
                return GOT_VISION_ERR_COMPUTE;
            }
            ggml_backend_tensor_get(cg.out, out + out_per_view * (size_t) v0, 0, out_per_view * (size_t) B * sizeof(float));
        }
    } catch (const std::exception & e) {
        set_error(ctx, e.what());
        return GOT_VISION_ERR_ALLOC;
    }
    return GOT_VISION_OK;
}

} // extern "C"
