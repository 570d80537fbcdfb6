"""Sizes of the demo model and the training recipe: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass

from gotocr_fast.synth import GotConfig, TextConfig, VisionConfig

DEMO_MODEL = GotConfig(
    "demo",
    # 384-pixel views, 16-pixel patches: a 24 x 24 grid, 3 x 3 windows of 8, two global blocks;
    # two stride-2 convs leave 6 x 6 = 36 image tokens per view.
    VisionConfig(
        image_size=384, patch_size=16, hidden_size=128, num_layers=4, num_heads=2, mlp_dim=512,
        window_size=8, global_layers=(1, 3), neck_channels=64,
    ),
    TextConfig(hidden_size=256, num_layers=3, num_heads=4, num_kv_heads=4, ffn_dim=704),
)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    batch_size: int = 12
    steps: int = 3300
    lr: float = 1e-3
    warmup_steps: int = 100
    warmup_start: int = 0
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    guide_weight: float = 1.0
    curriculum_steps: int = 1200
    """Steps from the easiest pages to the full task (4 lines, 32 characters, small fonts, boxes)."""
    curriculum_start: int = 0
    eval_every: int = 300
    eval_pages: int = 16
    checkpoint_every: int = 100
    bf16: bool = False
    """bf16 autocast: at the demo model's widths the casts cost more than AMX saves (f32 measured
    ~15 % faster a step on an AMX Xeon)."""
