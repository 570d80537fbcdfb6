/* image_norm: uint8 RGB pixels -> normalised float32 planes (the encoder's input layout).
 *
 * One job: out[c][y][x] = (in[y][x][c] / 255 - mean[c]) / std[c], with the float32 operation order
 * of numpy's `(img.astype(np.float32) / 255.0 - mean) / std` for float32 mean/std:
 *
 *     v = (float)x;  v = v / 255.0f;  v = v - mean[c];  v = v / std[c];
 *
 * every step rounded to float32 (round-to-nearest, no fused multiply-add, no reciprocal), so the
 * result is bit-identical to that numpy expression. Callers holding double mean/std round them to
 * float first, as numpy does when it casts the arrays to float32.
 */
#ifndef GOTOCR_IMAGE_NORM_H
#define GOTOCR_IMAGE_NORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    IMAGE_NORM_OK = 0,
    IMAGE_NORM_ERR_NULL = 1,      /* a pointer argument is NULL */
    IMAGE_NORM_ERR_SIZE = 2,      /* height or width is zero, or height*width*3 overflows size_t */
    IMAGE_NORM_ERR_STRIDE = 3,    /* row stride is smaller than width*3 bytes */
    IMAGE_NORM_ERR_STD = 4,       /* a std value is zero or not finite, or a mean is not finite */
} image_norm_status;

/* Normalise an interleaved RGB image into three planes.
 *
 * src:        height rows of width*3 bytes (R, G, B per pixel); row y starts at src + y*row_stride.
 * row_stride: bytes between row starts, >= width*3 (lets callers pass a crop of a larger image).
 * mean, std:  three floats each, per channel R, G, B.
 * dst:        3*height*width floats, written as plane c at dst + c*height*width, row-major.
 *
 * Returns IMAGE_NORM_OK, or an error code with dst untouched. Thread-safe; no heap allocation.
 */
image_norm_status image_norm_rgb_u8_to_chw_f32(const uint8_t *src, size_t height, size_t width,
                                               size_t row_stride, const float mean[3],
                                               const float std[3], float *dst);

/* A short English description of a status code (static storage). */
const char *image_norm_status_string(image_norm_status status);

#ifdef __cplusplus
}
#endif

#endif /* GOTOCR_IMAGE_NORM_H */
