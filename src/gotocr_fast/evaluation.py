"""Accuracy of OCR text against ground truth: character and word error rates.

Edit distances come from rapidfuzz (Levenshtein over characters, and over word sequences); an
error rate is edits / reference length, summed over a set before dividing (a long page weighs
more than a short one), as OCR evaluations usually report it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

__all__ = ["Score", "score", "total"]


@dataclass(frozen=True)
class Score:
    char_edits: int
    chars: int
    word_edits: int
    words: int

    @property
    def cer(self) -> float:
        return self.char_edits / self.chars if self.chars else float(self.char_edits > 0)

    @property
    def wer(self) -> float:
        return self.word_edits / self.words if self.words else float(self.word_edits > 0)

    def __add__(self, other: Score) -> Score:
        return Score(self.char_edits + other.char_edits, self.chars + other.chars,
                     self.word_edits + other.word_edits, self.words + other.words)


def score(truth: str, text: str) -> Score:
    """Edits from ``truth`` to ``text``; words are whitespace-separated (line breaks too)."""
    truth_words, text_words = truth.split(), text.split()
    return Score(Levenshtein.distance(truth, text), len(truth),
                 Levenshtein.distance(truth_words, text_words), len(truth_words))


def total(scores: Iterable[Score]) -> Score:
    out = Score(0, 0, 0, 0)
    for s in scores:
        out = out + s
    return out
