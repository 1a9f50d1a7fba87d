"""The library's shape: data flows one way, sources -> encoders -> embeddings -> scorers -> records -> sinks."""

from pathlib import Path


def test_library_modules_flow_one_way():
    """Nothing below the encoders imports a scorer; the leaf modules import nothing of clipcli."""
    import ast

    root = Path(__file__).parent.parent / "clipcli"

    def imports(module: str) -> set[str]:
        tree = ast.parse((root / f"{module}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.add((node.module or "").split(".")[0] or next(a.name for a in node.names))
        return found

    scorers = {"classifier", "scoring", "fewshot", "heads", "openset", "adapt", "evaluate", "run", "api"}
    for below in ("store", "images", "remote", "batches", "pipeline", "embeddings", "models", "preprocess", "video",
                  "frames", "shots", "moments"):
        assert not imports(below) & scorers, below
    assert imports("vectors") == set() and imports("paths") == set() and imports("options") == {"config", "errors"}
    assert "images" not in imports("remote")
    onnx_imports = {n for n in imports("backends/onnx")}
    assert not onnx_imports & scorers
