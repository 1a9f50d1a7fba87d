"""The command line through typer's runner: formats parsed back, messages and exit codes."""

import json

import pytest
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.results import read_csv_records

LABELS = "red circle,blue square,green star"


@pytest.fixture
def run(tiny_model):
    def invoke(*args, input=None):
        return CliRunner().invoke(app, ["classify", *args, "--model", tiny_model], input=input)
    return invoke


def paths_in(records):
    return [r["path"].rsplit("/", 1)[-1] for r in records]


def test_table_output_ranks_labels(run, images):
    result = run(str(images / "red_circle.png"), "--labels", LABELS)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "│" in line]
    assert len(lines) == 3
    probabilities = [float(line.split("│")[2]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    assert "red_circle.png" in "".join(result.stdout.split())  # a long temporary path wraps in the title


def test_folder_recursion_jsonl_skips_hidden_and_non_images(run, images):
    result = run(str(images), "--labels", LABELS, "--format", "jsonl", "--top-k", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert paths_in(records) == ["blue_square.jpg", "red_circle.png", "green_star.webp"]
    for record in records:
        assert len(record["predictions"]) == 2
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_no_recursive(run, images):
    result = run(str(images), "--labels", LABELS, "--format", "jsonl", "--no-recursive")
    assert paths_in(json.loads(line) for line in result.stdout.splitlines()) == ["blue_square.jpg", "red_circle.png"]


def test_json_document_and_csv_agree(run, images):
    as_json = run(str(images), "--labels", LABELS, "--format", "json", "--top-k", "0")
    as_csv = run(str(images), "--labels", LABELS, "--format", "csv", "--top-k", "0")
    assert as_json.exit_code == 0 and as_csv.exit_code == 0
    document = json.loads(as_json.stdout)
    assert document["labels"] == LABELS.split(",")
    assert document["templates"] == "imagenet"
    assert as_csv.stdout.splitlines()[0] == "path,rank,label,score,error_type,error_message"
    from_csv = read_csv_records(as_csv.stdout)
    assert len(from_csv) == 3
    for a, b in zip(document["results"], from_csv):
        assert a["path"] == b["path"]
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["score"] for p in a["predictions"]] == pytest.approx([p["score"] for p in b["predictions"]], abs=0)


def test_files_from_stdin(run, images):
    listing = f"{images / 'red_circle.png'}\n{images / 'sub' / 'green_star.webp'}\n"
    result = run("--files-from", "-", "--labels", LABELS, "--format", "jsonl", input=listing)
    assert result.exit_code == 0, result.output
    assert paths_in(json.loads(line) for line in result.stdout.splitlines()) == ["red_circle.png", "green_star.webp"]


def test_glob_input(run, images):
    result = run(str(images / "*.png"), "--labels", LABELS, "--format", "jsonl")
    assert paths_in(json.loads(line) for line in result.stdout.splitlines()) == ["red_circle.png"]


def test_bad_file_is_reported_and_skipped(run, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    result = run(str(images / "red_circle.png"), str(bad), str(tmp_path / "missing.png"),
                 "--labels", LABELS, "--format", "jsonl")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "predictions" in records[0]
    assert records[1]["error"]["type"] == "not_an_image"
    assert records[2]["error"] == {"type": "not_found", "message": "file not found"}
    assert f"error: {bad}: not an image" in result.stderr
    assert "Traceback" not in result.output


def test_output_file_is_written(run, images, tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old content\n")
    result = run(str(images), "--labels", LABELS, "--format", "jsonl", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert len([json.loads(line) for line in target.read_text().splitlines()]) == 3
    assert not list(tmp_path.glob(".out.jsonl.*"))


@pytest.mark.parametrize("args,message", [
    ([], "no labels given"),
    (["--labels", "a,b", "--templates", "nope"], "unknown template set 'nope'"),
    (["--labels", "a,b", "--format", "xml"], "unknown --format 'xml'"),
    (["--labels", "a,b", "--labels-file", "x.txt"], "either --labels or --labels-file"),
])
def test_usage_errors_exit_2_with_one_line(run, images, args, message):
    result = run(str(images / "red_circle.png"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_no_inputs_is_a_usage_error(run):
    result = run("--labels", "a,b")
    assert result.exit_code == 2
    assert "no images given" in result.stderr


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


def test_sigmoid_needs_a_logit_bias(run, images):
    result = run(str(images / "red_circle.png"), "--labels", "a,b", "--score", "sigmoid")
    assert result.exit_code == 2
    assert "--score sigmoid needs a model trained with a sigmoid loss" in result.stderr


def test_templates_command_lists_and_shows():
    listing = CliRunner().invoke(app, ["templates"])
    assert listing.exit_code == 0
    cells = [[c.strip() for c in line.split("│")] for line in listing.stdout.splitlines() if "│" in line]
    rows = {row[0]: row[1] for row in cells[1:]}
    assert rows["imagenet"] == "80" and rows["pets"] == "1"
    assert len(rows) >= 15
    shown = CliRunner().invoke(app, ["templates", "pets"])
    assert "a photo of a {}, a type of pet." in shown.stdout


@pytest.mark.parametrize("command", [[], ["classify"], ["templates"], ["cache"], ["cache", "info"], ["cache", "clear"]])
def test_every_help_works(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_output_to_a_device_is_written_in_place(run, images):
    result = run(str(images / "red_circle.png"), "--labels", LABELS, "--format", "jsonl", "-o", "/dev/null")
    assert result.exit_code == 0
    import os
    import stat
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device, not a file renamed over it
