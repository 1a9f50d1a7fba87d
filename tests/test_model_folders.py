"""Model folders that cannot mean anything are refused in one line (exit 3), before any image is scored: a
transformers folder without tokenizer files, a config.json that is not an object, weights that do not fit their
config, a pickled checkpoint, a file named as a folder (issue 30, items 5, 9 and 13)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tiny_hf_models
import tiny_models
from clipcli.cli import app

pytest.importorskip("transformers")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "red_circle.png"


def classify(model: str, *extra):
    return CliRunner().invoke(app, ["classify", str(EXAMPLE), "-m", model, "-l", "red circle,blue square", "-f",
                                    "jsonl", *extra])


def one_line_error(result, code: int = 3) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "\x1b[" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return tiny_hf_models.save("clip", tmp_path_factory.mktemp("hf") / "clip")


def copy_of(folder: Path, tmp_path: Path, leave_out=()) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(*leave_out))
    return target


def test_the_tiny_transformers_folder_itself_loads(hf_folder):
    result = classify(f"local-dir:{hf_folder}")
    assert result.exit_code == 0, result.output
    scores = [p["score"] for p in json.loads(result.stdout)["predictions"]]
    assert scores[0] != scores[1]  # the folders below are refused, not this one


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_transformers_folder_without_tokenizer_files_is_refused(hf_folder, tmp_path, backend):
    # issue 30 #5: without tokenizer files transformers built an empty 2-token tokenizer: every score 0.5, exit 0
    folder = copy_of(hf_folder, tmp_path, leave_out=("tokenizer.json",))
    line = one_line_error(classify(f"local-dir:{folder}", "--backend", backend))
    assert "the tokenizer files are missing" in line and "save_pretrained" in line


def test_a_tokenizer_without_vocabulary_is_refused(hf_folder, tmp_path):
    # issue 30 #5: a vocabulary file that holds no vocabulary loads as the same empty tokenizer
    folder = copy_of(hf_folder, tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"], tokenizer["model"]["merges"] = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] in tokenizer["model"]["vocab"]]
    for token in tokenizer["added_tokens"]:
        token["id"] = tokenizer["model"]["vocab"][token["content"]]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = classify(f"local-dir:{folder}", "--backend", "torch")
    assert result.exit_code == 3, result.output  # refused, whichever of our two checks catches it
    assert "tokenizer" in one_line_error(result)


@pytest.mark.parametrize("content", ["[1, 2]", '"clip"', "null"])
def test_a_config_json_that_is_not_an_object_is_one_line(hf_folder, tmp_path, content):
    # issue 30 #9: a config.json holding a JSON array gave AttributeError: 'list' object has no attribute 'get'
    folder = copy_of(hf_folder, tmp_path)
    (folder / "config.json").write_text(content)
    line = one_line_error(classify(f"local-dir:{folder}", "--backend", "torch"))
    assert "config.json holds a JSON" in line and "not an object" in line


def test_a_preprocessor_config_that_is_an_array_is_one_line(hf_folder, tmp_path):
    # issue 30 #9: the image processor's config as an array was an AttributeError too
    folder = copy_of(hf_folder, tmp_path)
    (folder / "preprocessor_config.json").write_text("[]")
    assert "preprocessor_config.json holds a JSON array" in one_line_error(classify(f"local-dir:{folder}",
                                                                                     "--backend", "torch"))


def test_weights_that_do_not_fit_the_config_are_one_line_without_a_missing_report(hf_folder, tmp_path):
    # issue 30 #13: an oversized config said "For details look at the above report!" with no report shown
    folder = copy_of(hf_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    line = one_line_error(classify(f"local-dir:{folder}", "--backend", "torch"))
    assert "report" not in line
    assert "weights do not fit config.json" in line and "(64,) in the weights, (128,) in the config" in line


def test_a_pickled_checkpoint_is_refused_in_our_words(tmp_path):
    # issue 30 #13: a refused pickle showed torch's advice to pass weights_only=False (which would run it)
    folder = tmp_path / "pickled"
    tiny_models.save_local_dir("clip", folder)
    state = tiny_models.build("clip").state_dict()
    (folder / "open_clip_model.safetensors").unlink()
    torch.save({**state, "extra": Path("anything")}, folder / "open_clip_pytorch_model.bin")  # a Path: a pickle
    line = one_line_error(classify(f"local-dir:{folder}", "--backend", "torch"))
    assert "weights_only" not in line and "pickle" in line and "safetensors" in line


@pytest.mark.parametrize("scheme", ["local-dir", "transformers"])
def test_a_file_named_as_a_model_folder_is_called_a_file(tmp_path, scheme):
    # issue 30 #13: `local-dir:/etc/passwd` said "folder not found" when it is a file
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0::/root:/bin/sh\n")
    line = one_line_error(classify(f"{scheme}:{target}"))
    assert f"{target} is a file, not a folder" in line and "not found" not in line
