"""A cache folder that cannot be written, and a damaged ONNX export in it (issue 30, item 7): the default backend
warns once and runs without the cache, as `--backend torch` does; a damaged export is rebuilt, never a traceback."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipcli.cli import app

pytest.importorskip("onnxruntime")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LABELS = "red circle,blue square,green star"


def classify(*extra, env=None):
    return CliRunner().invoke(app, ["classify", str(EXAMPLES / "red_circle.png"), str(EXAMPLES / "green_star.png"),
                                    "-m", "demo", "-l", LABELS, "-f", "json", "-k", "0", *map(str, extra)], env=env)


def scores(result) -> dict:
    assert result.exit_code == 0, result.output
    return {Path(r["path"]).name: {p["label"]: p["score"] for p in r["predictions"]}
            for r in json.loads(result.stdout)["results"]}


def assert_close(got: dict, want: dict, tolerance: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].keys() == want[name].keys()
        assert all(abs(got[name][label] - want[name][label]) <= tolerance for label in want[name]), name


@pytest.fixture(scope="module")
def torch_scores(tmp_path_factory):
    return scores(classify("--backend", "torch", "--cache-dir", tmp_path_factory.mktemp("torch-cache")))


def unwritable(kind: str, tmp_path: Path) -> tuple[list[str], dict | None]:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("a file where the cache folder should be\n")
    if kind == "--cache-dir file":
        return ["--cache-dir", str(a_file)], None
    if kind == "--cache-dir /proc":
        return ["--cache-dir", "/proc/self/clipcli-cache"], None
    return [], {"CLIPCLI_CACHE_DIR": str(a_file)}


@pytest.mark.fresh_exports
@pytest.mark.parametrize("kind", ["--cache-dir file", "--cache-dir /proc", "CLIPCLI_CACHE_DIR file"])
def test_an_unwritable_cache_folder_warns_and_runs_as_torch_does(kind, tmp_path, torch_scores):
    # issue 30 #7: the default ONNX backend died with NotADirectoryError from the export's mkdir
    args, env = unwritable(kind, tmp_path)
    result = classify(*args, env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: cache folder")]
    assert len(warnings) == 1 and "running on torch without the ONNX export" in warnings[0], result.stderr
    assert all(line.startswith("warning: ") for line in result.stderr.splitlines())
    assert_close(scores(result), torch_scores)


@pytest.mark.fresh_exports
def test_backend_onnx_with_an_unwritable_cache_is_one_line(tmp_path):
    # issue 30 #7: the same NotADirectoryError traceback when ONNX Runtime was asked for by name
    args, _ = unwritable("--cache-dir file", tmp_path)
    result = classify(*args, "--backend", "onnx")
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines() == [
        f"error: cannot write the ONNX export to the cache folder ({tmp_path / 'not-a-folder'}/onnx: Not a directory); "
        "use a writable --cache-dir (or $CLIPCLI_CACHE_DIR), or --backend torch"]


def export_folder(cache: Path) -> Path:
    folders = [p for p in (cache / "onnx").iterdir() if p.is_dir() and (p / "model.json").is_file()]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.mark.fresh_exports
@pytest.mark.parametrize("damage", ["image.onnx emptied", "text.onnx truncated", "model.json emptied"])
def test_a_damaged_onnx_export_is_rebuilt(damage, tmp_path, torch_scores):
    # issue 30 #7: an export file truncated to 0 bytes gave an onnxruntime traceback on every run until
    # `clip cache clear`
    cache = tmp_path / "cache"
    first = classify("--cache-dir", cache)
    assert_close(scores(first), torch_scores)
    folder = export_folder(cache)
    name, how = damage.split()
    target = folder / name
    size = target.stat().st_size
    with open(target, "r+b") as handle:
        handle.truncate(0 if how == "emptied" else size // 2)
    again = classify("--cache-dir", cache)
    assert again.exit_code == 0 and "Traceback" not in again.output, again.output
    why = "model.json is incomplete" if name == "model.json" else \
        f"{name} has {size // 2 if how == 'truncated' else 0} bytes instead of {size}"
    assert again.stderr.splitlines() == [f"warning: the ONNX export of demo in {folder} was damaged ({why}); "
                                         "rebuilding it"]
    assert_close(scores(again), torch_scores)
    assert target.stat().st_size == size  # rebuilt whole, in the same place
    assert [p.name for p in (cache / "onnx").iterdir() if p.name.startswith(".")] == []  # nothing left beside it
    third = classify("--cache-dir", cache)
    assert third.stderr == "" and scores(third) == scores(again)  # the rebuilt export is used as it is
