"""Reading images: decoded by content, huge files reduced, every mode made RGB, first frames, EXIF orientation,
fuzzed bytes; and bad files in a batch (a corpus the tests make themselves), each one stderr line naming it, an
error record and exit code 1, with the good files still classified; file names in any encoding."""

import io
import json
import os
import random

import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.demo import shapes
from clipcli.errors import ImageReadError
from clipcli.images import open_image

LABELS = "red circle,blue square"


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def make_bad(kind: str, folder) -> tuple[str, str]:
    """Create one bad input; returns (path, expected error type)."""
    photo = shapes.draw_pil("red", "circle", size=128, seed=5)
    if kind == "truncated_jpeg":
        path = folder / "cut.jpg"
        path.write_bytes(png_bytes(photo, "JPEG")[:1500])
        return str(path), "truncated"
    if kind == "truncated_png":
        path = folder / "cut.png"
        path.write_bytes(png_bytes(photo)[:3000])
        return str(path), "truncated"
    if kind == "zero_bytes":
        path = folder / "empty.png"
        path.write_bytes(b"")
        return str(path), "not_an_image"
    if kind == "text_as_jpeg":
        path = folder / "notes.jpg"
        path.write_text("shopping list: dumplings\n")
        return str(path), "not_an_image"
    if kind == "random_bytes":
        path = folder / "noise.webp"
        path.write_bytes(random.Random(1).randbytes(5000))
        return str(path), "not_an_image"
    if kind == "bomb":
        path = folder / "bomb.png"
        Image.new("1", (6000, 6000)).save(path)  # 36 MP, tiny on disk
        return str(path), "too_large"
    if kind == "broken_symlink":
        path = folder / "gone.jpg"
        os.symlink(folder / "does-not-exist.jpg", path)
        return str(path), "broken_symlink"
    if kind == "missing":
        return str(folder / "missing.png"), "not_found"
    if kind == "directory_named_like_image":
        path = folder / "album.jpg"
        path.mkdir()
        return str(path / "inner.png"), "not_found"
    raise ValueError(kind)


