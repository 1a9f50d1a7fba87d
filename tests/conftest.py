import os
import shutil
import subprocess
import sys
from pathlib import Path

# Never touch the network, and never the user's real cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("CLIPCLI_MODEL", None)
os.environ.pop("CLIPCLI_PRETRAINED", None)

import tempfile  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from clipcli.cli import app  # noqa: E402
from clipcli.demo import shapes  # noqa: E402

# Never the user's cache, also for fixtures wider than one test (each test gets its own below).
os.environ["CLIPCLI_CACHE_DIR"] = tempfile.mkdtemp(prefix="clipcli-test-cache-")

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def _shared_exports(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-exports")


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch, _shared_exports):
    """A cache folder of the test's own.  ONNX exports of the (read-only) session models are shared between tests,
    except in tests marked `fresh_exports`, which are about exporting."""
    cache = tmp_path_factory.mktemp("cache")
    if request.node.get_closest_marker("fresh_exports") is None:
        (cache / "onnx").symlink_to(_shared_exports, target_is_directory=True)
    monkeypatch.setenv("CLIPCLI_CACHE_DIR", str(cache))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny_models.save_local_dir("clip", tmp_path_factory.mktemp("tiny") / "clip")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> str:
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """A folder of drawn shapes in several formats, one subfolder deep."""
    from clipcli.demo import shapes

    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    shapes.draw_pil("red", "circle", seed=1).save(folder / "red_circle.png")
    shapes.draw_pil("blue", "square", size=96, seed=2).save(folder / "blue_square.jpg", quality=95)
    shapes.draw_pil("green", "star", seed=3).save(folder / "sub" / "green_star.webp")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


@pytest.fixture
def shapes_dir(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shapes.draw_pil("red", "circle", seed=1).save(folder / "red_circle.png")
    shapes.draw_pil("blue", "square", seed=2).save(folder / "blue_square.png")
    return folder


@pytest.fixture
def run(tiny_model):
    def invoke(*args, input=None):
        return CliRunner().invoke(app, ["classify", *args, "--model", tiny_model], input=input)
    return invoke


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KB filesystem (needs root and mount; skipped elsewhere), unmounted afterwards."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
