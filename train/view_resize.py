"""Carry a trained state to another view size: the position tables, resized.

Every weight of the demo model but three kinds is independent of the view: patches are 16 pixels
at any view, windows keep their size, and the neck, projector and language model see the same
channels. What depends on the patch grid is

- the absolute position embedding ``[1, G, G, D]``: one vector per patch;
- the relative-position tables ``[2G - 1, head_dim]`` of the global-attention blocks (windowed
  blocks' tables depend on the window, not the view);
- the box-mode row heads, whose outputs are the rows of the image-token grid: at another view
  row ``r`` is another part of the page, so they start again from their initialisation.

A state trained at one view starts a run at another with both resized by linear interpolation
(half-pixel centres, edges clamped: the rule of torch's ``F.interpolate`` with
``align_corners=False``). In page terms nothing moves: the same fraction of the page gets the same
position vector, and a relative offset of ``d`` patches at G becomes ``d * G'/G`` patches at G'. This
is the rule SAM itself uses when it runs at a resolution it was not trained at. The text the model
learnt at the old view then appears at the new one in proportionally more pixels, which is what
makes the transfer worth doing: a 768-pixel view shows the task's smallest type as large as the
384-pixel view shows type twice that size.

Plain numpy, so the rule is tested without torch.
"""

from __future__ import annotations

import re

import numpy as np

POS_EMBED = "hf.model.vision_tower.pos_embed"
_REL_POS = re.compile(r"^hf\.model\.vision_tower\.layers\.(\d+)\.attn\.rel_pos_[hw]$")
TOKEN_ROW_HEADS = ("key_row_head.", "box_row_head.")


def linear_weights(old: int, new: int) -> np.ndarray:
    """The ``[new, old]`` matrix of 1-D linear interpolation with half-pixel centres."""
    if old < 1 or new < 1:
        raise ValueError(f"sizes must be positive, got {old} -> {new}")
    x = (np.arange(new) + 0.5) * old / new - 0.5
    x = np.clip(x, 0, old - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, old - 1)
    frac = x - lo
    w = np.zeros((new, old))
    w[np.arange(new), lo] += 1 - frac
    w[np.arange(new), hi] += frac
    return w


def resize_table(table: np.ndarray, length: int) -> np.ndarray:
    """A ``[L, C]`` relative-position table resized along L."""
    if table.ndim != 2:
        raise ValueError(f"a relative-position table is [L, C], got shape {table.shape}")
    return (linear_weights(table.shape[0], length) @ table.astype(np.float64)).astype(table.dtype)


def resize_grid(pos: np.ndarray, grid: int) -> np.ndarray:
    """A ``[1, G, G, D]`` position embedding resized to ``[1, grid, grid, D]`` (bilinear)."""
    if pos.ndim != 4 or pos.shape[0] != 1 or pos.shape[1] != pos.shape[2]:
        raise ValueError(f"a position embedding is [1, G, G, D], got shape {pos.shape}")
    w = linear_weights(pos.shape[1], grid)
    out = np.einsum("yi,xj,ijd->yxd", w, w, pos[0].astype(np.float64))
    return out[None].astype(pos.dtype)


def resize_for_view(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` (a saved tensor of parameter ``name``) made ``shape``, if it is a view-dependent
    table; None for a token-row head (it does not carry over); anything else of another shape is
    an error (the state is of another model)."""
    if tuple(value.shape) == tuple(shape):
        return value
    if name.startswith(TOKEN_ROW_HEADS):
        return None
    if name == POS_EMBED and len(shape) == 4:
        return resize_grid(value, shape[1])
    if _REL_POS.match(name) and len(shape) == 2 and value.ndim == 2 and value.shape[1] == shape[1]:
        return resize_table(value, shape[0])
    raise ValueError(f"{name}: saved shape {tuple(value.shape)} does not fit the model's {tuple(shape)}")
