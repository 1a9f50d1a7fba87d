"""Model loading: the hf-hub: path from a (fabricated) Hugging Face cache, offline behaviour, the QuickGELU trap;
where weights are looked up, `clip models` without torch, and model errors (exit 3)."""

import os
import shutil
import subprocess
import sys
import time

import huggingface_hub.constants as hub_constants
import pytest
import tiny_models
from cli_helpers import cli, draw
from typer.testing import CliRunner

import clipcli.models as models
from clipcli.cli import app
from clipcli.errors import ModelLoadError
from clipcli.models import load_model, parse_model_spec

LABELS = "red circle,blue square"


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir):
    """A Hugging Face cache folder holding `test/tiny-clip`, laid out as huggingface_hub lays it out."""
    commit = "0" * 40
    snapshot = tmp_path / "models--test--tiny-clip" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(tiny_model_dir / name, snapshot / name)
    (tmp_path / "models--test--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--test--tiny-clip" / "refs" / "main").write_text(commit)
    return tmp_path


@pytest.fixture
def online(monkeypatch):
    """As if HF_HUB_OFFLINE were unset; any attempt to reach the network fails the test."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def no_network(url, timeout=3.0):
        raise AssertionError(f"tried to reach {url}")

    monkeypatch.setattr(models, "hub_reachable", no_network)


def test_cached_hf_hub_model_loads_without_touching_the_network(hub_cache, online):
    loaded = load_model("hf-hub:test/tiny-clip", weights_dir=str(hub_cache))
    assert loaded.spec.schema == "hf-hub"
    assert loaded.identity["weights"]  # fingerprinted from the cached file
    assert loaded.image_size == 32
    assert hub_constants.HF_HUB_OFFLINE is False  # offline mode was only for the load


def test_unreachable_hub_fails_at_once_with_one_message(monkeypatch, images):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "hub_reachable", lambda url, timeout=3.0: False)
    start = time.monotonic()
    result = CliRunner().invoke(app, ["classify", str(images / "red_circle.png"), "--labels", "a,b",
                                      "--model", "ViT-B-32:openai", "--weights-dir", str(images)])
    assert time.monotonic() - start < 10
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        f"error: weights for ViT-B-32/openai are not in the cache at {images} and could not be downloaded "
        "(cannot reach huggingface.co); run once with network access, or use local files: "
        "--model local-dir:DIR or --pretrained /path/to/checkpoint"]


def test_openai_tag_switches_quick_gelu_on(monkeypatch, tmp_path):
    seen = {}

    def fake_create(name, pretrained, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    import open_clip
    monkeypatch.setattr(open_clip, "create_model_from_pretrained", fake_create)
    monkeypatch.setattr(models, "_plan_download", lambda *a: True)
    with pytest.raises(ModelLoadError):
        load_model("ViT-B-32", "openai")
    assert seen.get("force_quick_gelu") is True
    seen.clear()
    with pytest.raises(ModelLoadError):
        load_model("ViT-B-32", "laion2b_s34b_b79k")
    assert "force_quick_gelu" not in seen


def test_checkpoint_file_and_spec_parsing(tmp_path, tiny_model_dir):
    assert parse_model_spec("ViT-B-32:openai") == models.ModelSpec("ViT-B-32", "openai")
    assert parse_model_spec("local-dir:/x:y").name == "local-dir:/x:y"
    assert parse_model_spec("demo").alias == "demo"
    # an architecture plus a checkpoint file: build a tiny registered config and point --pretrained at weights
    import json

    import open_clip
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-test-arch.json").write_text(json.dumps(tiny_models.FAMILIES["clip"]))
    open_clip.add_model_config(config_dir)
    loaded = load_model("tiny-test-arch", str(tiny_model_dir / "open_clip_model.safetensors"))
    assert loaded.identity["weights"] and loaded.spec.pretrained.endswith(".safetensors")


@pytest.mark.parametrize("model", ["hf-hub:bad//id", "hf-hub:", "hf-hub:org/name/extra", "hf-hub:a b/c"])
def test_a_malformed_hub_id_is_one_line_before_any_download(model):
    from typer.testing import CliRunner

    from clipcli.cli import app

    result = CliRunner().invoke(app, ["classify", "x.jpg", "-m", model, "-l", "a,b"])
    assert result.exit_code == 2 and "a hub id is ORG/NAME" in result.output and "Traceback" not in result.output


# regression: `clip models` imported torch and built open_clip's models just to list the pretrained table (6-8 s)
def test_models_lists_open_clips_table_without_importing_torch():
    """`clip models` reads open_clip's pretrained table without building its models (6 s before, ~1 s now)."""
    import json as _json

    probe = ("import sys, json\nfrom clipcli.models import list_pretrained\nrows = list_pretrained()\n"
             "print(json.dumps([[r['architecture'], r['pretrained']] for r in rows]))\n"
             "print(json.dumps(sorted(m for m in ('torch', 'open_clip') if m in sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    listed, imported = (_json.loads(line) for line in result.stdout.splitlines())
    import open_clip

    assert [tuple(pair) for pair in listed] == list(open_clip.list_pretrained())
    assert imported == []


def test_weights_dir_is_where_weights_are_looked_up(tmp_path, monkeypatch):
    images = tmp_path / "x"
    draw(images, 1)
    weights = tmp_path / "weights"
    for how in (["--weights-dir", weights], []):
        monkeypatch.setenv("CLIPCLI_WEIGHTS_DIR", str(weights))
        result = cli("classify", images, "-l", "a,b", "-m", "ViT-B-32", "-p", "laion2b_s34b_b79k", *how)
        assert result.exit_code == 3 and str(weights) in result.stderr, result.output  # offline: not there


def test_model_errors_exit_3(images, tmp_path):
    image = str(images / "red_circle.png")
    cases = [
        (["--model", "ViT-B-33"], "unknown model architecture 'ViT-B-33'; did you mean"),
        (["--model", "ViT-B-32", "--pretrained", "nosuchtag"], "known tags for ViT-B-32: openai"),
        (["--model", f"local-dir:{tmp_path}"], "open_clip_config.json is missing"),
        (["--model", "ViT-B-32", "--pretrained", "openai"], "could not be downloaded"),
        (["--device", "cuda", "--model", "demo"], "no CUDA GPU"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["classify", image, "--labels", "a,b", *args])
        assert result.exit_code == 3, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_corrupt_checkpoint_is_a_model_error(tmp_path, images):
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 8}}')
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"garbage" * 100)
    result = CliRunner().invoke(app, ["classify", str(images / "red_circle.png"), "--model", f"local-dir:{tmp_path}",
                                      "--labels", LABELS])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: cannot load")
    assert "Traceback" not in result.output
