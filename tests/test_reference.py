"""The probabilities `clip classify --format json` prints equal an independent open_clip computation."""

import json

import open_clip
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.templates import load_template_set

LABELS = ["red circle", "blue square", "green star", "wonton", "小笼包"]


def reference_probabilities(model_dir, image_path, labels, templates):
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, labels, templates)
        image = preprocess(Image.open(image_path).convert("RGB")).unsqueeze(0)
        features = model.encode_image(image, normalize=True)
        return (model.logit_scale.exp() * features @ weights).softmax(dim=-1)[0].tolist()


@pytest.mark.parametrize("template_set", ["imagenet", "pets"])
def test_json_probabilities_match_open_clip(tiny_model_dir, images, template_set):
    image = images / "red_circle.png"
    result = CliRunner().invoke(app, [
        "classify", str(image), "--model", f"local-dir:{tiny_model_dir}", "--labels", ",".join(LABELS),
        "--templates", template_set, "--format", "json", "--top-k", "0", "--no-cache"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    predictions = document["results"][0]["predictions"]
    got = {p["label"]: p["score"] for p in predictions}

    expected = reference_probabilities(tiny_model_dir, image, LABELS, load_template_set(template_set).templates)
    assert set(got) == set(LABELS)
    for label, value in zip(LABELS, expected):
        assert got[label] == pytest.approx(value, abs=1e-5)
    assert [p["score"] for p in predictions] == sorted(got.values(), reverse=True)
    assert max(expected) - min(expected) > 1e-3  # the comparison is not between near-uniform vectors
    assert document["model"]["name"] == f"local-dir:{tiny_model_dir}"
    assert document["templates"] == template_set
    assert document["labels"] == LABELS
