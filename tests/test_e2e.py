"""The installed `clip` command in a subprocess, the way a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO
CLIP = shutil.which("clip", path=str(Path(sys.executable).parent)) or shutil.which("clip")


def clip(*args, input=None, cwd=None, timeout=180):
    assert CLIP, "the `clip` entry point is not installed (pip install '.[test]')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([CLIP, *args], capture_output=True, text=True, input=input, cwd=cwd, env=env,
                          timeout=timeout)


NO_TORCH = """
import sys
from clipcli.cli import main
sys.argv = ["clip", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "open_clip", "PIL", "numpy") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["classify", "--help"], ["templates"], ["templates", "food"], ["cache", "info"],
                                  ["classify", "x.jpg"], ["classify", "x.jpg", "--labels", "a", "--format", "xml"]])
def test_help_templates_and_argument_errors_do_not_import_torch(args):
    result = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=60)
    assert "HEAVY:\n" in result.stderr, result.stderr


def test_classify_demo_example_prints_ranked_table():
    result = clip("classify", str(REPO / "examples" / "red_circle.png"), "--model", "demo",
                  "--labels", "red circle,blue square,green star")
    assert result.returncode == 0, result.stderr
    rows = [[c.strip() for c in line.split("│")] for line in result.stdout.splitlines() if "│" in line]
    assert [row[1] for row in rows][0] == "red circle"
    assert float(rows[0][2]) >= 0.8


def test_json_from_the_installed_command_parses(images):
    result = clip("classify", str(images), "--model", "demo", "--labels", "red circle,blue square,green star",
                  "--format", "json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"]["name"] == "demo"
    top = {Path(r["path"]).name: r["predictions"][0]["label"] for r in document["results"]}
    assert top == {"red_circle.png": "red circle", "blue_square.jpg": "blue square", "green_star.webp": "green star"}


def test_usage_error_is_one_line_exit_2():
    result = clip("classify", "x.jpg")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ['error: no labels given; use --labels "cat,dog" or --labels-file labels.txt']
    assert result.stdout == ""


def test_installed_package_carries_templates_and_demo_model(tmp_path):
    # run from an empty folder so nothing can come from the source checkout
    code = ("import clipcli.templates as t, clipcli.models as m; "
            "print(t.bundled_dir()); print(m.demo_model_dir()); print(len(t.bundled_names()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    prompts_dir, model_dir, count = result.stdout.split()
    assert int(count) >= 15
    assert (Path(model_dir) / "open_clip_model.safetensors").is_file()
    assert (Path(prompts_dir) / "imagenet.yaml").is_file()


# regression: README's Python example failed (KeyError 'predictions') on the error record of an unreadable file
@pytest.mark.e2e
def test_readme_python_example_survives_an_unreadable_file(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 3)]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "red_circle.png").write_bytes((ROOT / "examples" / "red_circle.png").read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "broken.jpg could not be read" in result.stdout and "red_circle.png {'label'" in result.stdout
