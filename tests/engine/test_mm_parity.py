"""Every GOT mode end to end vs transformers (tests/fixtures/<config>_mm, see its README):
prompt ids, first-step logits (≤ 1e-3), greedy ids while the top-1/top-2 margin is clear."""

from __future__ import annotations

import numpy as np
import pytest

import llama_cpp  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: E402,F401 - required: a broken build fails, never skips

from gotocr_fast.engine import OcrEngine  # noqa: E402

MARGIN = 1e-2  # compare greedy tokens only while transformers' top1 - top2 exceeds this


@pytest.fixture(scope="module", params=["tiny", "tiny-alt"])
def setup(request, converted_model, oracle):
    name = request.param
    fx = oracle(f"{name.replace('-', '_')}_mm")
    e = OcrEngine(converted_model(name, "hf", "f32"), n_ctx=512, max_slots=4, n_threads=2, kv_type="f32")
    yield e, fx
    e.close()


def _groups(cases):
    """Cases to run as one request: boxes_0 + boxes_1 are one request with two boxes."""
    out = []
    for key, c in cases.items():
        if key == "boxes_1":
            continue
        if key == "boxes_0":
            out.append((["boxes_0", "boxes_1"], c, [cases["boxes_0"]["boxes"][0], cases["boxes_1"]["boxes"][0]]))
        else:
            out.append(([key], c, c["boxes"]))
    return out


def test_every_mode_matches_transformers(setup, fixtures_dir):
    engine, fx = setup
    cases = fx.meta["cases"]
    checked_steps = 0
    per_case: dict[str, int] = {}
    for keys, c, boxes in _groups(cases):
        images = [str(fixtures_dir / p) for p in c["images"]]
        opts = {"type": "format" if "with format" in c["query"] else "plain", "color": c["color"],
                "crop": c["crop"], "max_tokens": len(fx[f"{keys[0]}/gen_ids"]),
                "no_repeat_ngram_size": 0}  # as the oracle generated (tiny_decoding has the rule on)
        if boxes:
            opts["box"] = boxes
        rows: dict[int, list[np.ndarray]] = {}
        req = engine.submit(images if c["multi_page"] else images[0], stream=False,
                            _logits_hook=lambda part, row: rows.setdefault(part, []).append(row.copy()), **opts)
        result = req.result(300)
        assert result.prompt_tokens == sum(len(fx[f"{k}/prompt_ids"]) for k in keys), keys
        for part, key in enumerate(keys):
            seq = req.sequences[part]
            n_views = cases[key]["n_views"]
            assert engine.prompt_token_ids(cases[key]["query"], n_views) == fx[f"{key}/prompt_ids"].tolist(), key
            first = rows[part][0]
            ids, vals = fx[f"{key}/first_topk_ids"], fx[f"{key}/first_topk_values"]
            np.testing.assert_allclose(first[ids], vals, atol=1e-3, rtol=0, err_msg=key)
            lse = float(np.log(np.exp(first.astype(np.float64) - first.max()).sum()) + first.max())
            assert abs(lse - float(fx[f"{key}/first_logsumexp"][0])) < 1e-3, key
            if f"{key}/first_logits" in fx.arrays:
                np.testing.assert_allclose(first, fx[f"{key}/first_logits"], atol=1e-3, rtol=0, err_msg=key)
            gen, margins = fx[f"{key}/gen_ids"], fx[f"{key}/gen_margins"]
            for step, (want, margin) in enumerate(zip(gen.tolist(), margins.tolist())):
                if margin <= MARGIN:
                    break
                assert step < len(seq.generated), (key, step)
                assert seq.generated[step] == want, (key, step)
                checked_steps += 1
                per_case[key] = step + 1
    # the margins leave plenty of clear steps: several modes are compared for >= 32 greedy steps
    assert sum(1 for n in per_case.values() if n >= 32) >= 5, per_case
