"""Sizes of the demo model and the training recipe: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gotocr_fast import demo_model as bundle_format
from gotocr_fast.synth import GotConfig, TextConfig, VisionConfig

from .data import BOX_DRILLS, BOX_FRACTION

VIEW_SIZES = (384, 768)
"""View sizes a run can train (``--image-size``); a run keeps its own in ``config.json``."""
DEFAULT_VIEW = 384


def demo_model(image_size: int = DEFAULT_VIEW) -> GotConfig:
    """The demo model's sizes for one view size: 16-pixel patches (a 24 x 24 grid at 384, 48 x 48 at
    768), windows of 8, two global blocks; the two stride-2 convs leave one image token per 64 x 64
    pixels (36 at 384, 144 at 768). The language model is the same for every view."""
    if image_size not in VIEW_SIZES:
        raise ValueError(f"image_size must be one of {VIEW_SIZES}, got {image_size}")
    return GotConfig(
        "demo",
        VisionConfig(
            image_size=image_size, patch_size=16, hidden_size=128, num_layers=4, num_heads=2, mlp_dim=512,
            window_size=8, global_layers=(1, 3), neck_channels=64,
        ),
        TextConfig(hidden_size=256, num_layers=3, num_heads=4, num_kv_heads=4, ffn_dim=704),
    )


DEMO_MODEL = demo_model()
"""The sizes of a run folder or compact state that has no ``config.json`` of its own."""

CONFIG = bundle_format.CONFIG_FILE
"""The model sizes in a run folder and a compact state (the bundle's format)."""


def run_config(folder: Path) -> GotConfig:
    """The model sizes a run folder (or compact state) was trained with."""
    return bundle_format.load_config(folder) if (folder / CONFIG).exists() else DEMO_MODEL


def save_run_config(folder: Path, config: GotConfig) -> None:
    bundle_format.save_config(folder, config)


PINNED_CURRICULUM_STEPS = 10**9
"""A curriculum this long does not move within any run: how ``--level`` holds one level."""


def pinned_curriculum(level: float, step: int) -> tuple[int, int]:
    """(curriculum_start, curriculum_steps) that hold the curriculum at ``level`` (0: one short
    line in huge type, 1: the full task) from ``step`` on; a fifth of the pages still review the
    easier levels (``data.REVIEW_FRACTION``)."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    return step - round(level * PINNED_CURRICULUM_STEPS), PINNED_CURRICULUM_STEPS


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    batch_size: int = 12
    steps: int = 20000
    lr: float = 1e-3
    warmup_steps: int = 100
    warmup_start: int = 0
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.0
    guide_weight: float = 1.0
    curriculum_steps: int = 8000
    """Steps from the easiest pages (one short line in huge type) to the full task (4 lines, 32
    characters, small fonts, boxes)."""
    curriculum_start: int = 0
    box_fraction: float = BOX_FRACTION
    """Share of the multi-line pages in box mode once the curriculum has reached a quarter."""
    box_drills: int = BOX_DRILLS
    """Box prompts a step for the boxed-row read-out alone (``train.data.box_drills``)."""
    box_guide: bool = True
    """Box mode's own lessons: the last layer's box-guided head, the row heads at its input and the
    box drills. Off, box pages train like any other page (the answer and the second layer's guided
    head); every leg that turned them on lost plain reading (docs/DEMO_MODEL.md)."""
    freeze_vit: bool = False
    """Train everything after the ViT (neck, projector, language model, heads) and run the ViT
    without a gradient: once it names the characters under its patches, its backward pass is most
    of a step's arithmetic and buys little."""
    eval_every: int = 500
    eval_pages: int = 16
    checkpoint_every: int = 100
    bf16: bool = False
    """bf16 autocast: at the demo model's widths the casts cost more than AMX saves (f32 measured
    ~15 % faster a step on an AMX Xeon)."""
