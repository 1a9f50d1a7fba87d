"""Trimmed text encoding equals open_clip's full-context encode_text, family by family."""

import open_clip
import pytest
import tiny_models
import torch
import torch.nn.functional as F

from clipcli.textenc import FULL, TRIMMED, encode_texts, text_path

PROMPTS = ["a photo of a cat.", "a bad photo of the shanghai dumpling with a long tail of words in it.",
           "小笼包", "x", "a photo of a {}, a type of pet.".format("great pyrenees"), "itap of my wonton."]

EXPECTED_PATH = {"clip": TRIMMED, "custom": TRIMMED, "siglip": FULL, "nocausal": FULL, "quickgelu": TRIMMED,
                 "resnet": TRIMMED, "convnext": TRIMMED}


@pytest.mark.parametrize("family", sorted(f for f, cfg in tiny_models.FAMILIES.items()
                                          if "hf_tokenizer_name" not in cfg["text_cfg"]))  # CLIP's tokenizer here
def test_fast_path_equals_open_clip(family):
    model = tiny_models.build(family, seed=1)
    context = tiny_models.FAMILIES[family]["text_cfg"]["context_length"]
    tokenizer = open_clip.SimpleTokenizer(context_length=context)
    assert text_path(model) == EXPECTED_PATH[family]

    fast = encode_texts(model, tokenizer, PROMPTS, batch_size=4)  # several batches, sorted by length
    with torch.no_grad():
        reference = F.normalize(model.encode_text(tokenizer(PROMPTS)), dim=-1)
    assert fast.shape == reference.shape
    assert (fast - reference).abs().max().item() <= 1e-5
    assert (reference[0] - reference[1]).abs().max() > 1e-2  # distinct prompts, so order mistakes would show


def test_eos_pooling_is_trimmed_too():
    model = tiny_models.build("clip", seed=2)
    model.text_pool_type = "eos"
    model.text_eos_id = 49407
    tokenizer = open_clip.SimpleTokenizer()
    assert text_path(model) == TRIMMED
    with torch.no_grad():
        reference = F.normalize(model.encode_text(tokenizer(PROMPTS)), dim=-1)
    assert (encode_texts(model, tokenizer, PROMPTS) - reference).abs().max() <= 1e-5


def test_last_token_pooling_keeps_full_path():
    model = tiny_models.build("clip", seed=3)
    model.text_pool_type = "last"
    assert text_path(model) == FULL


def test_progress_callback_counts_prompts():
    model = tiny_models.build("clip")
    calls = []
    encode_texts(model, open_clip.SimpleTokenizer(), PROMPTS, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 6), (6, 6)]
