"""Settings: one typed object from CLI over environment over defaults; the chat text → mode mapping."""

from __future__ import annotations

import pytest

from gotocr_fast import InvalidRequest, OcrOptions
from gotocr_fast.server.modes import chat_request_options, mode_from_text, ocr_options
from gotocr_fast.server.schemas import ChatCompletionRequest, OcrRequestBody
from gotocr_fast.server.settings import ServerSettings, SettingsError, settings_from_args


def test_defaults_are_the_safe_ones():
    s = settings_from_args(["--model", "m"], env={})
    assert (s.host, s.port, s.allowed_root, s.allow_urls, s.api_key) == ("127.0.0.1", 8000, None, False, None)


def test_cli_over_env_over_default():
    env = {"GOTOCR_API_KEY": "k-env", "GOTOCR_PORT": "9001", "GOTOCR_MAX_IMAGES": "3", "GOTOCR_ALLOW_URLS": "yes",
           "GOTOCR_MODEL": "/models/got"}
    s = settings_from_args(["--port", "9002"], env=env)
    assert (s.model, s.api_key, s.port, s.max_images, s.allow_urls) == ("/models/got", "k-env", 9002, 3, True)
    s = settings_from_args(["--no-allow-urls", "--api-key", "k-cli"], env=env)
    assert (s.allow_urls, s.api_key) == (False, "k-cli")
    assert s.served_model_name == "got"


@pytest.mark.parametrize(
    "argv, env",
    [
        ([], {}),  # no model
        (["--model", "m", "--max-images", "0"], {}),
        (["--model", "m", "--port", "70000"], {}),
        (["--model", "m"], {"GOTOCR_SLOTS": "many"}),
        (["--model", "m"], {"GOTOCR_ALLOW_URLS": "maybe"}),
        (["--model", "m", "--default-max-tokens", "100", "--max-tokens-limit", "50"], {}),
        (["--model", "m", "--api-key", ""], {}),
        (["--model", "m", "--kv-type", "q4_0"], {}),
    ],
)
def test_invalid_settings(argv, env):
    with pytest.raises(SettingsError):
        settings_from_args(argv, env=env)


def test_struct_is_immutable():
    s = ServerSettings(model="m")
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, mode",
    [
        ("OCR this", {"type": "plain"}),
        ("", {"type": "plain"}),
        ("Format please", {"type": "format"}),
        ("box: [10, 20, 110, 220]", {"type": "plain", "box": [10, 20, 110, 220]}),
        ("format box: [1,2,3,4] [5,6,7.5,8]", {"type": "format", "box": [[1, 2, 3, 4], [5, 6, 7.5, 8]]}),
        ("color: RED", {"type": "plain", "color": "red"}),
        ("colour=blue, crop", {"type": "plain", "color": "blue", "crop": True}),
        ("multi-crop format", {"type": "format", "crop": True}),
        ("the colour scheme is nice", {"type": "plain"}),
    ],
)
def test_chat_text_to_mode(text, mode):
    assert mode_from_text(text) == mode


def test_settings_give_the_engine_config():
    s = settings_from_args(["--model", "m", "--slots", "2", "--n-ctx", "1024", "--max-image-pixels", "1000",
                            "--default-max-tokens", "40", "--max-tokens-limit", "50", "--loop-guard", "0",
                            "--vision-precision", "bf16", "--kv-type", "q8_0"], env={})
    c = s.engine_config()
    assert (c.model, c.max_slots, c.n_ctx, c.max_pixels, c.vision_precision) == ("m", 2, 1024, 1000, "bf16")
    assert c.kv_type == "q8_0"
    assert (c.default_max_tokens, c.max_tokens_limit, c.loop_guard) == (40, 50, 0)


def test_bodies_become_engine_options():
    body = OcrRequestBody(image_file="a.png", type="format", box=[[1, 2, 3, 4], [0, 0, 5, 5]], color="red",
                          max_tokens=9, seed=3)
    assert ocr_options(body) == OcrOptions(type="format", box=((1, 2, 3, 4), (0, 0, 5, 5)), color="red",
                                           max_tokens=9, seed=3)
    chat = ChatCompletionRequest(messages=[], box=[1, 2, 3, 4], max_completion_tokens=7, max_tokens=8)
    assert chat_request_options(chat, "format color: green") == OcrOptions(
        type="format", box=((1, 2, 3, 4),), color="green", max_tokens=7)
    assert chat_request_options(ChatCompletionRequest(messages=[]), "crop") == OcrOptions(crop=True)
    # a request field overrides what the text asks for
    chat = ChatCompletionRequest(messages=[], ocr_type="plain", crop=False)
    assert chat_request_options(chat, "format crop") == OcrOptions()
    for bad in ([1, 2, 3], [[1, 2, 3, 4], 5], [[1, 2]]):
        with pytest.raises(InvalidRequest) as info:
            ocr_options(OcrRequestBody(image_file="a.png", box=bad))
        assert info.value.code == "invalid_box"
