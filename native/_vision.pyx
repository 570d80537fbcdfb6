# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin 1:1 binding of native/got_vision.h (the GOT vision encoder on ggml).

``VisionContext`` owns one ``got_vision_ctx``. Errors from the C API become ``RuntimeError`` with
the C message (``gotocr_fast.vision`` maps them to ``VisionError``); shape checks live in
``gotocr_fast.vision``, the hot loop releases the GIL.
"""

from libc.stddef cimport size_t
from libc.stdint cimport int64_t

import numpy as np

cdef extern from "got_vision.h" nogil:
    ctypedef struct got_vision_ctx:
        pass
    cdef enum got_vision_backend_kind:
        GOT_VISION_BACKEND_CPU
        GOT_VISION_BACKEND_GPU
        GOT_VISION_BACKEND_AUTO
    cdef enum got_vision_status:
        GOT_VISION_OK
        GOT_VISION_ERR_INVALID_ARGUMENT
        GOT_VISION_ERR_BUFFER_TOO_SMALL
        GOT_VISION_ERR_ALLOC
        GOT_VISION_ERR_COMPUTE
        GOT_VISION_ERR_NONFINITE_INPUT
    struct got_vision_context_params:
        int n_threads
        got_vision_backend_kind backend
        const char * device
        int max_batch_views
        int cpu_kernels
        int cpu_bf16

    got_vision_context_params got_vision_context_default_params()
    got_vision_ctx * got_vision_init_from_file(const char * path, got_vision_context_params params,
                                               char * err, size_t err_len)
    void got_vision_free(got_vision_ctx * ctx)
    int got_vision_image_size(const got_vision_ctx * ctx)
    int got_vision_num_channels(const got_vision_ctx * ctx)
    int got_vision_tokens_per_view(const got_vision_ctx * ctx)
    int got_vision_output_width(const got_vision_ctx * ctx)
    const float * got_vision_image_mean(const got_vision_ctx * ctx)
    const float * got_vision_image_std(const got_vision_ctx * ctx)
    const char * got_vision_backend_name(const got_vision_ctx * ctx)
    size_t got_vision_weights_size(const got_vision_ctx * ctx)
    size_t got_vision_compute_buffer_size(const got_vision_ctx * ctx)
    int got_vision_max_batch_views(const got_vision_ctx * ctx)
    int got_vision_set_n_threads(got_vision_ctx * ctx, int n_threads)
    int got_vision_cpu_kernels(const got_vision_ctx * ctx)
    int got_vision_cpu_bf16(const got_vision_ctx * ctx)
    const char * got_vision_gemm_isa(const got_vision_ctx * ctx)
    const char * got_vision_attention_isa(const got_vision_ctx * ctx)
    const char * got_vision_layernorm_isa(const got_vision_ctx * ctx)
    int got_vision_encode(got_vision_ctx * ctx, const float * pixels, int n_views,
                          float * out, size_t out_len_floats)
    const char * got_vision_last_error(const got_vision_ctx * ctx)

cdef extern from "cpu_gemm_test.h" nogil:
    int cpu_gemm_test_run(const float * a, int64_t M, int64_t K, const void * b, int btype, int64_t ldb,
                          int64_t N, const float * bias, int gelu, float * c, int n_threads, const char * isa,
                          float * scratch_or_null)
    size_t cpu_gemm_test_scratch_floats()
    const char * cpu_gemm_test_best_isa()
    double cpu_gemm_test_fma_peak(int64_t iters, const char * isa)
    int cpu_gemm_bf16_test_run(const float * a, int64_t M, int64_t K, const void * b, int btype, int64_t ldb,
                               int64_t N, const float * bias, int gelu, float * c, int n_threads, const char * isa)
    const char * cpu_gemm_bf16_test_best_isa()

cdef extern from "cpu_attention_test.h" nogil:
    int cpu_attn_test_run(const float * qkv, int64_t B, int64_t G, int64_t D, int64_t H, int64_t S,
                          const float * bias, int qkv_has_bias, const float * tab_h, const float * tab_w,
                          float scale, float * out, int n_threads, const char * isa)
    const char * cpu_attn_test_best_isa()
    int cpu_attn_test_available(const char * isa)

BACKEND_CPU = GOT_VISION_BACKEND_CPU
BACKEND_GPU = GOT_VISION_BACKEND_GPU
BACKEND_AUTO = GOT_VISION_BACKEND_AUTO
_BACKENDS = {"cpu": GOT_VISION_BACKEND_CPU, "gpu": GOT_VISION_BACKEND_GPU, "auto": GOT_VISION_BACKEND_AUTO}


cdef class VisionContext:
    """One loaded vision GGUF. Not picklable; close() frees it (also on garbage collection)."""

    cdef got_vision_ctx * ctx

    def __cinit__(self, path, int n_threads=0, backend="cpu", device=None, int max_batch_views=1,
                  bint cpu_kernels=True, bint cpu_bf16=False):
        cdef got_vision_context_params p = got_vision_context_default_params()
        cdef char err[1024]
        cdef bytes bpath = str(path).encode("utf-8")
        cdef bytes bdev
        cdef const char * cpath = bpath
        self.ctx = NULL
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
        p.n_threads = n_threads
        p.backend = _BACKENDS[backend]
        p.max_batch_views = max_batch_views
        p.cpu_kernels = 1 if cpu_kernels else 0
        p.cpu_bf16 = 1 if cpu_bf16 else 0
        if device is not None:
            bdev = str(device).encode("utf-8")
            p.device = bdev
        err[0] = 0
        with nogil:
            self.ctx = got_vision_init_from_file(cpath, p, err, sizeof(err))
        if self.ctx == NULL:
            raise RuntimeError(err.decode("utf-8", "replace"))

    def __dealloc__(self):
        if self.ctx != NULL:
            got_vision_free(self.ctx)
            self.ctx = NULL

    cdef got_vision_ctx * _live(self) except NULL:
        if self.ctx == NULL:
            raise RuntimeError("the vision context is closed")
        return self.ctx

    def close(self):
        if self.ctx != NULL:
            got_vision_free(self.ctx)
            self.ctx = NULL

    @property
    def closed(self):
        return self.ctx == NULL

    @property
    def image_size(self):
        return got_vision_image_size(self._live())

    @property
    def num_channels(self):
        return got_vision_num_channels(self._live())

    @property
    def tokens_per_view(self):
        return got_vision_tokens_per_view(self._live())

    @property
    def output_width(self):
        """E, the width of each image token's embedding (= the language model's hidden size)."""
        return got_vision_output_width(self._live())

    @property
    def image_mean(self):
        cdef got_vision_ctx * c = self._live()
        cdef const float * m = got_vision_image_mean(c)
        return tuple(m[i] for i in range(got_vision_num_channels(c)))

    @property
    def image_std(self):
        cdef got_vision_ctx * c = self._live()
        cdef const float * s = got_vision_image_std(c)
        return tuple(s[i] for i in range(got_vision_num_channels(c)))

    @property
    def backend_name(self):
        return got_vision_backend_name(self._live()).decode("utf-8", "replace")

    @property
    def weights_size(self):
        return got_vision_weights_size(self._live())

    @property
    def compute_buffer_size(self):
        return got_vision_compute_buffer_size(self._live())

    @property
    def max_batch_views(self):
        return got_vision_max_batch_views(self._live())

    @property
    def cpu_kernels(self):
        return got_vision_cpu_kernels(self._live()) != 0

    @property
    def cpu_bf16(self):
        return got_vision_cpu_bf16(self._live()) != 0

    @property
    def kernel_isa(self):
        """The instruction set each kind of kernel runs on ("ggml" where ggml's own ops run)."""
        cdef got_vision_ctx * c = self._live()
        return {
            "gemm": got_vision_gemm_isa(c).decode("ascii"),
            "attention": got_vision_attention_isa(c).decode("ascii"),
            "layernorm": got_vision_layernorm_isa(c).decode("ascii"),
        }

    def set_n_threads(self, int n_threads):
        cdef got_vision_ctx * c = self._live()
        if got_vision_set_n_threads(c, n_threads) != GOT_VISION_OK:
            raise RuntimeError(got_vision_last_error(c).decode("utf-8", "replace"))

    def encode_into(self, const float[:, :, :, ::1] pixels, float[:, :, ::1] out):
        """pixels: C-contiguous float32 [N, C, S, S]; out: C-contiguous float32 [N, T, E] (written)."""
        cdef got_vision_ctx * c = self._live()
        cdef Py_ssize_t n = pixels.shape[0]
        if n < 1 or n > 0x7fffffff:
            raise ValueError(f"need 1 to 2**31-1 views, got {n}")
        cdef int S = got_vision_image_size(c)
        if pixels.shape[1] != got_vision_num_channels(c) or pixels.shape[2] != S or pixels.shape[3] != S:
            raise ValueError(f"pixels have shape {(pixels.shape[0], pixels.shape[1], pixels.shape[2], pixels.shape[3])}, the model wants "
                             f"(N, {got_vision_num_channels(c)}, {S}, {S})")
        if (out.shape[0] != n or out.shape[1] != got_vision_tokens_per_view(c)
                or out.shape[2] != got_vision_output_width(c)):
            raise ValueError(f"out has shape {(out.shape[0], out.shape[1], out.shape[2])}, expected "
                             f"({n}, {got_vision_tokens_per_view(c)}, {got_vision_output_width(c)})")
        cdef const float * src = &pixels[0, 0, 0, 0]
        cdef float * dst = &out[0, 0, 0]
        cdef size_t out_len = <size_t>(out.shape[0] * out.shape[1] * out.shape[2])
        cdef int rc
        with nogil:
            rc = got_vision_encode(c, src, <int>n, dst, out_len)
        if rc != GOT_VISION_OK:
            raise RuntimeError(got_vision_last_error(c).decode("utf-8", "replace"))


def _gemm_for_tests(const float[:, ::1] a, const unsigned char[:, ::1] b, int btype, int n, bias, bint gelu,
                    int n_threads=1, isa="best", out=None, scratch=None):
    """Tests only: the CPU GEMM of the vision encoder (native/cpu_gemm.h).

    a: float32 [M, K]; b: raw rows [N, row bytes] of ggml type ``btype`` (n = N columns of C);
    bias: float32 [N] or None. Benchmarks time the product alone, as the encoder runs it, with
    ``out``, a float32 [M, N] to write into, and ``scratch``, a 64-byte aligned float32 buffer of
    ``_gemm_scratch_floats()`` kept between calls (else each call allocates both).
    Returns float32 [M, N] = a . b^T (+ bias) (GELU-erf).
    """
    cdef int64_t M = a.shape[0], K = a.shape[1]
    if b.shape[0] != n:
        raise ValueError(f"b has {b.shape[0]} rows, expected {n}")
    cdef const float[::1] bias_v
    cdef const float * pbias = NULL
    if bias is not None:
        bias_v = np.ascontiguousarray(bias, dtype=np.float32)
        if bias_v.shape[0] != n:
            raise ValueError("bias must hold N floats")
        pbias = &bias_v[0]
    if out is None:
        out = np.zeros((M, n), dtype=np.float32)
    elif out.shape != (M, n) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 [{M}, {n}]")
    cdef float[:, ::1] c = out
    cdef float[::1] work
    cdef float * pwork = NULL
    if scratch is not None:
        work = scratch
        if <size_t> work.shape[0] < cpu_gemm_test_scratch_floats():
            raise ValueError(f"scratch must hold {cpu_gemm_test_scratch_floats()} floats")
        pwork = &work[0]
    cdef bytes bisa = str(isa).encode("ascii")
    cdef const char * cisa = bisa
    cdef int rc
    with nogil:
        rc = cpu_gemm_test_run(&a[0, 0], M, K, &b[0, 0], btype, b.shape[1], n, pbias, gelu, &c[0, 0],
                               n_threads, cisa, pwork)
    if rc != 0:
        raise RuntimeError(f"cpu_gemm_test_run failed ({rc})")
    return out


def _gemm_bf16_for_tests(const float[:, ::1] a, const unsigned char[:, ::1] b, int btype, int n, bias, bint gelu,
                         int n_threads=1, isa="best"):
    """Tests only: the bf16 GEMM (native/cpu_gemm_bf16.h); arguments and result as _gemm_for_tests."""
    cdef int64_t M = a.shape[0], K = a.shape[1]
    if b.shape[0] != n:
        raise ValueError(f"b has {b.shape[0]} rows, expected {n}")
    cdef const float[::1] bias_v
    cdef const float * pbias = NULL
    if bias is not None:
        bias_v = np.ascontiguousarray(bias, dtype=np.float32)
        if bias_v.shape[0] != n:
            raise ValueError("bias must hold N floats")
        pbias = &bias_v[0]
    out = np.zeros((M, n), dtype=np.float32)
    cdef float[:, ::1] c = out
    cdef bytes bisa = str(isa).encode("ascii")
    cdef const char * cisa = bisa
    cdef int rc
    with nogil:
        rc = cpu_gemm_bf16_test_run(&a[0, 0], M, K, &b[0, 0], btype, b.shape[1], n, pbias, gelu, &c[0, 0],
                                    n_threads, cisa)
    if rc != 0:
        raise RuntimeError(f"cpu_gemm_bf16_test_run failed ({rc})")
    return out


def _gemm_bf16_best_isa():
    """Tests only: the bf16 GEMM kernel this CPU runs ("amx", "avx512_bf16"), or "none"."""
    return cpu_gemm_bf16_test_best_isa().decode("ascii")


def _gemm_scratch_floats():
    """Tests only: the floats of scratch ``_gemm_for_tests`` takes."""
    return cpu_gemm_test_scratch_floats()


def _gemm_best_isa():
    """Tests only: the GEMM variant this CPU runs ("avx512", "avx2" or "generic")."""
    return cpu_gemm_test_best_isa().decode("ascii")


def _fma_peak_gflops(int64_t iters=20_000_000, isa="best"):
    """Benchmarks: one thread's FMA throughput (GFLOP/s) at the GEMM's vector width, measured now;
    None where the CPU has no FMA loop of that width."""
    cdef bytes bisa = str(isa).encode("ascii")
    cdef const char * cisa = bisa
    cdef double g
    with nogil:
        g = cpu_gemm_test_fma_peak(iters, cisa)
    return g if g > 0 else None


def _attn_for_tests(const float[:, :, :, ::1] qkv, int H, int S, const float[::1] bias, bint qkv_has_bias,
                    tab_h, tab_w, float scale, int n_threads=1, isa="best"):
    """Tests only: the fused CPU attention of the vision encoder (native/cpu_attention.h).

    qkv: float32 [B, G, G, 3D]; bias: float32 [3D]; tab_h, tab_w: float32 [S, S, D/H] or both
    None. Returns float32 [B, G, G, D].
    """
    cdef int64_t B = qkv.shape[0], G = qkv.shape[1], D3 = qkv.shape[3]
    if qkv.shape[2] != G or D3 % 3 != 0 or bias.shape[0] != D3:
        raise ValueError("qkv must be [B, G, G, 3D] and bias [3D]")
    cdef int64_t D = D3 // 3
    cdef const float[:, :, ::1] th
    cdef const float[:, :, ::1] tw
    cdef const float * pth = NULL
    cdef const float * ptw = NULL
    if (tab_h is None) != (tab_w is None):
        raise ValueError("tab_h and tab_w: both or neither")
    if tab_h is not None:
        tab_h = np.ascontiguousarray(tab_h, dtype=np.float32)
        tab_w = np.ascontiguousarray(tab_w, dtype=np.float32)
        if H < 1 or D % H != 0 or any(t.shape[0] != S or t.shape[1] != S or t.shape[2] != D // H
                                      for t in (tab_h, tab_w)):
            raise ValueError("rel-pos tables must be [S, S, D/H]")
        th = tab_h
        tw = tab_w
        pth = &th[0, 0, 0]
        ptw = &tw[0, 0, 0]
    out = np.zeros((B, G, G, D), dtype=np.float32)
    cdef float[:, :, :, ::1] o = out
    cdef bytes bisa = str(isa).encode("ascii")
    cdef const char * cisa = bisa
    cdef int rc
    with nogil:
        rc = cpu_attn_test_run(&qkv[0, 0, 0, 0], B, G, D, H, S, &bias[0], qkv_has_bias, pth, ptw, scale,
                               &o[0, 0, 0, 0], n_threads, cisa)
    if rc != 0:
        raise RuntimeError(f"cpu_attn_test_run failed ({rc})")
    return out


def _attn_best_isa():
    """Tests only: the widest attention variant this CPU runs ("avx512", "avx2" or "generic")."""
    return cpu_attn_test_best_isa().decode("ascii")


def _attn_available(isa):
    """Tests only: can _attn_for_tests run this ``isa`` here? ("amx": bf16 products on AMX tiles,
    "avx512_bf16": with AVX512_BF16 dot products, or an f32 variant)"""
    cdef bytes bisa = str(isa).encode("ascii")
    return cpu_attn_test_available(bisa) != 0
