// cpu_attention_bf16.h - the two products of the fused CPU attention (cpu_attention.cpp) in bf16,
// for the encoder's bf16 precision: scores S = Q K^T and the update O += P V. Inputs are bf16
// (rounded by the caller with to_bf16_rows), products exact, sums f32. The operand layouts are an
// AMX tile's and a VDPBF16PS operand's alike (as cpu_gemm_bf16's packed weights), so one packing
// serves both engines:
//   cpu_gemm_bf16::isa::amx          Intel AMX tiles, C in 32 x 32 blocks (amx_tiles.h); the
//                                    calling thread must hold the tile configuration
//                                    (cpu_gemm_bf16::amx_tile_scope);
//   cpu_gemm_bf16::isa::avx512_bf16  AVX512_BF16 dot products, C in 8 x 32 register blocks.
// Every size is padded by the caller (rows to 32, K to 32, columns to 32).

#pragma once

#include "cpu_gemm_bf16.h"

#include <cstddef>
#include <cstdint>

namespace cpu_attn_bf16 {

// dst[r][c] = bf16(src[r * lds + c]) for c < cols, 0 for cols <= c < cols_p (dst row stride cols_p)
void to_bf16_rows(const float * src, int64_t lds, int64_t rows, int64_t cols, int64_t cols_p, uint16_t * dst);

// round-to-nearest-even f32 -> bf16 (NaN stays NaN): what to_bf16_rows does, one value at a time
inline uint16_t to_bf16(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t) ((u >> 16) | 0x40);
    return (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Keys j and j + 1 (j even) of a chunk of `keys` packed keys into the layouts of scores() (K) and
// update() (V): the hd channels of k[t] + kb[t] and v[t] + vb[t] (a null bias adds nothing) in
// bf16, zero from hd up to dp (K) and dv (V); a null k[t] / v[t] is a zero key past the chunk's end.
void pack_kv_pair(const float * const k[2], const float * const kb[2], const float * const v[2],
                  const float * const vb[2], int64_t hd, int64_t j, int64_t keys, int64_t dp, int64_t dv,
                  uint16_t * K, uint16_t * V);

// S[rows x keys] (row stride lds floats) = Q[rows x dp] . K^T. Q: bf16, row-major (stride dp);
// K: panels of 16 keys, [keys/16][dp/2][16][2] bf16. rows, keys, dp: multiples of 32.
// `which`: amx or avx512_bf16, available() here.
void scores(cpu_gemm_bf16::isa which, const uint16_t * q, int64_t rows, int64_t dp, const uint16_t * k, int64_t keys,
            float * s, int64_t lds);

// O[rows x dv] (row stride ldo floats) += P[rows x keys] . V. P: bf16, row-major (stride keys);
// V: panels of 16 channels, [dv/16][keys/2][16][2] bf16. rows, keys, dv: multiples of 32.
void update(cpu_gemm_bf16::isa which, const uint16_t * p, int64_t rows, int64_t keys, const uint16_t * v, int64_t dv,
            float * o, int64_t ldo);

} // namespace cpu_attn_bf16
