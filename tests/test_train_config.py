"""The demo model's sizes per view (train/config.py) and how a run folder keeps them.

Needs no torch: the training's sizes are plain data, and a run folder records them in the
bundle's ``config.json`` format so that resuming, compacting and exporting use the sizes the run
started with, whatever the default is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

config = pytest.importorskip("train.config", reason="needs the repository's train/ folder")

CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoint"


@pytest.mark.parametrize("view, grid, tokens", [(384, 24, 36), (768, 48, 144)])
def test_one_image_token_per_64_pixels(view, grid, tokens):
    cfg = config.demo_model(view)
    assert (cfg.vision.image_size, cfg.vision.grid, cfg.tokens_per_view) == (view, grid, tokens)
    assert cfg.text == config.demo_model(config.DEFAULT_VIEW).text  # one language model for every view


def test_unknown_view_is_refused():
    with pytest.raises(ValueError, match="image_size"):
        config.demo_model(512)


def test_a_run_folder_keeps_its_sizes(tmp_path):
    assert config.run_config(tmp_path) == config.DEMO_MODEL  # nothing recorded: the default view
    config.save_run_config(tmp_path, config.demo_model(768))
    assert config.run_config(tmp_path) == config.demo_model(768)


def test_committed_state_matches_its_recorded_sizes():
    from safetensors.numpy import load_file

    cfg = config.run_config(CHECKPOINT)
    assert (CHECKPOINT / config.CONFIG).exists()
    weights = load_file(str(CHECKPOINT / "weights.safetensors"))
    pos = weights["hf.model.vision_tower.pos_embed"]
    assert pos.shape == (1, cfg.vision.grid, cfg.vision.grid, cfg.vision.hidden_size)


def test_a_compact_state_carries_its_recipe_and_restarts_the_warm_up(tmp_path):
    import json

    compact = pytest.importorskip("train.compact")
    (tmp_path / compact.STATE).write_text(json.dumps({
        "step": 10500, "schedule_steps": 18500,
        "recipe": {"steps": 18500, "lr": 1e-3, "curriculum_start": 10500, "curriculum_steps": 8000}}))
    recipe = compact.recorded_recipe(tmp_path)
    assert recipe == {"steps": 18500, "lr": 1e-3, "curriculum_start": 10500, "curriculum_steps": 8000,
                      "warmup_start": 10500}
    # an older state records only its schedule's end
    (tmp_path / compact.STATE).write_text(json.dumps({"step": 9902, "schedule_steps": 12000}))
    assert compact.recorded_recipe(tmp_path) == {"steps": 12000, "warmup_start": 9902}
    # one that records no recipe still restarts the warm-up: its optimiser moments are new too
    (tmp_path / compact.STATE).write_text(json.dumps({"step": 5}))
    assert compact.recorded_recipe(tmp_path) == {"warmup_start": 5}


@pytest.mark.parametrize("level", [0.0, 0.75, 1.0])
def test_a_pinned_curriculum_holds_its_level(level):
    data = pytest.importorskip("train.data")
    start, steps = config.pinned_curriculum(level, 17400)
    want = data.task_level(round(level * 4), 4)  # the same point of a 4-step curriculum
    for step in (17400, 27400, 117400):  # longer than any run
        got = data.task_level(step - start, steps)
        assert (got.max_lines, got.max_chars, got.box_fraction) == (want.max_lines, want.max_chars, want.box_fraction)
        assert got.font_size_range == pytest.approx(want.font_size_range, abs=1e-4)


def test_a_level_outside_the_curriculum_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        config.pinned_curriculum(1.5, 0)


def test_a_finished_schedule_says_how_to_train_on(tmp_path):
    """A state whose schedule ended where it stopped (as a finished run leaves it): a run from it
    without --steps must say so instead of exiting having trained nothing."""
    import json
    import shutil

    pytest.importorskip("torch")
    train = pytest.importorskip("train.train")
    compact = pytest.importorskip("train.compact")
    state = tmp_path / "state"
    shutil.copytree(CHECKPOINT, state)
    raw = json.loads((state / compact.STATE).read_text())
    step = raw["step"]
    raw.setdefault("recipe", {})["steps"] = step
    (state / compact.STATE).write_text(json.dumps(raw))
    with pytest.raises(SystemExit, match=rf"step {step}.*--steps N with N > {step}"):
        train.main(["--out", str(tmp_path / "run"), "--from-compact", str(state)])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    # --fit-steps sizes the schedule to the deadline: a finished state is no reason to refuse
    assert train.main(["--out", str(tmp_path / "run"), "--from-compact", str(state),
                       "--deadline-s", "600", "--fit-steps", "--stop-after", "0"]) == 0


@pytest.mark.parametrize("recorded", [True, False])
def test_level_and_warm_up_start_at_the_states_step(tmp_path, recorded):
    """--level pins the curriculum from the step the run starts at, and the warm-up restarts
    there, whether or not the compact state records its recipe."""
    import json

    pytest.importorskip("torch")
    train = pytest.importorskip("train.train")
    compact = pytest.importorskip("train.compact")
    step = 4321
    state = {"step": step}
    if recorded:
        state["recipe"] = {"steps": step + 500, "lr": 5e-4, "curriculum_start": 10, "curriculum_steps": 8000}
    (tmp_path / compact.STATE).write_text(json.dumps(state))
    args = train._parser().parse_args(["--out", str(tmp_path / "run"), "--from-compact", str(tmp_path),
                                       "--steps", str(step + 100), "--level", "0.5"])
    tc, start = train.plan_run(args, None)
    assert start == step and tc.warmup_start == step and tc.steps == step + 100
    assert (tc.curriculum_start, tc.curriculum_steps) == config.pinned_curriculum(0.5, step)


def test_box_fraction_sets_the_share_of_boxed_pages():
    """``--box-fraction`` reaches the pages: all multi-line pages of the full task boxed at 1, none at 0
    (review pages of the first quarter of the curriculum never are)."""
    import numpy as np

    data = pytest.importorskip("train.data")
    from gotocr_fast import tokens

    assert data.task_level(8000, 8000, 0.6).box_fraction == 0.6
    assert data.task_level(1000, 8000, 0.6).box_fraction == 0.0  # before a quarter of the curriculum
    used = np.load(CHECKPOINT / "used_ids.npy")
    full_to_used = np.full(tokens.VOCAB_SIZE, -1, dtype=np.int64)
    full_to_used[used] = np.arange(len(used))

    def boxed(fraction: float) -> list[bool]:
        pages = data.make_batch(0, 7, 12, 8000, 8000, 384, 6, 36, full_to_used, 24, box_fraction=fraction)
        return [p.page.box is not None for p in pages]

    assert not any(boxed(0.0))
    everything = boxed(1.0)
    assert sum(everything) >= 8  # the pages not single-line reviews of the easiest levels


def test_box_pages_carry_their_boxed_rows_for_the_row_heads():
    """The row heads' targets: a box page's row is a row of the token grid its box covers (the
    renderer's box, squashed to the square view as GOT's preprocessing does); other pages -1."""
    import numpy as np

    pytest.importorskip("torch")
    data = pytest.importorskip("train.data")
    train = pytest.importorskip("train.train")
    from gotocr_fast import tokens

    used = np.load(CHECKPOINT / "used_ids.npy")
    full_to_used = np.full(tokens.VOCAB_SIZE, -1, dtype=np.int64)
    full_to_used[used] = np.arange(len(used))
    pages = data.make_batch(3, 11, 12, 8000, 8000, 384, 6, 36, full_to_used, 24, box_fraction=0.5)
    batch = train.collate(pages, full_to_used, int(used[0]))
    rows, ends = batch["box_rows"].tolist(), batch["prompt_ends"].tolist()
    assert any(p.page.box is not None for p in pages) and any(p.page.box is None for p in pages)
    for example, row, end in zip(pages, rows, ends):
        assert end == len(example.prompt_ids) - 1
        if example.page.box is None:
            assert row == -1
            continue
        h = example.page.image.size[1]
        _, y1, _, y2 = example.page.box
        assert int(y1 * 6 / h) <= row <= int(y2 * 6 / h), (example.page.box, h, row)


def test_box_fraction_is_recorded_and_can_be_changed(tmp_path):
    import json

    pytest.importorskip("torch")
    train = pytest.importorskip("train.train")
    compact = pytest.importorskip("train.compact")
    (tmp_path / compact.STATE).write_text(json.dumps(
        {"step": 100, "recipe": {"steps": 900, "box_fraction": 0.4}}))

    def planned(*flags: str):
        args = train._parser().parse_args(["--out", str(tmp_path / "run"), "--from-compact", str(tmp_path), *flags])
        return train.plan_run(args, None)[0]

    assert planned().box_fraction == 0.4  # the state's own
    assert planned("--box-fraction", "0.5").box_fraction == 0.5
    with pytest.raises(SystemExit, match="between 0 and 1"):
        planned("--box-fraction", "1.5")
    (tmp_path / compact.STATE).write_text(json.dumps({"step": 100, "recipe": {"steps": 900}}))
    assert planned().box_fraction == config.TrainConfig.box_fraction


@pytest.mark.parametrize("field", ["freeze_vit", "box_guide"])
def test_a_switch_of_the_recipe_is_recorded_in_the_compact_state_and_can_be_changed(tmp_path, field):
    import json

    pytest.importorskip("torch")
    train = pytest.importorskip("train.train")
    compact = pytest.importorskip("train.compact")

    flag = "--" + field.replace("_", "-")
    default = getattr(config.TrainConfig, field)
    assert field in compact.RECIPE_FIELDS

    def planned(*flags: str):
        args = train._parser().parse_args(["--out", str(tmp_path / "run"), "--from-compact", str(tmp_path), *flags])
        return getattr(train.plan_run(args, None)[0], field)

    for recorded in (True, False):
        (tmp_path / compact.STATE).write_text(json.dumps({"step": 100, "recipe": {"steps": 900, field: recorded}}))
        assert planned() is recorded
        assert planned(flag) is True
        assert planned("--no-" + flag[2:]) is False
    (tmp_path / compact.STATE).write_text(json.dumps({"step": 100, "recipe": {"steps": 900}}))
    assert planned() is default
