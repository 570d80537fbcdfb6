"""train/heldout.py: the held-out CER of a training state, as the training code reads.

Needs torch and transformers (the ``train`` extra); skipped without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edit_distance import levenshtein

pytest.importorskip("torch")
pytest.importorskip("transformers")

CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoint"


def test_heldout_cer_scores_the_pages_it_reads():
    from gotocr_fast import reading
    from train import heldout

    got = heldout.heldout_cer(CHECKPOINT, kinds=("line", "box"), pages=2, start=7)
    assert list(got) == ["line", "box"]
    for kind, (cer, pairs) in got.items():
        truths = [p.truth for p in reading.heldout_pages(2, kind=kind, start=7)]
        assert [t for t, _ in pairs] == truths
        assert cer == pytest.approx(sum(levenshtein(t, g) for t, g in pairs) / sum(len(t) for t in truths))


def test_the_command_refuses_an_unknown_kind(capsys):
    from train import heldout

    with pytest.raises(SystemExit):
        heldout.main([str(CHECKPOINT), "--kinds", "line,poem"])
    assert "unknown kind poem" in capsys.readouterr().err
