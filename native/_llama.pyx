# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""gotocr_fast._llama — the engine's hot path into libllama (llama-cpp-python's bundled build).

Thin, like llama-cpp-python's low-level layer: it mirrors ``llama_decode`` / ``llama_get_logits_ith``
and adds nothing but building the ``llama_batch`` in C from caller-owned buffers, so a batch of N
tokens or N image-embedding rows costs no Python loop. ``llama_decode`` runs without the GIL.

The context/model pointers are plain integers (``ctypes.cast(ptr, c_void_p).value`` of the
llama-cpp-python handles); the caller owns the context and keeps it alive.
"""

from libc.stdint cimport int8_t, int32_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import numpy as np


cdef extern from "llama.h" nogil:
    ctypedef int32_t llama_token
    ctypedef int32_t llama_pos
    ctypedef int32_t llama_seq_id

    cdef struct llama_context:
        pass

    ctypedef struct llama_batch:
        int32_t n_tokens
        llama_token * token
        float * embd
        llama_pos * pos
        int32_t * n_seq_id
        llama_seq_id ** seq_id
        int8_t * logits

    int32_t llama_decode(llama_context * ctx, llama_batch batch)
    float * llama_get_logits_ith(llama_context * ctx, int32_t i)
    void llama_synchronize(llama_context * ctx)


cdef int32_t _decode(llama_context * ctx, llama_token * token, float * embd, llama_pos * pos,
                     llama_seq_id * seq, int8_t * logits, int32_t n) noexcept nogil:
    # llama_batch wants one seq-id array per row: point each row at its entry of ``seq``.
    cdef llama_seq_id ** seq_ptrs = <llama_seq_id **> malloc(n * sizeof(llama_seq_id *))
    cdef int32_t * n_seq = <int32_t *> malloc(n * sizeof(int32_t))
    cdef int32_t i, rc
    cdef llama_batch batch
    if seq_ptrs == NULL or n_seq == NULL:
        free(seq_ptrs)
        free(n_seq)
        return -100
    for i in range(n):
        seq_ptrs[i] = &seq[i]
        n_seq[i] = 1
    batch.n_tokens = n
    batch.token = token
    batch.embd = embd
    batch.pos = pos
    batch.n_seq_id = n_seq
    batch.seq_id = seq_ptrs
    batch.logits = logits
    rc = llama_decode(ctx, batch)
    free(seq_ptrs)
    free(n_seq)
    return rc


def decode_tokens(uintptr_t ctx, const int32_t[::1] tokens, const int32_t[::1] pos,
                  const int32_t[::1] seq_ids, const int8_t[::1] logits):
    """``llama_decode`` of a token batch: row i = (tokens[i], pos[i], seq_ids[i], logits[i]).

    Rows of several sequences may be mixed. Returns llama_decode's status (0 = ok).
    """
    cdef int32_t n = tokens.shape[0]
    if pos.shape[0] != n or seq_ids.shape[0] != n or logits.shape[0] != n:
        raise ValueError("decode_tokens: tokens, pos, seq_ids and logits must have the same length")
    if n == 0:
        return 0
    cdef int32_t rc
    with nogil:
        rc = _decode(<llama_context *> ctx, <llama_token *> &tokens[0], NULL, <llama_pos *> &pos[0],
                     <llama_seq_id *> &seq_ids[0], <int8_t *> &logits[0], n)
    return rc


def decode_embeddings(uintptr_t ctx, const float[:, ::1] embd, const int32_t[::1] pos,
                      const int32_t[::1] seq_ids, const int8_t[::1] logits):
    """``llama_decode`` of an embedding batch: row i of ``embd`` (n_embd floats) goes in at
    position pos[i] of sequence seq_ids[i]; the buffer is used in place (no copy).

    Returns llama_decode's status (0 = ok).
    """
    cdef int32_t n = embd.shape[0]
    if pos.shape[0] != n or seq_ids.shape[0] != n or logits.shape[0] != n:
        raise ValueError("decode_embeddings: embd rows, pos, seq_ids and logits must have the same length")
    if n == 0:
        return 0
    cdef int32_t rc
    with nogil:
        rc = _decode(<llama_context *> ctx, NULL, <float *> &embd[0, 0], <llama_pos *> &pos[0],
                     <llama_seq_id *> &seq_ids[0], <int8_t *> &logits[0], n)
    return rc


def get_logits(uintptr_t ctx, const int32_t[::1] indices, int32_t n_vocab):
    """Copy ``llama_get_logits_ith(ctx, i)`` for each i into a new float32 [len(indices), n_vocab]."""
    cdef Py_ssize_t m = indices.shape[0]
    out = np.empty((m, n_vocab), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef Py_ssize_t k
    cdef float * row
    for k in range(m):
        row = llama_get_logits_ith(<llama_context *> ctx, indices[k])
        if row == NULL:
            raise IndexError(f"llama_get_logits_ith({indices[k]}) returned no logits")
        memcpy(&o[k, 0], row, n_vocab * sizeof(float))
    return out
