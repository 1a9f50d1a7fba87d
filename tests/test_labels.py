"""Labels: parsing (also any quoted text, property-based), label files, synonyms, and the warnings about them."""

import csv
import io
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from text_strategies import label_text
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.errors import ClipCliWarning, LabelError
from clipcli.labels import Label, load_labels_file, parse_labels, require_labels

LABELS = "red circle,blue square"


def names(labels):
    return [label.name for label in labels]


def test_comma_separated_with_quotes_and_spaces():
    assert names(parse_labels('wonton, shanghai dumpling,"steamed bun, plain"')) == [
        "wonton", "shanghai dumpling", "steamed bun, plain"]


def test_unicode_labels():
    assert names(parse_labels("馄饨,小笼包,crème brûlée")) == ["馄饨", "小笼包", "crème brûlée"]


def test_blank_and_duplicate_labels_are_dropped_with_warnings():
    with pytest.warns(ClipCliWarning) as caught:
        labels = parse_labels("cat,,dog, cat , ")
    assert names(labels) == ["cat", "dog"]
    messages = [str(w.message) for w in caught]
    assert any("2 blank" in m for m in messages)
    assert any("duplicate" in m and "'cat'" in m for m in messages)


def test_empty_list_is_a_usage_error():
    with pytest.raises(LabelError, match="no labels given"):
        require_labels(parse_labels(""))


def test_txt_file_with_comments(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("# dumplings\nwonton\n\nshanghai dumpling, with soup\n  # indented comment\n", encoding="utf-8")
    assert names(load_labels_file(path)) == ["wonton", "shanghai dumpling, with soup"]


def test_yaml_list_and_synonym_mapping(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- cat\n- dog\n")
    assert names(load_labels_file(listing)) == ["cat", "dog"]

    mapping = tmp_path / "map.yaml"
    mapping.write_text("cat: [kitten, tabby cat]\ndog: puppy\nbird:\n", encoding="utf-8")
    labels = load_labels_file(mapping)
    assert labels == [Label("cat", ("cat", "kitten", "tabby cat")), Label("dog", ("dog", "puppy")),
                      Label("bird", ("bird",))]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(LabelError, match="labels file not found"):
        load_labels_file(tmp_path / "none.txt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cat: [unclosed\n")
    with pytest.raises(LabelError, match="malformed YAML"):
        load_labels_file(bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(label_text, min_size=1, max_size=8, unique=True))
def test_quoted_labels_parse_back(labels):
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="").writerow(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = [label.name for label in parse_labels(buffer.getvalue())]
    assert parsed == [label.strip() for label in labels]


def test_long_labels_warn_about_truncation(tiny_model, images):
    long_label = "dumpling " * 60
    result = CliRunner().invoke(app, ["classify", str(images / "red_circle.png"), "--model", tiny_model,
                                      "--labels", f"wonton,{long_label.strip()}", "--format", "jsonl"])
    assert result.exit_code == 0
    assert "longer than the model's 77-token context and were truncated" in result.stderr
