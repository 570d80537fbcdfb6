#include "image_norm.h"

#include <math.h>

/* Exactness (see image_norm.h) needs only IEEE float32 division and subtraction: there is no
 * multiply-add to contract into an FMA, and without -ffast-math (never used here) the compiler may
 * not turn `/ 255.0f` into a multiplication by an inexact reciprocal. */

const char *image_norm_status_string(image_norm_status status) {
    switch (status) {
    case IMAGE_NORM_OK: return "ok";
    case IMAGE_NORM_ERR_NULL: return "a pointer argument is NULL";
    case IMAGE_NORM_ERR_SIZE: return "height and width must be positive (and height*width*3 must fit in size_t)";
    case IMAGE_NORM_ERR_STRIDE: return "row stride is smaller than width*3 bytes";
    case IMAGE_NORM_ERR_STD: return "mean must be finite and std finite and non-zero";
    }
    return "unknown status";
}

/* The input has only 256 values per channel, so each output value comes from a 256-entry table
 * computed with the documented op order: the result is exactly the per-pixel formula, and the
 * pixel loop is a table lookup instead of two float divisions per sample. */
static void build_table(float mean, float std, float table[256]) {
    for (int v = 0; v < 256; v++) {
        float x = (float)v;
        x = x / 255.0f;
        x = x - mean;
        table[v] = x / std;
    }
}

static void normalize_row(const uint8_t *restrict in, size_t width, const float *restrict lut_r,
                          const float *restrict lut_g, const float *restrict lut_b,
                          float *restrict out_r, float *restrict out_g, float *restrict out_b) {
    for (size_t x = 0; x < width; x++) {
        out_r[x] = lut_r[in[3 * x + 0]];
        out_g[x] = lut_g[in[3 * x + 1]];
        out_b[x] = lut_b[in[3 * x + 2]];
    }
}

image_norm_status image_norm_rgb_u8_to_chw_f32(const uint8_t *src, size_t height, size_t width,
                                               size_t row_stride, const float mean[3],
                                               const float std[3], float *dst) {
    if (src == NULL || mean == NULL || std == NULL || dst == NULL) {
        return IMAGE_NORM_ERR_NULL;
    }
    if (height == 0 || width == 0 || width > SIZE_MAX / 3 || height > SIZE_MAX / 3 / width) {
        return IMAGE_NORM_ERR_SIZE;
    }
    if (row_stride < width * 3) {
        return IMAGE_NORM_ERR_STRIDE;
    }
    for (int c = 0; c < 3; c++) {
        if (!isfinite(mean[c]) || !isfinite(std[c]) || std[c] == 0.0f) {
            return IMAGE_NORM_ERR_STD;
        }
    }
    float lut[3][256];
    for (int c = 0; c < 3; c++) {
        build_table(mean[c], std[c], lut[c]);
    }
    const size_t plane = height * width;
    for (size_t y = 0; y < height; y++) {
        const size_t o = y * width;
        normalize_row(src + y * row_stride, width, lut[0], lut[1], lut[2], dst + o,
                      dst + plane + o, dst + 2 * plane + o);
    }
    return IMAGE_NORM_OK;
}