BAD_KINDS = ["truncated_jpeg", "truncated_png", "zero_bytes", "text_as_jpeg", "random_bytes", "bomb",
             "broken_symlink", "missing", "directory_named_like_image"]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_bad_file_gives_message_record_and_exit_1(tiny_model, images, tmp_path, kind, fmt):
    bad, expected_type = make_bad(kind, tmp_path)
    good = str(images / "red_circle.png")
    result = CliRunner().invoke(app, ["classify", good, bad, str(images / "blue_square.jpg"), "--model", tiny_model,
                                      "--labels", LABELS, "--format", fmt, "--max-megapixels", "20"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: ")
    if fmt == "jsonl":
        records = [json.loads(line) for line in result.stdout.splitlines()]
    elif fmt == "json":
        records = json.loads(result.stdout)["results"]
    else:
        from clipcli.results import read_csv_records
        records = read_csv_records(result.stdout)
    assert [r["path"] for r in records] == [good, bad, str(images / "blue_square.jpg")]
    assert records[1]["error"]["type"] == expected_type
    assert records[1]["error"]["message"]
    assert "predictions" in records[0] and "predictions" in records[2]


def test_permission_denied_is_reported_and_the_rest_classified(monkeypatch, tiny_model, images, tmp_path):
    # Tests may run as root, where chmod 000 does not stop reads; make the OS answer "permission denied".
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(Image.new("RGB", (8, 8))))
    real_open = Image.open

    def open_or_deny(path, *args, **kwargs):
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_or_deny)
    result = CliRunner().invoke(app, ["classify", str(images / "red_circle.png"), str(secret), "--model", tiny_model,
                                      "--labels", LABELS, "--format", "jsonl", "--workers", "0"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[1] == {"path": str(secret), "error": {"type": "permission_denied", "message": "permission denied"}}
    assert "predictions" in records[0]
    assert f"error: {secret}: permission denied" in result.stderr


def test_eval_reports_bad_files_and_scores_the_rest(tiny_model, tmp_path):
    for folder in ("cat", "dog"):
        (tmp_path / folder).mkdir()
        shapes.draw_pil("red", "circle", seed=len(folder)).save(tmp_path / folder / "good.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--model", tiny_model, "--format", "json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert [e["error"]["type"] for e in document["errors"]] == ["not_an_image"]
    assert document["results"][0]["count"] == 2
    assert f"error: {tmp_path / 'dog' / 'broken.jpg'}: not an image" in result.stderr


def test_unicode_and_non_utf8_names(tiny_model, tmp_path):
    unicode_name = tmp_path / "小笼包 \"quoted\", comma.png"
    shapes.draw_pil("red", "circle").save(unicode_name)
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(raw, "wb") as handle:
        handle.write(png_bytes(shapes.draw_pil("blue", "square")))
    result = CliRunner().invoke(app, ["classify", str(tmp_path), "--model", tiny_model, "--labels", LABELS,
                                      "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert str(unicode_name) in paths
    assert f"{tmp_path}/caf\\xe9.png" in paths  # undecodable bytes shown as \x escapes, never mangled into '?'


def test_wrong_extension_is_decoded_by_content(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(png_bytes(Image.new("RGB", (10, 6), (0, 0, 255))))
    image = open_image(str(path))
    assert image.size == (10, 6) and image.getpixel((0, 0)) == (0, 0, 255)


def test_huge_jpeg_is_decoded_reduced(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (8000, 6000), (10, 200, 10)).save(path, quality=70)
    image = open_image(str(path), max_megapixels=100, min_size=224)
    assert image.size == (1000, 750)
    assert open_image(str(path), max_megapixels=100).size == (4000, 3000)  # 48 MP: reduced even without asking


def rgb_at(image, xy):
    return image.convert("RGB").getpixel(xy)


def mode_cases():
    base = Image.new("RGB", (40, 30), (200, 20, 20))
    rgba = Image.new("RGBA", (40, 30), (200, 20, 20, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    palette = base.convert("P", palette=Image.ADAPTIVE)
    palette.info["transparency"] = palette.getpixel((0, 0))
    sixteen = Image.new("I;16", (40, 30), 32768)
    return {
        "grayscale.png": (base.convert("L"), None),
        "sixteen_bit.png": (sixteen, None),
        "cmyk.jpg": (base.convert("CMYK"), None),
        "palette_transparent.png": (palette, None),
        "rgba.png": (rgba, None),
        "la.png": (base.convert("LA"), None),
    }


@pytest.mark.parametrize("name", sorted(mode_cases()))
def test_image_modes_become_rgb(tmp_path, name):
    image, _ = mode_cases()[name]
    path = tmp_path / name
    image.save(path)
    loaded = open_image(str(path))
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    if name == "sixteen_bit.png":
        assert rgb_at(loaded, (5, 5)) == (128, 128, 128)  # scaled from 16 bits, not clipped to white
    if name in ("rgba.png", "palette_transparent.png"):
        assert rgb_at(loaded, (0, 0)) == (255, 255, 255)  # transparent pixels composited over white
        assert rgb_at(loaded, (5, 5))[0] > 150


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_animations_and_multipage_use_the_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    path = tmp_path / f"multi.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "WEBP" else {}))
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    red, green, blue = rgb_at(open_image(str(path)), (8, 8))
    assert red > 200 and green < 40 and blue < 40


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_end_upright(tmp_path, orientation):
    upright = Image.new("RGB", (60, 40), (0, 0, 0))
    upright.paste((255, 0, 0), (0, 0, 30, 20))  # red block top-left marks which way is up
    # what a camera stores for each orientation: the inverse of the transform exif_transpose applies
    stored_for = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
    transform = stored_for[orientation]
    stored = upright.transpose(transform) if transform is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)
    loaded = open_image(str(path))
    assert loaded.size == (60, 40)
    assert rgb_at(loaded, (5, 5))[0] > 200 and rgb_at(loaded, (55, 35))[0] < 60
    assert ImageOps.exif_transpose(Image.open(path)).size == (60, 40)


def test_fuzzed_bytes_only_give_images_or_our_error(tmp_path):
    rng = random.Random(1234)
    seeds = [png_bytes(shapes.draw_pil("red", "circle", size=32), fmt, **kw)
             for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("WEBP", {}), ("BMP", {}),
                             ("TIFF", {}))]
    outcomes = {"image": 0, "error": 0}
    for case in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 12)):
            action = rng.random()
            position = rng.randrange(len(data))
            if action < 0.6:
                data[position] = rng.randrange(256)
            elif action < 0.8:
                del data[position:position + rng.randint(1, 64)]
            else:
                data[position:position] = rng.randbytes(rng.randint(1, 64))
        if case % 10 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 400)))
        path = tmp_path / f"fuzz{case}.bin"
        path.write_bytes(bytes(data))
        try:
            image = open_image(str(path), max_megapixels=50, min_size=16)
        except ImageReadError:
            outcomes["error"] += 1
        else:
            assert image.mode == "RGB"
            outcomes["image"] += 1
    assert outcomes["image"] > 0 and outcomes["error"] > 0
