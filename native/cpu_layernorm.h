// cpu_layernorm.h - fused CPU LayerNorm over ne0 (y = (x - mean) / sqrt(var + eps) * w + b), a ggml
// custom op replacing ggml's NORM + MUL + ADD: one read of each row and one write, one thread
// barrier instead of three.
//
// Tensors (ggml ne, fastest first): x [C, ...] f32 with contiguous rows; w, b [C] f32; dst like x,
// contiguous. Threads take contiguous ranges of rows and every row is computed the same way
// whichever thread runs it, so results are bit-identical for any thread count.

#pragma once

#include "ggml.h"

// the ggml_custom_op_t: args (dst->src) = x, w, b; userdata = const float * eps (must outlive the
// graph)
void cpu_layernorm_op(ggml_tensor * dst, int ith, int nth, void * userdata);

// can cpu_layernorm_op compute this x / w / b?
bool cpu_layernorm_supports(const ggml_tensor * x, const ggml_tensor * w, const ggml_tensor * b);

// which variant runs ("avx512", "avx2", "generic"), picked once per process from the CPU
const char * cpu_layernorm_isa();
