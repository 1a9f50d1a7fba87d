"""Prompt templates: bundled sets, template files, rendering (any text, property-based), and `clip templates`."""

import pytest
from cli_helpers import cli
from hypothesis import given, settings
from hypothesis import strategies as st
from text_strategies import text
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.errors import TemplateError
from clipcli.templates import bundled_names, list_template_sets, load_template_set, render_template


def test_bundled_sets_include_the_papers_sets():
    sets = {s.name: s for s in list_template_sets()}
    assert len(sets) >= 15
    assert len(sets["imagenet"].templates) == 80
    assert len(set(sets["imagenet"].templates)) == 80
    assert len(sets["imagenet-7"].templates) == 7
    assert set(sets["imagenet-7"].templates) <= set(sets["imagenet"].templates)
    assert sets["simple"].templates == ["a photo of a {}."]
    assert sets["pets"].templates == ["a photo of a {}, a type of pet."]
    for template_set in sets.values():
        assert template_set.source and template_set.description


def test_render_accepts_both_placeholders():
    assert render_template("a photo of a {}.", "cat") == "a photo of a cat."
    assert render_template("a photo of a {c}.", "cat") == "a photo of a cat."


def test_user_file_with_c_placeholder(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntemplates:\n  - 'a {c} on a plate.'\n  - 'a close-up of {}.'\n")
    template_set = load_template_set(str(path))
    assert template_set.name == "mine"
    assert template_set.render("wonton") == ["a wonton on a plate.", "a close-up of wonton."]


def test_unknown_name_lists_known_sets():
    with pytest.raises(TemplateError) as info:
        load_template_set("imagenett")
    assert "unknown template set 'imagenett'" in str(info.value)
    for name in ("imagenet", "pets", "food"):
        assert name in str(info.value)


@pytest.mark.parametrize("template,count", [("a photo.", 0), ("a {} and a {}.", 2)])
def test_template_needs_exactly_one_placeholder(tmp_path, template, count):
    path = tmp_path / "bad.yaml"
    path.write_text(f"templates:\n  - '{template}'\n")
    with pytest.raises(TemplateError, match=f"has {count} placeholders"):
        load_template_set(str(path))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntemplates:\n  - 'a {}.'\n  - [unclosed\n")
    with pytest.raises(TemplateError) as info:
        load_template_set(str(path))
    assert str(path) in str(info.value)
    assert ":5:" in str(info.value) or ":4:" in str(info.value)


def test_missing_file():
    with pytest.raises(TemplateError, match="template file not found"):
        load_template_set("nowhere/mine.yaml")


def test_names_are_sorted_and_match_files():
    names = bundled_names()
    assert names == sorted(names)
    assert "imagenet" in names


def test_template_typo_gets_a_suggestion():
    result = cli("classify", "x.png", "-l", "a,b", "-t", "fod")
    assert result.exit_code == 2 and "did you mean food?" in result.stderr


def test_templates_command_lists_and_shows():
    listing = CliRunner().invoke(app, ["templates"])
    assert listing.exit_code == 0
    cells = [[c.strip() for c in line.split("│")] for line in listing.stdout.splitlines() if "│" in line]
    rows = {row[0]: row[1] for row in cells[1:]}
    assert rows["imagenet"] == "80" and rows["pets"] == "1"
    assert len(rows) >= 15
    shown = CliRunner().invoke(app, ["templates", "pets"])
    assert "a photo of a {}, a type of pet." in shown.stdout


@settings(max_examples=200, deadline=None)
@given(text, text, text, st.sampled_from(["{}", "{c}"]))
def test_template_rendering_puts_the_label_in_once(prefix, suffix, label, placeholder):
    prefix, suffix = (part.replace("{", "(").replace("}", ")") for part in (prefix, suffix))
    assert render_template(prefix + placeholder + suffix, label) == prefix + label + suffix
