"""The fused CPU attention of the vision encoder (native/cpu_attention.h) against numpy in float64.

Shapes are chosen around the tiling: global attention with enough keys for several online-softmax
chunks (256 keys per chunk), windows that do not divide the grid (padding tokens = the qkv bias),
odd head dims (below one NR panel or not a multiple of it), query counts off the query block, and
more query rows than one block. Every variant this CPU runs is checked, and each must give the same
bits for any thread count.
"""

from __future__ import annotations

import numpy as np
import pytest

from gotocr_fast import _vision

SHAPES = [  # (B, G, S, H, hd, rel_pos, qkv_has_bias)
    (1, 24, 24, 2, 64, True, False),   # global, T = 576: 3 key chunks, 9+ query blocks
    (1, 17, 7, 2, 64, True, False),    # windowed, 17 = 2*7 + 3: padded edge windows
    (2, 14, 14, 1, 64, True, True),    # the encoder's window (T = 196), two views
    (1, 9, 9, 3, 20, True, False),     # odd head dim, T = 81
    (1, 13, 5, 2, 12, True, False),    # head dim below one panel, small padded windows
    (1, 19, 19, 2, 24, False, False),  # no rel-pos, T = 361: 2 chunks of unequal size
    (1, 3, 1, 2, 8, True, False),      # one-token windows
]


def _isas():
    best = _vision._attn_best_isa()
    return {"avx512": ["generic", "avx2", "avx512"], "avx2": ["generic", "avx2"]}.get(best, ["generic"])


def attention_inputs(shape):
    """Seeded inputs of one attention shape: (qkv, bias, rel-pos tables or None, scale)."""
    B, G, S, H, hd, rel_pos, _ = shape
    D = H * hd
    rng = np.random.default_rng(G * 1009 + S * 101 + hd)
    qkv = (rng.standard_normal((B, G, G, 3 * D)) * 0.7).astype(np.float32)
    bias = (rng.standard_normal(3 * D) * 0.5).astype(np.float32)
    tab_h = tab_w = None
    if rel_pos:
        tab_h = (rng.standard_normal((S, S, hd)) * 0.3).astype(np.float32)
        tab_w = (rng.standard_normal((S, S, hd)) * 0.3).astype(np.float32)
    return qkv, bias, tab_h, tab_w, hd ** -0.5


def _reference(qkv, bias, H, S, tab_h, tab_w, scale, has_bias):
    B, G, _, D3 = qkv.shape
    D, hd = D3 // 3, D3 // 3 // H
    nw = -(-G // S)
    P = nw * S
    x = np.broadcast_to(bias.astype(np.float64), (B, P, P, D3)).copy()  # padding tokens = bias
    x[:, :G, :G] = qkv + (0.0 if has_bias else bias.astype(np.float64))
    out = np.zeros((B, P, P, D))
    for b in range(B):
        for wy in range(nw):
            for wx in range(nw):
                win = x[b, wy * S:(wy + 1) * S, wx * S:(wx + 1) * S].reshape(S * S, D3)
                for h in range(H):
                    q = win[:, h * hd:(h + 1) * hd]
                    k = win[:, D + h * hd:D + (h + 1) * hd]
                    v = win[:, 2 * D + h * hd:2 * D + (h + 1) * hd]
                    s = (q * scale) @ k.T
                    if tab_h is not None:
                        qg = q.reshape(S, S, hd)  # [qy, qx, c]
                        rh = np.einsum("yxc,ykc->yxk", qg, tab_h.astype(np.float64))
                        rw = np.einsum("yxc,xkc->yxk", qg, tab_w.astype(np.float64))
                        s = s + (rh[:, :, :, None] + rw[:, :, None, :]).reshape(S * S, S * S)
                    s -= s.max(axis=1, keepdims=True)
                    p = np.exp(s)
                    p /= p.sum(axis=1, keepdims=True)
                    out[b, wy * S:(wy + 1) * S, wx * S:(wx + 1) * S, h * hd:(h + 1) * hd] = \
                        (p @ v).reshape(S, S, hd)
    return out[:, :G, :G]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}G{}S{}H{}d{}{}{}".format(
    *s[:5], "" if s[5] else "-norel", "-biased" if s[6] else ""))
def test_attention_matches_float64(shape):
    _, _, S, H, _, _, has_bias = shape
    qkv, bias, tab_h, tab_w, scale = attention_inputs(shape)
    want = _reference(qkv, bias, H, S, tab_h, tab_w, scale, has_bias)
    # outputs are convex combinations of v (|v| <~ 4): f32 scores over hd terms and the exp
    # polynomial (~1.2e-7) leave errors far below this
    tol = 1e-5 * max(1.0, np.abs(want).max())
    for isa in _isas():
        got = _vision._attn_for_tests(qkv, H, S, bias, has_bias, tab_h, tab_w, scale, 1, isa)
        assert np.all(np.isfinite(got)), isa
        assert np.abs(got - want).max() <= tol, (isa, np.abs(got - want).max())
        for nt in (2, 3):
            again = _vision._attn_for_tests(qkv, H, S, bias, has_bias, tab_h, tab_w, scale, nt, isa)
            assert np.array_equal(again.view(np.uint32), got.view(np.uint32)), (isa, nt)


def test_attention_rejects_bad_arguments():
    qkv = np.zeros((1, 4, 4, 6), dtype=np.float32)
    bias = np.zeros(6, dtype=np.float32)
    with pytest.raises(RuntimeError):
        _vision._attn_for_tests(qkv, 1, 4, bias, False, None, None, 1.0, 1, "no-such-isa")
    with pytest.raises(RuntimeError):
        _vision._attn_for_tests(qkv, 1, 5, bias, False, None, None, 1.0, 1, "generic")  # S > G
