"""Label and template files are untrusted YAML: alias bombs, files above 1 MiB and deep nesting are refused
quickly, and values of the wrong shape are one-line errors naming them."""

import pytest
from cli_helpers import clip

LABELS = "red circle,blue square,green star"


BILLION_LAUGHS = "\n".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)])


def limited_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


# regression: YAML aliases in label and template files were expanded (a billion-laughs file ate all memory)
@pytest.mark.parametrize("option", ["--labels-file", "--templates"])
def test_yaml_alias_bomb_is_refused_quickly(shapes_dir, tmp_path, option):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS if option == "--labels-file" else f"{BILLION_LAUGHS}\ntemplates: *l8\n")
    args = [option, bomb] + (["-l", LABELS] if option == "--templates" else [])
    result = clip("classify", shapes_dir / "red_circle.png", "-m", "demo", *args, timeout=60,
                  preexec_fn=limited_memory)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"error: {bomb}:2: malformed YAML (aliases such as *l0 are not allowed)\n"


# regression: label and template files of any size were read whole
@pytest.mark.parametrize("loader", ["labels", "templates"])
def test_yaml_files_above_one_mebibyte_are_refused(tmp_path, loader):
    from clipcli.errors import LabelError, TemplateError
    from clipcli.labels import load_labels_file
    from clipcli.templates import load_template_set

    big = tmp_path / "big.yaml"
    big.write_text("templates:\n" + "  - 'a photo of a {}.'\n" * 60000)
    load, error = (load_labels_file, LabelError) if loader == "labels" else (load_template_set, TemplateError)
    with pytest.raises(error, match="is larger than 1 MiB"):
        load(str(big))


# regression: template files were parsed with no limit on nesting depth
def test_deeply_nested_yaml_is_refused(tmp_path):
    from clipcli.errors import TemplateError
    from clipcli.templates import load_template_set

    path = tmp_path / "deep.yaml"
    path.write_text("templates: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(TemplateError, match="nested deeper than 32 levels"):
        load_template_set(str(path))


def load_labels(path):
    from clipcli.errors import LabelError
    from clipcli.labels import load_labels_file

    with pytest.raises(LabelError) as caught:
        load_labels_file(path)
    return caught.value


def load_templates(path):
    from clipcli.errors import TemplateError
    from clipcli.templates import load_template_set

    with pytest.raises(TemplateError) as caught:
        load_template_set(str(path))
    return caught.value


# regression: nested or empty YAML values became labels and templates through str() ("{'c': 'd'}", "None")
@pytest.mark.parametrize("load, name, content, message", [
    (load_labels, "labels.yaml", "a: [b, {c: d}]\n", "a synonym of 'a' is a mapping, not text"),
    (load_labels, "labels.yaml", "a: [b, null]\n", "a synonym of 'a' is empty, not text"),
    (load_labels, "labels.yaml", "a: [b, [c]]\n", "a synonym of 'a' is a list, not text"),
    (load_labels, "labels.yaml", "- cat\n- {dog: puppy}\n", "label 2 is a mapping, not text"),
    (load_labels, "labels.yaml", "~: [kitten]\n", "a label name is empty, not text"),
    (load_templates, "mine.yaml", "templates:\n  - 'a {}.'\n  - {x: y}\n", "template 2 is a mapping, not text"),
    (load_templates, "mine.yaml", "templates:\n  - 'a {}.'\n  - null\n", "template 2 is empty, not text"),
    (load_templates, "mine.yaml", "name: {x: y}\ntemplates: ['a {}.']\n", "name is a mapping, not text"),
])
def test_nested_label_and_template_values_are_refused_naming_them(tmp_path, load, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    assert str(load(path)) == f"{path}: {message}"  # LabelError or TemplateError, naming the value
