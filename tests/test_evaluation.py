"""Character and word error rates (independent values worked out by hand)."""

from __future__ import annotations

import pytest

from gotocr_fast.evaluation import Score, score, total


def test_classic_edit_distances():
    s = score("kitten", "sitting")  # k->s, e->i, +g
    assert (s.char_edits, s.chars) == (3, 6)
    assert s.cer == pytest.approx(0.5)
    w = score("the cat sat on the mat", "the cat sat on mat")
    assert (w.word_edits, w.words) == (1, 6)
    assert w.wer == pytest.approx(1 / 6)


def test_line_breaks_separate_words_and_count_as_characters():
    s = score("a b\nc", "a b c")
    assert s.char_edits == 1 and s.word_edits == 0


def test_totals_weight_by_length():
    t = total([score("abcd", "abce"), score("xy", "xy")])
    assert t == Score(1, 6, 1, 2)
    assert t.cer == pytest.approx(1 / 6)


def test_empty_truth():
    assert score("", "").cer == 0.0
    assert score("", "junk").cer == 1.0


def test_nearest_line_is_the_line_a_read_is_closest_to():
    from gotocr_fast.demo import nearest_line

    lines = ["Invoice #4821", "Total: $1,249.00", "Thank you!"]
    assert nearest_line(lines, "Total: $1,249.00") == 1
    assert nearest_line(lines, "Thank - you") == 2
    assert nearest_line(lines, "lnvoice #482l") == 0
