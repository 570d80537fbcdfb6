// amx_tiles.h - the one AMX step every bf16 tile product here is made of (cpu_gemm_bf16.cpp's
// GEMM, cpu_attention_bf16.cpp's AMX scores and update), with the tile configuration they share:
// tiles 0-3 hold a 32 x 32 block of f32 C as 2 x 2 blocks of 16 x 16, tiles 4-5 the block's two
// 16-row halves of the left operand, tiles 6-7 its two 16-column panels of the right operand.
// x86-64 only; the calling thread must hold that configuration (cpu_gemm_bf16::amx_tile_scope).

#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstddef>

#define AMX_TILES_INLINE inline __attribute__((always_inline, target("amx-tile,amx-bf16")))

namespace amx_tiles {

// C += A . B for one K step of 32: a0 / a1 the two 16-row halves of A (32 bf16 of each row, row
// stride lda bytes), b0 / b1 the two 16-column panels of B (16 K pairs of 16 columns, 64 bytes a
// pair): four tile loads, four TDPBF16PS
AMX_TILES_INLINE void step(const void * a0, const void * a1, size_t lda, const void * b0, const void * b1) {
    _tile_loadd(4, a0, lda);
    _tile_loadd(5, a1, lda);
    _tile_loadd(6, b0, 64);
    _tile_loadd(7, b1, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

AMX_TILES_INLINE void zero_c() {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

// the 32 x 32 f32 block at c (row stride ldc floats) into / out of tiles 0-3
AMX_TILES_INLINE void load_c(const float * c, size_t ldc) {
    _tile_loadd(0, c, ldc * 4);
    _tile_loadd(1, c + 16, ldc * 4);
    _tile_loadd(2, c + 16 * ldc, ldc * 4);
    _tile_loadd(3, c + 16 * ldc + 16, ldc * 4);
}

AMX_TILES_INLINE void store_c(float * c, size_t ldc) {
    _tile_stored(0, c, ldc * 4);
    _tile_stored(1, c + 16, ldc * 4);
    _tile_stored(2, c + 16 * ldc, ldc * 4);
    _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

} // namespace amx_tiles

#undef AMX_TILES_INLINE
#endif
