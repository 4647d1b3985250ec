"""Prompt rules and the token handling of the two prompt paths."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from photomaker_server.engine.errors import InvalidRequest
from photomaker_server.contract.request import GenerationOptions, check_trigger_word
from photomaker_server.engine.options import resolve_size, start_merge_step
from photomaker_server.engine.prompts import add_trigger_word, text_only_prompt, tokenize_id_prompt, tokenize_plain
from photomaker_server.engine.tiny import _tokenizer


@pytest.fixture(scope="module")
def tokenizers():
    toks = [_tokenizer("<|endoftext|>"), _tokenizer("!")]
    for t in toks:
        add_trigger_word(t, "img")
    return toks


def test_class_word_is_repeated_once_per_photo(tokenizers):
    prompt = "a photo of a man img, film grain"
    tokens = tokenize_id_prompt(tokenizers, prompt, "img", num_id_tokens=3)
    plain = tokenizers[0].encode("a photo of a man, film grain")
    man = tokenizers[0].convert_tokens_to_ids("man</w>")
    position = plain.index(man)
    row = tokens.input_ids[0]
    assert row[: position + 3] == plain[:position] + [man] * 3
    assert row[position + 3 : len(plain) + 2] == plain[position + 1 :]
    assert len(row) == 77 and row[len(plain) + 2 :] == [tokenizers[0].pad_token_id] * (77 - len(plain) - 2)
    assert tokens.input_ids[1][len(plain) + 2 :] == [0] * (77 - len(plain) - 2)  # tokenizer_2 pads with '!'
    assert tokens.class_tokens_mask[0].nonzero().flatten().tolist() == [position, position + 1, position + 2]
    assert tokens.class_word == "man"


def test_text_only_prompt_drops_only_the_trigger(tokenizers):
    text = text_only_prompt(tokenizers[0], "a photo of a woman img, smiling", "img")
    assert tokenize_plain(tokenizers[0], text) == tokenize_plain(tokenizers[0], "a photo of a woman, smiling")


@pytest.mark.parametrize("prompt", ["a photo of a man", "a man img and a woman img", "img a man"])
def test_engine_refuses_bad_trigger_use(tokenizers, prompt):
    with pytest.raises(InvalidRequest, match="img") as info:
        tokenize_id_prompt(tokenizers, prompt, "img", 1)
    assert info.value.field == "prompt"


def test_too_many_photos_for_a_long_prompt(tokenizers):
    prompt = "word " * 60 + "a man img"
    with pytest.raises(InvalidRequest, match="too long for 20 ID photos"):
        tokenize_id_prompt(tokenizers, prompt, "img", 20)


@pytest.mark.parametrize(
    "prompt, error",
    [
        ("a photo of a man", "exactly once.*found it none"),
        ("a man img with a woman img", "exactly once.*found it 2 times"),
        ("img, portrait", "must follow a class word"),
    ],
)
def test_trigger_rule_messages(prompt, error):
    with pytest.raises(ValueError, match=error):
        check_trigger_word(prompt)
    with pytest.raises(ValidationError, match="e.g. 'a photo of a man img"):
        GenerationOptions(prompt=prompt)


def test_configurable_trigger_word():
    GenerationOptions.model_validate({"prompt": "a man ohwx"}, context={"trigger_word": "ohwx"})
    with pytest.raises(ValidationError, match="'ohwx' exactly once"):
        GenerationOptions.model_validate({"prompt": "a man img"}, context={"trigger_word": "ohwx"})


def test_defaults_match_fal():
    o = GenerationOptions(prompt="a man img")
    assert (o.base_pipeline, o.style, o.num_inference_steps, o.style_strength, o.num_images, o.guidance_scale) == (
        "photomaker", "Photographic", 50, 20, 1, 5.0)
    assert o.initial_image_strength == 0.5 and o.negative_prompt == "" and o.seed is None and o.image_size is None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_inference_steps", 0, "greater than or equal to 1"),
        ("num_inference_steps", 101, "less than or equal to 100"),
        ("initial_image_strength", 1.5, "less than or equal to 1"),
        ("initial_image_strength", -0.1, "greater than or equal to 0"),
        ("style_strength", 10, "greater than or equal to 15"),
        ("style_strength", 51, "less than or equal to 50"),
        ("guidance_scale", 0, "greater than or equal to 0.1"),
        ("guidance_scale", 11, "less than or equal to 10"),
        ("num_images", 0, "greater than or equal to 1"),
        ("num_images", 5, "at most 4 images"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 2**64, "less than or equal to"),
        ("style", "Vaporwave", "Photographic"),
        ("base_pipeline", "sdxl", "photomaker-style"),
        ("image_size", {"width": 500, "height": 512}, "multiple of 8"),
        ("image_size", {"width": 32, "height": 512}, "greater than or equal to 64"),
        ("image_size", "huge", "square_hd"),
        ("prompt", "", "at least 1 character"),
        ("unknown_field", 1, "Extra inputs are not permitted"),
    ],
)
def test_validation_rules(field, value, message):
    with pytest.raises(ValidationError, match=message):
        GenerationOptions.model_validate({"prompt": "a man img", field: value})


def test_max_images_is_configurable():
    GenerationOptions.model_validate({"prompt": "a man img", "num_images": 8}, context={"max_num_images": 8})
    with pytest.raises(ValidationError, match="at most 2 images"):
        GenerationOptions.model_validate({"prompt": "a man img", "num_images": 3}, context={"max_num_images": 2})


def test_sizes():
    assert resolve_size(None, None) == (1024, 1024)
    assert resolve_size("landscape_16_9", (10, 10)) == (1024, 576)
    assert resolve_size(GenerationOptions(prompt="a man img", image_size={"width": 64, "height": 128}).image_size, None) == (64, 128)
    w, h = resolve_size(None, (1600, 900))  # keeps 16:9 at about one megapixel
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 16 / 9) < 0.02 and abs(w * h - 1024**2) < 0.03 * 1024**2


def test_merge_step_formula():
    assert start_merge_step(20, 50) == 10  # 50 steps: text-only for steps 0..10, ID from step 11 on
    assert start_merge_step(50, 100) == 30  # capped at 30
    assert start_merge_step(15, 4) == 0
