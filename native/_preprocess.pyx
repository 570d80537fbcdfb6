# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin binding of native/image_norm.c: uint8 RGB image -> normalised float32 CHW planes.

Also reports the ggml build this process runs on (``ggml_info``), which is the ggml that the
installed ``llama_cpp`` package ships: every gotocr_fast extension links that one library.
"""

from libc.stdint cimport uint8_t
from libc.stddef cimport size_t

import numpy as np

cdef extern from "image_norm.h" nogil:
    ctypedef enum image_norm_status:
        IMAGE_NORM_OK
    image_norm_status image_norm_rgb_u8_to_chw_f32(
        const uint8_t *src, size_t height, size_t width, size_t row_stride,
        const float *mean, const float *std, float *dst)
    const char *image_norm_status_string(image_norm_status status)

cdef extern from "ggml.h" nogil:
    const char *ggml_version()
    const char *ggml_commit()

cdef extern from "ggml-backend.h" nogil:
    ctypedef struct ggml_backend_reg:
        pass
    ctypedef ggml_backend_reg *ggml_backend_reg_t
    struct ggml_backend_feature:
        const char *name
        const char *value
    ctypedef ggml_backend_feature *(*ggml_backend_get_features_t)(ggml_backend_reg_t reg)
    size_t ggml_backend_reg_count()
    ggml_backend_reg_t ggml_backend_reg_get(size_t index)
    const char *ggml_backend_reg_name(ggml_backend_reg_t reg)
    void *ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char *name)


cdef int _read_triple(object values, str what, float out[3]) except -1:
    try:
        n = len(values)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of 3 numbers, got {type(values).__name__}") from None
    if n != 3:
        raise ValueError(f"{what} must have 3 values (R, G, B), got {n}")
    for c in range(3):
        out[c] = <float>float(values[c])  # rounded to float32, as numpy's float32 cast does
    return 0


def normalize_rgb(img, mean, std):
    """Return ``(img / 255 - mean) / std`` as a float32 array of shape (3, H, W).

    ``img`` is a uint8 ndarray of shape (H, W, 3), RGB. Its pixels must be packed within each row
    (strides (any, 3, 1)): a C-contiguous array, or a row-range / column-range slice of one.
    ``mean`` and ``std`` hold three numbers each (R, G, B), rounded to float32. The result is
    bit-identical to numpy's ``(img.astype(np.float32) / 255.0 - mean32) / std32`` moved to CHW.
    The GIL is released while the C loop runs.
    """
    cdef float mean_f[3]
    cdef float std_f[3]
    if not isinstance(img, np.ndarray):
        raise ValueError(f"img must be a numpy.ndarray, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"img must have dtype uint8, got {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must have shape (H, W, 3), got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"img must not be empty, got shape {img.shape}")
    row_stride, px_stride, ch_stride = img.strides
    if ch_stride != 1 or px_stride != 3 or row_stride < 3 * img.shape[1]:
        raise ValueError(
            f"img pixels must be contiguous within rows (strides (>= {3 * img.shape[1]}, 3, 1)),"
            f" got strides {img.strides}; pass np.ascontiguousarray(img)")
    _read_triple(mean, "mean", mean_f)
    _read_triple(std, "std", std_f)

    cdef const uint8_t[:, :, :] src = img  # strided view: row padding allowed, checked above
    cdef size_t height = img.shape[0]
    cdef size_t width = img.shape[1]
    cdef size_t stride = row_stride
    out = np.empty((3, height, width), dtype=np.float32)
    cdef float[:, :, ::1] dst = out
    cdef image_norm_status status
    with nogil:
        status = image_norm_rgb_u8_to_chw_f32(&src[0, 0, 0], height, width, stride,
                                              mean_f, std_f, &dst[0, 0, 0])
    if status != IMAGE_NORM_OK:
        raise ValueError(f"normalize_rgb: {image_norm_status_string(status).decode()}"
                         f" (mean={list(mean)}, std={list(std)})")
    return out


def ggml_info():
    """The ggml this process uses: ``{"version", "commit", "backends", "cpu_features"}``.

    ``cpu_features`` lists what the CPU backend was compiled for and found at run time (e.g.
    ``AVX2``, ``F16C``, ``FMA``), as ggml's backend registry reports it.
    """
    cdef size_t i
    cdef ggml_backend_reg_t reg
    cdef ggml_backend_get_features_t get_features
    cdef ggml_backend_feature *feat
    backends = []
    cpu_features = {}
    for i in range(ggml_backend_reg_count()):
        reg = ggml_backend_reg_get(i)
        name = ggml_backend_reg_name(reg).decode()
        backends.append(name)
        if name != "CPU":
            continue
        get_features = <ggml_backend_get_features_t>ggml_backend_reg_get_proc_address(
            reg, b"ggml_backend_get_features")
        if get_features == NULL:
            continue
        feat = get_features(reg)
        while feat != NULL and feat.name != NULL:
            cpu_features[feat.name.decode()] = feat.value.decode() if feat.value != NULL else ""
            feat += 1
    return {
        "version": ggml_version().decode(),
        "commit": ggml_commit().decode(),
        "backends": backends,
        "cpu_features": cpu_features,
    }
