"""train/export.py: a training state becomes the package's compact demo-model bundle.

Needs torch and transformers (the ``train`` extra); skipped without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoint"


def test_the_committed_compact_state_exports_to_a_bundle_of_its_weights(tmp_path, capsys):
    from gotocr_fast import demo_model
    from train import export

    assert export.main([str(CHECKPOINT), str(tmp_path / "bundle")]) == 0
    assert "MiB" in capsys.readouterr().out
    weights = demo_model.load_weights(tmp_path / "bundle")
    expected = {name: t.numpy() for name, t in export.load_state(CHECKPOINT).hf_state_dict().items()}
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        # the bundle stores float16; nothing else may change
        np.testing.assert_array_equal(weights[name], value.astype(np.float16).astype(np.float32), err_msg=name)
    used = demo_model.used_token_ids(tmp_path / "bundle")
    embed = weights[demo_model.EMBED_NAME]
    assert not np.delete(embed, used, axis=0).any()
