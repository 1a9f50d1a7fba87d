"""Head files (from `clip fit`) are untrusted input: crafted ones (wrong shapes, missing or non-finite tensors, bad
metadata) are one-line errors, an untouched copy still classifies, and a full disk leaves no temporary file."""

import errno
import json

import pytest
from cli_helpers import cli

from clipcli.demo import shapes


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    """A real head from `clip fit` on drawn shapes (demo model)."""
    root = tmp_path_factory.mktemp("fit")
    for label in ("red circle", "blue square", "green star"):
        colour, kind = label.split()
        (root / "train" / label).mkdir(parents=True)
        for i in range(3):
            shapes.draw_pil(colour, kind, size=64, seed=i).save(root / "train" / label / f"{i}.png")
    head = root / "head.safetensors"
    result = cli("fit", root / "train", "-m", "demo", "-o", head, "--shots", "3")
    assert result.exit_code == 0, result.output
    return head


def craft(source, target, tensors=None, drop=(), **document):
    """A copy of a head file with some tensors replaced or dropped and some metadata fields changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        meta = json.loads(handle.metadata()["clipcli"])
        kept = {key: handle.get_tensor(key) for key in handle.keys() if key not in drop}
    kept.update(tensors or {})
    save_file({key: value.contiguous() for key, value in kept.items()}, str(target), metadata={"clipcli": json.dumps({**meta, **document})})
    return target


def head_cases(original):
    import torch
    from safetensors import safe_open

    with safe_open(str(original), framework="pt") as handle:
        text, weight = handle.get_tensor("text"), handle.get_tensor("weight")
    nan_weight = weight.clone()
    nan_weight[0, 0] = float("nan")
    return {
        "extra label row": ({"text": torch.cat([text, text[:1]])}, (), {}, "tensor 'text' has shape"),
        "weight too narrow": ({"weight": weight[:, :-1]}, (), {}, "tensor 'weight' has shape"),
        "fewer labels": ({}, (), {"labels": ["red circle", "blue square"]}, "tensor 'text' has shape"),
        "missing bias": ({}, ("bias",), {}, "tensor 'bias' is missing"),
        "nan weight": ({"weight": nan_weight}, (), {}, "tensor 'weight' must hold finite floating-point numbers"),
        "inf text": ({"text": text * float("inf")}, (), {}, "tensor 'text' must hold finite floating-point numbers"),
        "int text": ({"text": text.long()}, (), {}, "tensor 'text' must hold finite floating-point numbers"),
        "nan logit scale": ({}, (), {"logit_scale": float("nan")}, "logit_scale must be a finite number"),
        "missing alpha": ({}, (), {"params": {}}, "params must be finite numbers; a gda head needs alpha"),
        "text alpha": ({}, (), {"params": {"alpha": "high"}}, "params must be finite numbers; a gda head needs alpha"),
        "labels not text": ({}, (), {"labels": [1, 2, 3]}, "labels must be a non-empty list of distinct texts"),
        "repeated labels": ({}, (), {"labels": ["a", "a", "b"]}, "labels must be a non-empty list of distinct texts"),
        "unknown method": ({}, (), {"method": "magic"}, "unknown method 'magic'"),
        "model key not text": ({}, (), {"model_key": ["x"]}, "model_key must be text"),
    }


CASES = ["extra label row", "weight too narrow", "fewer labels", "missing bias", "nan weight", "inf text",
         "int text", "nan logit scale", "missing alpha", "text alpha", "labels not text", "repeated labels",
         "unknown method", "model key not text"]


# regression: a damaged or crafted head file was loaded unchecked, to crash or give NaN scores later
@pytest.mark.parametrize("case", CASES)
def test_crafted_head_files_are_one_line_errors(head_file, tmp_path, case):
    tensors, drop, document, message = head_cases(head_file)[case]
    crafted = craft(head_file, tmp_path / "crafted.safetensors", tensors, drop, **document)
    image = next((head_file.parent / "train" / "green star").iterdir())
    result = cli("classify", image, "-m", "demo", "--head", crafted, "-f", "json")
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception)  # no crash behind the message
    assert result.stderr.startswith(f"error: head {crafted} is damaged: {message}")
    assert result.stderr.count("\n") == 1


def test_the_untouched_head_still_classifies(head_file, tmp_path):
    copy = craft(head_file, tmp_path / "copy.safetensors")
    image = next((head_file.parent / "train" / "green star").iterdir())
    result = cli("classify", image, "-m", "demo", "--head", copy, "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["predictions"]


# regression: a full disk while `clip fit` wrote a head ended in a traceback instead of one line with exit 5
def test_head_on_a_full_disk_is_one_line_and_leaves_no_temp_file(head_file, tiny_tmpfs):
    with open(tiny_tmpfs / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    target = tiny_tmpfs / "head.safetensors"
    result = cli("fit", head_file.parent / "train", "-m", "demo", "-o", target, "--shots", "3")
    assert result.exit_code == 5, result.output
    assert result.stderr == f"error: cannot write {target}: no space left on device\n"
    assert [p.name for p in tiny_tmpfs.iterdir()] == ["filler"]
