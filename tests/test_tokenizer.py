"""clipcli's torch-free CLIP tokenizer gives open_clip's token ids exactly: hand-picked hard cases (Unicode,
odd whitespace, contractions, HTML entities, special-token strings, truncation), seeded random texts,
ImageNet prompts and code points from all of Unicode.  The larger run is bench/bench_tokenizer.py."""

import numpy as np
import open_clip
import pytest
import tokenizer_samples as samples

from clipcli.tokenizer import ClipTokenizer


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def ours():
    return ClipTokenizer(77)


def assert_same_rows(ours, reference, texts, context_length=None):
    got, want = ours(texts, context_length), reference(texts, context_length).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape
    differing = [text for text, a, b in zip(texts, got, want) if not np.array_equal(a, b)]
    assert not differing, f"{len(differing)} of {len(texts)} texts differ, e.g. {ascii(min(differing, key=len))}"


def assert_same_ids(ours, reference, texts):
    differing = [text for text in texts if ours.encode(text) != reference.encode(text)]
    assert not differing, f"{len(differing)} of {len(texts)} texts differ, e.g. {ascii(min(differing, key=len))}"


@pytest.mark.parametrize("context_length", [None, 16, 5])
def test_hard_cases(ours, reference, context_length):
    assert_same_rows(ours, reference, samples.HARD_CASES, context_length)


def test_hard_cases_untruncated(ours, reference):
    assert_same_ids(ours, reference, samples.HARD_CASES)


def test_random_texts(ours, reference):
    texts = samples.random_texts(600, seed=1)
    assert_same_rows(ours, reference, texts)
    assert_same_ids(ours, reference, texts)


def test_imagenet_prompts(ours, reference):
    assert_same_rows(ours, reference, samples.imagenet_prompts(labels=25))


def test_code_points(ours, reference):
    """Every 151st code point (all planes), alone, inside a word, after an apostrophe, between digits, doubled."""
    assert_same_ids(ours, reference, samples.every_code_point(step=151))


def test_single_string_and_truncation_keep_the_end_token(ours, reference):
    assert np.array_equal(ours("a photo of a wonton."), reference("a photo of a wonton.").numpy())
    row = ours(["word " * 200])[0]
    assert row[0] == ours.sot and row[-1] == ours.eot and (row != 0).all()
