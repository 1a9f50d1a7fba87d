"""Hostile inputs and environments: special files, symlink loops, folders that cannot be listed, a full disk,
YAML bombs, crafted head files and a closed pipe.  Each ends in one line on stderr and an exit code (or an
error record, with the rest of the batch done), never a hang, a traceback or a leaked temporary file."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.demo import shapes

LABELS = "red circle,blue square,green star"
BILLION_LAUGHS = "\n".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)])


def cli(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def clip(*args, timeout=120, **kwargs):
    """The command in a subprocess, with a timeout so a regression that hangs fails instead of hanging."""
    return subprocess.run([sys.executable, "-m", "clipcli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def shapes_dir(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shapes.draw_pil("red", "circle", seed=1).save(folder / "red_circle.png")
    shapes.draw_pil("blue", "square", seed=2).save(folder / "blue_square.png")
    return folder


# --- 1. special files ------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("command", ["classify", "embed", "sort"])
def test_fifo_named_like_an_image_is_an_error_record(shapes_dir, tmp_path, command):
    fifo = shapes_dir / "x.jpg"
    os.mkfifo(fifo)
    args = {"classify": ["classify", shapes_dir, "-l", LABELS, "-f", "jsonl"],
            "embed": ["embed", shapes_dir, "--store", tmp_path / "store"],
            "sort": ["sort", shapes_dir, "-l", LABELS, "--into", tmp_path / "sorted", "--dry-run", "-f", "jsonl"]}
    result = clip(*args[command], "-m", "demo", "--quiet", timeout=60)
    assert result.returncode == 1, result.stderr
    assert error_lines(result.stderr) == [f"error: {fifo}: is a FIFO (named pipe), not a regular file"]
    assert "Traceback" not in result.stderr
    if command == "classify":
        records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
        assert records["x.jpg"]["error"]["type"] == "not_a_file"
        assert "predictions" in records["red_circle.png"] and "predictions" in records["blue_square.png"]
    elif command == "embed":
        assert "2 encoded, 1 unreadable" in result.stderr
    else:
        operations = {Path(r["source"]).name: r["operation"] for r in map(json.loads, result.stdout.splitlines())}
        assert operations == {"x.jpg": "error", "red_circle.png": "copy", "blue_square.png": "copy"}


def test_devices_are_refused_without_reading_them():
    from clipcli.errors import ImageReadError
    from clipcli.images import read_image

    if os.path.exists("/dev/null"):
        with pytest.raises(ImageReadError, match="is a character device, not a regular file"):
            read_image("/dev/null")


# --- 2. symlink loops ------------------------------------------------------------------------------------

def test_looping_symlinks_are_per_file_errors(shapes_dir):
    os.symlink("self.png", shapes_dir / "self.png")
    os.symlink("b.png", shapes_dir / "a.png")
    os.symlink("a.png", shapes_dir / "b.png")
    (shapes_dir / "sub").mkdir()
    os.symlink("..", shapes_dir / "sub" / "loop")
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl")
    assert result.exit_code == 1, result.output
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(records) == ["a.png", "b.png", "blue_square.png", "red_circle.png", "self.png"]
    for name in ("a.png", "b.png", "self.png"):
        assert records[name]["error"] == {"type": "symlink_loop",
                                          "message": "symlink loop (too many levels of symbolic links)"}
    assert len(error_lines(result.stderr)) == 3 and "Traceback" not in result.output


# --- 3. folders that cannot be listed ---------------------------------------------------------------------

def deny_listing(monkeypatch, folder):
    """Tests run as root, where chmod 000 does not stop reads: make the OS answer "permission denied"."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unlistable_subfolder_is_reported_and_the_rest_classified(monkeypatch, shapes_dir):
    secret = shapes_dir / "secret"
    secret.mkdir()
    shapes.draw_pil("green", "star").save(secret / "green_star.png")
    deny_listing(monkeypatch, secret)
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl", "--workers", "0")
    assert result.exit_code == 1, result.output
    assert error_lines(result.stderr) == [f"error: {secret}: cannot list folder: permission denied"]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {"path": str(secret), "error": {"type": "permission_denied",
                                           "message": "cannot list folder: permission denied"}} in records
    assert sum("predictions" in r for r in records) == 2


def test_unlistable_top_folder_says_permission_denied(monkeypatch, shapes_dir):
    deny_listing(monkeypatch, shapes_dir)
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS)
    assert result.exit_code == 2
    assert result.stderr == f"error: cannot list {shapes_dir}: permission denied\n"


# --- 4. a full disk --------------------------------------------------------------------------------------

def many_labels(count=60):
    return ",".join(f"label number {i} with a long name" for i in range(count))


def test_disk_full_while_writing_output_is_one_line_and_leaves_no_temp_file(monkeypatch, shapes_dir, tmp_path):
    from clipcli import results

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "out.jsonl"

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.JsonLinesWriter, "write", full)
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-o", target)
    assert result.exit_code == 5, result.output
    assert result.stderr == f"error: cannot write {target}: no space left on device\n"
    assert list(out_dir.iterdir()) == []


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


def test_disk_full_on_a_real_filesystem(tiny_tmpfs, shapes_dir):
    for i in range(30):
        shutil.copy(shapes_dir / "red_circle.png", shapes_dir / f"copy{i}.png")
    target = tiny_tmpfs / "out.json"
    result = clip("classify", shapes_dir, "-m", "demo", "-l", many_labels(), "-k", "0", "-f", "json",
                  "--templates", "simple", "-o", target)
    assert result.returncode == 5, result.stderr
    assert result.stderr == f"error: cannot write {target}: no space left on device\n"
    assert list(tiny_tmpfs.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_standard_output_on_a_full_device(shapes_dir):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "clipcli", "classify", str(shapes_dir), "-m", "demo",
                                 "-l", many_labels(), "-k", "0", "-f", "json", "--templates", "simple"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 5, result.stderr
    assert result.stderr == "error: cannot write standard output: no space left on device\n"


# --- 5. YAML: aliases, size and shapes -------------------------------------------------------------------

def limited_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("option", ["--labels-file", "--templates"])
def test_yaml_alias_bomb_is_refused_quickly(shapes_dir, tmp_path, option):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS if option == "--labels-file" else f"{BILLION_LAUGHS}\ntemplates: *l8\n")
    args = [option, bomb] + (["-l", LABELS] if option == "--templates" else [])
    result = clip("classify", shapes_dir / "red_circle.png", "-m", "demo", *args, timeout=60,
                  preexec_fn=limited_memory)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"error: {bomb}:2: malformed YAML (aliases such as *l0 are not allowed)\n"


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


# --- 6. crafted head files -------------------------------------------------------------------------------

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


# --- 7. a closed pipe ------------------------------------------------------------------------------------

def test_table_to_a_closed_pipe_exits_0(shapes_dir):
    for i in range(6):
        shutil.copy(shapes_dir / "red_circle.png", shapes_dir / f"copy{i}.png")
    command = (f"set -o pipefail; {sys.executable} -m clipcli classify {shapes_dir} -m demo -l '{LABELS}' "
               "-f table --batch-size 1 --templates simple | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
