"""``gotocr eval``: folder discovery, PDFs, box files, and the scores it prints (any model)."""

from __future__ import annotations

import json

import pytest

from gotocr_fast import reading
from gotocr_fast.engine.errors import InvalidRequest
from gotocr_fast.engine.eval_cli import eval_main, find_cases
from edit_distance import levenshtein


@pytest.fixture
def folder(tmp_path):
    pages = list(reading.heldout_pages(2, kind="box", start=700)) + list(reading.heldout_pages(1, kind="line"))
    reading.write_pages(tmp_path, pages[:2], prefix="box")
    reading.write_pages(tmp_path / "sub", pages[2:], prefix="line")
    pages[0].image.save(tmp_path / "untruthed.png")
    (tmp_path / "notes.txt").write_text("not an input\n")
    pages[2].image.save(tmp_path / "doc.pdf")  # Pillow writes a one-page PDF
    (tmp_path / "doc.txt").write_text(pages[2].truth + "\n")
    return tmp_path, pages


def test_find_cases(folder):
    root, pages = folder
    cases, untruthed = find_cases(root)
    names = [c.path.relative_to(root).as_posix() for c in cases]
    assert names == ["box-0000.png", "box-0001.png", "doc.pdf", "sub/line-0000.png"]
    assert untruthed == 1
    assert cases[0].box == list(pages[0].box) and cases[2].box is None
    assert cases[3].truth == pages[2].truth


def test_eval_json_scores(folder, converted_model, capsys):
    root, pages = folder
    model = converted_model("tiny")
    assert eval_main([str(root), "--model", str(model), "--json", "--max-tokens", "8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["files"]) == 4
    chars = edits = words = word_edits = 0
    for f in doc["files"]:
        assert f["char_edits"] == levenshtein(f["truth"], f["text"])
        assert f["word_edits"] == levenshtein(f["truth"].split(), f["text"].split())
        assert f["chars"] == len(f["truth"])
        chars, edits = chars + f["chars"], edits + f["char_edits"]
        words, word_edits = words + f["words"], word_edits + f["word_edits"]
    o = doc["overall"]
    assert o["cer"] == pytest.approx(edits / chars) and o["wer"] == pytest.approx(word_edits / words)
    assert (o["files"], o["skipped_without_truth"]) == (4, 1)


def test_eval_table_and_errors(folder, converted_model, capsys, tmp_path_factory):
    root, _ = folder
    model = converted_model("tiny")
    assert eval_main([str(root), "--model", str(model), "--limit", "1", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "(1 files)" in out
    with pytest.raises(InvalidRequest, match="no image or PDF"):
        eval_main([str(tmp_path_factory.mktemp("empty")), "--model", str(model)])
    with pytest.raises(InvalidRequest, match="not a folder"):
        eval_main([str(root / "box-0000.png"), "--model", str(model)])
    (root / "box-0000.box").write_text("1,2,3\n")
    with pytest.raises(InvalidRequest, match="box-0000.box"):
        eval_main([str(root), "--model", str(model)])
