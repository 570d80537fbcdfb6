"""The demo model for training: transformers' GotOcr2 with a restricted-vocabulary head.

The network is transformers' ``GotOcr2ForConditionalGeneration`` built from the demo config, so
what is trained is exactly the architecture the converter and the engine read. Two things differ
from the stock training forward, both for cost on a CPU:

- the token embedding is a small matrix holding only the used rows (``train.data.used_token_ids``);
  the full ``[151860, hidden]`` matrix is written at export with every other row zero;
- logits are computed only at answer positions, over the used rows plus one pooled logit of
  ``log(number of zero rows)``: a zero row's logit is exactly 0 under the tied head, so this
  softmax equals the full one.

Auxiliary losses (nothing of them is exported) give the image path a direct, local signal
long before the language model would learn on its own to look at the image:

- a patch head names the characters under each ViT patch, in reading order;
- a token-slot head names the characters under each image token, in reading order: the token
  the language model attends to must carry its characters and their order, not only which they are;
- a token bag: each image token (projector output) is scored against the language model's own
  token embeddings, and must rank the text tokens printed in its cell highest. This puts the image
  tokens in the space the language model reads and writes, so copying a token from the image is
  the first thing attention can learn;
- guided attention: one head of the language model is taught to attend, when predicting an answer
  token, to the image token where that token is printed (the token-cell map comes with the page).
  Without an alignment signal the model sat at the text prior for thousands of steps
  (docs/DEMO_MODEL.md);
- box mode's own guided head and row heads. On a box page the model must find the boxed line from
  the coordinate digits of the prompt; a query can only know the box's row after one layer has
  marked which digits are the top edge's (their order among the commas) and a second has read
  them, so the look that picks the line belongs to the last layer, not to the guided head's (the
  second: its first look on box pages stayed at chance, ``python -m train.probe --box``). One head
  of the last layer is guided, on box pages, to the image tokens of the boxed line; at that
  layer's input each image token must name its row of the token grid and the position that
  predicts a box page's first answer token the row where the boxed line starts.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from gotocr_fast import tokens
from gotocr_fast.cpus import cpu_flags
from gotocr_fast.synth import GotConfig, _hf_config

from .data import CHARSET, PATCH_AUX_SLOTS, TOKEN_SLOTS
from .view_resize import TOKEN_ROW_HEADS


def _vision_attention_sdpa(self, hidden_states: torch.Tensor, output_attentions=None,
                           kernel_dtype: torch.dtype | None = None):
    """transformers' SAM attention (decomposed rel-pos added to q.k), through fused SDPA.

    Same arithmetic as ``GotOcr2VisionAttention.forward`` up to rounding: the rel-pos terms come
    from the unscaled query and are added to the scaled scores. They are folded into the dot
    product instead of passed as a mask: the query gets its row and column terms appended
    (``[q * scale, bias_h[q, :], bias_w[q, :]]``) and the key the one-hot of its row and column
    (``[k, onehot(row), onehot(col)]``), so ``q'.k' = scale q.k + bias_h[q, row(k)] +
    bias_w[q, col(k)]``. Without a mask that needs a gradient, SDPA runs its fused (flash) kernel
    on the CPU, forward and backward, instead of materialising every global block's scores
    (tokens² per head: 340 MB per block at the 768 view, batch 8) for a separate softmax; the
    value is zero-padded to the query's width because that kernel wants one head size.

    ``kernel_dtype=torch.bfloat16`` runs that kernel alone in bf16 (f32 around it): twice as fast
    on a CPU with AMX, at bf16's rounding (0.5 % relative on the output).
    """
    b, h, w, _ = hidden_states.shape
    nh = self.num_attention_heads
    n = h * w
    qkv = self.qkv(hidden_states).reshape(b, n, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    hd = q.shape[-1]
    rel_h = self.get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
    rel_w = self.get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
    rq = q.reshape(b, nh, h, w, hd)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rel_h).reshape(b, nh, n, h)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rel_w).reshape(b, nh, n, w)
    q_aug = torch.cat([q * hd ** -0.5, bias_h, bias_w], dim=-1)
    row = torch.eye(h, dtype=q.dtype, device=q.device).repeat_interleave(w, dim=0)  # key r*w+c -> r
    col = torch.eye(w, dtype=q.dtype, device=q.device).repeat(h, 1)  # key r*w+c -> c
    k_aug = torch.cat([k, row.expand(b, nh, n, h), col.expand(b, nh, n, w)], dim=-1)
    v_pad = F.pad(v, (0, h + w))
    if kernel_dtype is not None and kernel_dtype != q.dtype:
        q_aug, k_aug, v_pad = q_aug.to(kernel_dtype), k_aug.to(kernel_dtype), v_pad.to(kernel_dtype)
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_pad, scale=1.0)[..., :hd].to(q.dtype)
    out = out.reshape(b, nh, h, w, hd).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out), None


def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bf16 products natively (AMX-BF16 tiles or AVX512_BF16 dot products)?
    There the bf16 attention kernel pays: a training step measured twice as fast an attention with
    AMX (Sapphire Rapids) and 10 % faster a whole step with AVX512_BF16 alone (Zen 4); without
    either, bf16 is emulated and slower. Linux's CPU flags; False elsewhere."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def use_fast_vision_attention(model: nn.Module, bf16_kernel: bool = False) -> int:
    """Run every SAM attention module of ``model`` through :func:`_vision_attention_sdpa` (its
    kernel in bf16 if asked); returns how many. Per instance, so transformers' class (and any
    other model built from it in the process) keeps its own forward."""
    import types

    from transformers.models.got_ocr2 import modeling_got_ocr2

    kernel_dtype = torch.bfloat16 if bf16_kernel else None

    def forward(self, hidden_states, output_attentions=None):
        return _vision_attention_sdpa(self, hidden_states, output_attentions, kernel_dtype=kernel_dtype)

    n = 0
    for module in model.modules():
        if isinstance(module, modeling_got_ocr2.GotOcr2VisionAttention):
            module.forward = types.MethodType(forward, module)
            n += 1
    return n


GUIDE_LAYER = 1
GUIDE_HEAD = 0
"""The language-model attention head whose attention is guided to the image token that holds the
answer token being predicted."""
BOX_GUIDE_HEAD = 1
"""The head of the last layer guided on box pages (another head than ``GUIDE_HEAD``, so that a
two-layer model, whose last layer is the guided one, keeps the two apart)."""


def use_guided_attention() -> None:
    """Let the guided heads record their attention log-probabilities while training.

    transformers looks the attention function up by name at every call, so wrapping the "sdpa"
    entry adds the record (``guide_log_probs``: head → [B, Lq, Lk]) to the modules that name
    heads in ``guide_heads`` and changes nothing else: the attention output is still the fused
    kernel's.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    base = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(base, "records_guide", False):
        return

    def attention(module, query, key, value, attention_mask, **kwargs):
        out = base(module, query, key, value, attention_mask, **kwargs)
        heads = getattr(module, "guide_heads", ()) if module.training else ()
        if heads:
            group = query.shape[1] // key.shape[1]
            n_q, n_k = query.shape[-2], key.shape[-2]
            # Right-padded batches: a real query position sees only real keys before it, so the
            # causal mask is the whole mask for the positions the loss reads.
            future = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).triu(n_k - n_q + 1)
            module.guide_log_probs = {
                head: ((query[:, head] @ key[:, head // group].transpose(-1, -2)).float() * module.scaling)
                .masked_fill(future, float("-inf")).log_softmax(-1)
                for head in heads}
        return out

    attention.records_guide = True
    ALL_ATTENTION_FUNCTIONS["sdpa"] = attention


def build_hf_model(cfg: GotConfig):
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    hf = GotOcr2Config(**{k: v for k, v in _hf_config(cfg).items() if k not in ("architectures", "dtype", "transformers_version", "model_type")})
    model = GotOcr2ForConditionalGeneration(hf)
    _reinit_vision(model)
    return model


def _reinit_vision(model) -> None:
    """The GOT vision config initialises with std 1e-10 (an almost silent image path): redo it."""
    parts = [model.model.vision_tower, model.model.multi_modal_projector]
    for part in parts:
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    vt = model.model.vision_tower
    if vt.pos_embed is not None:
        nn.init.normal_(vt.pos_embed, std=0.02)


NONE_WEIGHT = 0.1
"""Weight of the "no more characters" answers against the characters in the auxiliary losses:
most cells are empty, and with equal weights their easy answer drowns the characters' signal."""


def _bag_loss(feats: torch.Tensor, embed: torch.Tensor, scale: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the image tokens with text of the cross-entropy against a uniform target over
    the tokens printed in the cell. The embedding is read, not trained, by this loss."""
    logp = torch.log_softmax(scale.exp() * (feats.float() @ embed.detach().float().t()), dim=-1)
    valid = targets >= 0
    picked = logp.gather(-1, targets.clamp(min=0)) * valid
    has_text = valid.any(-1)
    if not has_text.any():
        return logp.new_zeros(())
    per_cell = -picked.sum(-1) / valid.sum(-1).clamp(min=1)
    return per_cell[has_text].mean()


def _look_loss(log_probs: torch.Tensor, label_positions: torch.Tensor, keys: torch.Tensor,
               which: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability a guided head gives, at the answer positions ``which``
    selects, to the image token where the predicted character is printed."""
    pos = label_positions[which]
    return -log_probs[pos[:, 0], pos[:, 1], keys[which]].mean()


def _slot_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    flat, t = logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    chars, none = t > 0, t == 0
    loss = flat.new_zeros(())
    if chars.any():
        loss = loss + F.cross_entropy(flat[chars], t[chars])
    if none.any():
        loss = loss + NONE_WEIGHT * F.cross_entropy(flat[none], t[none])
    return loss


class DemoTrainer(nn.Module):
    bf16 = False
    """Whether greedy reading (``train.train.evaluate``) runs under bf16 autocast; a training run
    sets it to its recipe's ``bf16``, a state loaded for evaluation reads in float32."""
    vit_frozen = False
    """Whether the ViT (patch embedding, positions, blocks) runs without a gradient; its weights
    then get no gradient and the optimiser leaves them as they are (a run sets it to its recipe's
    ``freeze_vit``)."""

    box_guided = True
    """Whether box pages also train the last layer's box-guided head and the row heads (a run sets
    it to its recipe's ``box_guide``; without them those heads get no gradient)."""

    def __init__(self, cfg: GotConfig, used_ids: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.hf = build_hf_model(cfg)
        hidden = cfg.text.hidden_size
        # The full embedding is not trained (and not walked by the optimiser): only used rows.
        self.hf.model.language_model.embed_tokens.weight.requires_grad_(False)
        self.register_buffer("used_ids", used_ids.clone(), persistent=True)
        full_to_used = torch.full((tokens.VOCAB_SIZE,), -1, dtype=torch.long)
        full_to_used[used_ids] = torch.arange(len(used_ids))
        self.register_buffer("full_to_used", full_to_used, persistent=False)
        self.embed = nn.Parameter(torch.randn(len(used_ids), hidden) * 0.02)
        self.zero_rows_logit = math.log(tokens.VOCAB_SIZE - len(used_ids))
        self.bag_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.guided_attention.guide_heads = (GUIDE_HEAD,)
        box_heads = getattr(self.box_guided_attention, "guide_heads", ())
        self.box_guided_attention.guide_heads = (*box_heads, BOX_GUIDE_HEAD)
        self.patch_aux_head = nn.Linear(cfg.vision.hidden_size, PATCH_AUX_SLOTS * (len(CHARSET) + 1))
        self.token_slot_head = nn.Linear(cfg.text.hidden_size, TOKEN_SLOTS * (len(CHARSET) + 1))
        self.key_row_head = nn.Linear(hidden, cfg.token_grid)
        self.box_row_head = nn.Linear(hidden, cfg.token_grid)
        for head in (self.key_row_head, self.box_row_head):
            # from a uniform guess: the residual stream is large, and a random head's first
            # gradients would take most of the clipped update from the trained network
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    LATER_HEADS = TOKEN_ROW_HEADS
    """Auxiliary heads added to the recipe after checkpoints were written without them."""

    def load_weights(self, state: dict) -> list[str]:
        """Load a ``checkpoint.pt``'s model weights. Heads of ``LATER_HEADS`` that the checkpoint
        predates keep their initialisation; their names are returned. Any other missing or
        unknown tensor is an error."""
        result = self.load_state_dict(state, strict=False)
        bad = [k for k in result.missing_keys if not k.startswith(self.LATER_HEADS)] + list(result.unexpected_keys)
        if bad:
            raise ValueError(f"checkpoint does not fit the model: {bad[:5]}")
        return list(result.missing_keys)

    # -- pieces -----------------------------------------------------------------------------

    @property
    def guided_attention(self) -> nn.Module:
        return self.hf.model.language_model.layers[GUIDE_LAYER].self_attn

    @property
    def box_guide_layer(self) -> int:
        """The layer whose ``BOX_GUIDE_HEAD`` picks the boxed line: the last one."""
        return self.cfg.text.num_layers - 1

    @property
    def box_guided_attention(self) -> nn.Module:
        return self.hf.model.language_model.layers[self.box_guide_layer].self_attn

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels)[1]

    def vision(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ViT output [B, G, G, D], projected image embeddings [B, T, E]).

        The steps of transformers' ``get_image_features``, run one by one to expose the ViT output
        the patch-level auxiliary head reads.
        """
        vt = self.hf.model.vision_tower
        with torch.no_grad() if self.vit_frozen else contextlib.nullcontext():
            h = vt.patch_embed(pixels)
            if vt.pos_embed is not None:
                h = h + vt.pos_embed
            for layer in vt.layers:
                h = layer(h)
        return h, self.hf.model.multi_modal_projector(vt.neck(h))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        idx = self.full_to_used[ids]
        if (idx < 0).any():
            raise ValueError("token outside the used vocabulary")
        return self.embed[idx]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Restricted logits: used rows, then the pooled zero-row logit (last column)."""
        used = hidden @ self.embed.to(hidden.dtype).t()
        pooled = torch.full((*hidden.shape[:-1], 1), self.zero_rows_logit, dtype=used.dtype, device=used.device)
        return torch.cat([used, pooled], dim=-1)

    def embed_prompt(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The language model's input for ``ids`` [B, L]: token embeddings, with the image-pad
        positions of each row taking that row's image features ``feats`` [B, T, E] in order."""
        embeds = self.embed_ids(ids)
        return embeds.masked_scatter((ids == tokens.IMG_PAD_ID).unsqueeze(-1), feats.to(embeds.dtype))

    def lm(self, inputs_embeds, attention_mask=None, cache=None, hidden_states=False):
        return self.hf.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            past_key_values=cache, use_cache=cache is not None or not self.training,
                                            output_hidden_states=hidden_states, return_dict=True)

    # -- training -----------------------------------------------------------------------------

    def forward(self, pixels, input_ids, attention_mask, image_mask, label_positions, labels, bag_targets,
                patch_aux_targets, token_slot_targets, guide_keys, box_rows=None, prompt_ends=None,
                drill_ids=None, drill_mask=None, drill_ends=None, drill_rows=None):
        """Returns (answer loss, auxiliary loss, guide loss). ``labels`` are used-vocabulary indices;
        ``guide_keys`` the sequence position of the image token holding each label, or -1;
        ``box_rows`` per page the token-grid row where the boxed line starts (-1: no box) and
        ``prompt_ends`` the position of its last prompt token (both optional: no box-row loss);
        ``drill_*`` the box drills (``train.train.collate_drills``; optional)."""
        vit, feats = self.vision(pixels)  # [B, G, G, D], [B, T, E]
        out = self.lm(self.embed_prompt(input_ids, feats), attention_mask=attention_mask, hidden_states=True)
        h = out.last_hidden_state[label_positions[:, 0], label_positions[:, 1]]
        loss = F.cross_entropy(self.logits(h).float(), labels)
        patch_logits = self.patch_aux_head(vit).view(vit.shape[0], -1, PATCH_AUX_SLOTS, len(CHARSET) + 1)
        slot_logits = self.token_slot_head(feats).view(feats.shape[0], -1, TOKEN_SLOTS, len(CHARSET) + 1)
        aux = (_bag_loss(feats, self.embed, self.bag_log_scale, bag_targets) + _slot_loss(patch_logits, patch_aux_targets)
               + _slot_loss(slot_logits, token_slot_targets))
        if self.box_guided:
            aux = aux + self._row_loss(out.hidden_states[self.box_guide_layer], image_mask, box_rows, prompt_ends)
        guided = guide_keys >= 0
        guide = loss.new_zeros(())
        if guided.any():
            guide = _look_loss(self.guided_attention.guide_log_probs[GUIDE_HEAD], label_positions, guide_keys, guided)
        if self.box_guided and box_rows is not None:
            boxed = guided & (box_rows[label_positions[:, 0]] >= 0)
            if boxed.any():
                guide = guide + _look_loss(self.box_guided_attention.guide_log_probs[BOX_GUIDE_HEAD],
                                           label_positions, guide_keys, boxed)
        if self.box_guided and drill_ids is not None and len(drill_ids):  # after the guide loss: this forward records anew
            aux = aux + self._drill_loss(feats.detach(), drill_ids, drill_mask, drill_ends, drill_rows)
        return loss, aux, guide

    def _drill_loss(self, feats, drill_ids, drill_mask, drill_ends, drill_rows) -> torch.Tensor:
        """The boxed-row read-out on box drills: each prompt with a batch page's image tokens
        (detached: the drills train the language model's reading of the digits, not the image)."""
        d = drill_ids.shape[0]
        images = feats[torch.arange(d, device=feats.device) % feats.shape[0]]
        out = self.lm(self.embed_prompt(drill_ids, images), attention_mask=drill_mask, hidden_states=True)
        query = out.hidden_states[self.box_guide_layer][torch.arange(d, device=feats.device), drill_ends]
        return F.cross_entropy(self.box_row_head(query).float(), drill_rows)

    def row_read_outs(self, guide_input, image_mask, box_rows=None, prompt_ends=None):
        """The row heads on the box-guided layer's input ``guide_input`` [B, L, E], each as
        (logits, targets): every image token's row, then (None without box pages) every box page's
        boxed row at its last prompt position."""
        b, t = image_mask.shape[0], self.cfg.tokens_per_view
        rows = (torch.arange(t, device=image_mask.device) // self.cfg.token_grid).repeat(b)
        keys = (self.key_row_head(guide_input[image_mask]), rows)
        if box_rows is None or prompt_ends is None or not (box_rows >= 0).any():
            return keys, None
        boxed = box_rows >= 0
        pages = torch.arange(b, device=box_rows.device)[boxed]
        return keys, (self.box_row_head(guide_input[pages, prompt_ends[boxed]]), box_rows[boxed])

    def _row_loss(self, guide_input, image_mask, box_rows, prompt_ends) -> torch.Tensor:
        """The row heads' cross-entropy (:meth:`row_read_outs`)."""
        keys, boxes = self.row_read_outs(guide_input, image_mask, box_rows, prompt_ends)
        loss = F.cross_entropy(keys[0].float(), keys[1])
        if boxes is not None:
            loss = loss + F.cross_entropy(boxes[0].float(), boxes[1])
        return loss

    # -- greedy decoding (validation) -----------------------------------------------------------

    @torch.no_grad()
    def greedy(self, pixels: torch.Tensor, prompt_ids: list[int], max_new: int = 160) -> list[int]:
        """Greedy answer ids (full vocabulary ids) for one page; stops at ``<|im_end|>``."""
        from transformers import DynamicCache

        feats = self.image_features(pixels[None])
        ids = torch.tensor(prompt_ids, device=pixels.device)[None]
        cache = DynamicCache()
        out = self.lm(self.embed_prompt(ids, feats), cache=cache)
        answer: list[int] = []
        for _ in range(max_new):
            # Greedy compares single tokens: every zero row has logit exactly 0 (the pooled logit is
            # their summed probability, right for the loss, not for an argmax).
            logits = self.logits(out.last_hidden_state[:, -1])[0, :-1]
            j = int(logits.argmax(-1))
            if logits[j] < 0:  # a zero row won: the full model would emit an unused token
                break
            tok = int(self.used_ids[j])
            if tok == tokens.IM_END_ID:
                break
            answer.append(tok)
            out = self.lm(self.embed[j].view(1, 1, -1), cache=cache)
        return answer

    # -- export ---------------------------------------------------------------------------------

    @torch.no_grad()
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """transformers hub names → tensors, with the full embedding (zero rows included)."""
        full = torch.zeros(tokens.VOCAB_SIZE, self.cfg.text.hidden_size)
        full[self.used_ids] = self.embed.detach().float()
        out = {}
        for name, t in self.hf.state_dict().items():
            if name == "lm_head.weight":
                continue
            hub = name.removeprefix("model.")
            if hub.startswith("language_model."):
                hub = "language_model.model." + hub[len("language_model."):]
            out[hub] = t.detach().float().clone()
        out["language_model.model.embed_tokens.weight"] = full
        return out
