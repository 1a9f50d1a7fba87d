"""`clip tag`: keywords in XMP sidecars and embedded metadata, read back by exiftool (an independent reader);
merging keeps every foreign tag, reruns are idempotent, a relabel replaces only ours, undo is byte for byte,
bad sidecars are one error each, and a real `clip tag` killed with SIGKILL mid-run is finished by a rerun and
still undone."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipcli.demo import shapes
from clipcli.tagging import FORMS, TagRules, XmpText, merge, wanted
from cli_helpers import cli

LABELS = "red circle,blue square,green star"
KINDS = [("red", "circle"), ("blue", "square"), ("green", "star")]
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (Debian: "
                                    "libimage-exiftool-perl); it is the independent reader of what clip tag writes")

HAND_WRITTEN = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <!-- written by hand: a darktable-style sidecar with the user's own keywords -->
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmp:Rating="4"
    darktable:xmp_version="5">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
     <rdf:li>Grandma &amp; me</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|Lisbon</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">At the sea</rdf:li>
    </rdf:Alt>
   </dc:title>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000803f"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""
OURS = ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList", "IPTC:Keywords")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (a symlink: its text) under root."""
    return {str(p.relative_to(root)): ("link:" + os.readlink(p) if p.is_symlink() else digest(p))
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def tag(*args):
    """`clip tag ... -f json` with the demo model: the exit code and the parsed document (None if no JSON)."""
    result = cli("tag", *args, "-m", "demo", "-f", "json", "-q")
    try:
        return result, json.loads(result.stdout)
    except ValueError:
        return result, None


def exiftool(*paths: Path) -> list[dict]:
    out = subprocess.run([EXIFTOOL, "-j", "-G1", "-a", "-struct", *map(str, paths)], capture_output=True,
                         text=True, timeout=120)
    return json.loads(out.stdout)


def as_list(value) -> list:
    return [] if value is None else [str(v) for v in (value if isinstance(value, list) else [value])]


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def chosen(document: dict) -> dict[str, list[str]]:
    """image name -> the labels the run chose, from the CLI's own JSON."""
    return {Path(r["path"]).name: [p["label"] for p in r["labels"]] for r in document["results"]}


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Each test in its own folder: a run without --manifest journals into ./clip-tag-<timestamp>.jsonl."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def photos(tmp_path):
    """Drawn shapes the demo model knows, as JPEG and PNG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (colour, kind) in enumerate(KINDS):
        shapes.draw_pil(colour, kind, size=64, seed=i).save(folder / f"{colour}_{kind}.png")
        shapes.draw_pil(colour, kind, size=64, seed=10 + i).convert("RGB").save(folder / f"{colour}_{kind}.jpg",
                                                                                 quality=92)
    return folder


# --- the pure parts -------------------------------------------------------------------------------------------------
def test_merge_removes_only_what_clipcli_added():
    current = {"subject": ["holiday", "red circle", "blue square"],
               "hierarchical": ["places|Lisbon", "clip|blue square"]}
    ours = {"subject": ["blue square"], "hierarchical": ["clip|blue square"]}  # the user had "red circle" already
    changes = merge(current, ours, wanted(["red circle"], "clip"))
    assert changes["subject"].remove == ["blue square"] and changes["subject"].add == []
    assert changes["subject"].ours == []  # "red circle" stays the user's, so a later relabel keeps it
    assert changes["hierarchical"].remove == ["clip|blue square"] and changes["hierarchical"].add == ["clip|red circle"]
    assert changes["tagslist"].add == ["clip/red circle"] and changes["tagslist"].ours == ["clip/red circle"]
    again = merge(current, ours, wanted(["blue square"], "clip"))
    assert again["subject"].remove == [] and again["subject"].add == [] and again["subject"].ours == ["blue square"]


def test_labels_chosen_softmax_sigmoid_and_other():
    record = {"predictions": [{"label": "a", "score": 0.6}, {"label": "b", "score": 0.3}, {"label": "c", "score": 0.1}]}
    assert [p["label"] for p in TagRules().chosen(record)] == ["a"]
    assert [p["label"] for p in TagRules(top_k=2).chosen(record)] == ["a", "b"]
    assert [p["label"] for p in TagRules(top_k=0, min_score=0.2).chosen(record)] == ["a", "b"]
    assert TagRules(min_score=0.7).chosen(record) == []
    sigmoid = {"predictions": [{"label": "a", "score": 0.9}, {"label": "b", "score": 0.8},
                               {"label": "c", "score": 0.2}]}
    assert [p["label"] for p in TagRules(score="sigmoid").chosen(sigmoid)] == ["a", "b"]  # each on its own, >= 0.5
    other = {"predictions": [{"label": "other", "score": 0.4}, *record["predictions"]]}
    assert TagRules(other_label="other").chosen(other) == []
    assert [p["label"] for p in TagRules(other_label="other").chosen(record)] == ["a"]


# --- sidecars -------------------------------------------------------------------------------------------------------
@needs_exiftool
def test_new_sidecars_read_by_exiftool(photos):
    result, document = tag(photos, "-l", LABELS)
    assert result.exit_code == 0, result.output
    picked = chosen(document)
    assert len(picked) == 6 and all(len(labels) == 1 for labels in picked.values())
    assert picked["red_circle.png"] == ["red circle"] and picked["blue_square.jpg"] == ["blue square"]
    sidecars = sorted(photos.glob("*.xmp"))
    assert [p.name for p in sidecars] == sorted(f"{name}.xmp" for name in picked)  # darktable's IMG.JPG.xmp
    for meta in exiftool(*sidecars):
        label = picked[Path(meta["SourceFile"]).name.removesuffix(".xmp")][0]
        assert as_list(meta["XMP-dc:Subject"]) == [label]
        assert as_list(meta["XMP-lr:HierarchicalSubject"]) == [f"clip|{label}"]
        assert as_list(meta["XMP-digiKam:TagsList"]) == [f"clip/{label}"]
    assert {op["operation"] for op in document["results"]} == {"create"}


@needs_exiftool
def test_merge_keeps_foreign_tags_rerun_is_idempotent_relabel_replaces_only_ours(photos):
    mine = photos / "red_circle.png.xmp"  # the user's keywords, other namespaces, a comment, darktable's history
    mine.write_text(HAND_WRITTEN, encoding="utf-8")
    theirs = photos / "blue_square.png.xmp"  # the user's own keyword equals the label the run will choose
    theirs.write_text(HAND_WRITTEN.replace("<rdf:li>holiday</rdf:li>", "<rdf:li>blue square</rdf:li>"), "utf-8")
    before = {p: exiftool(p)[0] for p in (mine, theirs)}
    result, document = tag(photos / "red_circle.png", photos / "blue_square.png", "-l", LABELS, "--manifest",
                           photos.parent / "journal.jsonl")
    assert result.exit_code == 0, result.output
    assert chosen(document) == {"red_circle.png": ["red circle"], "blue_square.png": ["blue square"]}
    # every byte of the hand-written file is still there, line by line and in order
    lines, written = iter(mine.read_text("utf-8").splitlines()), mine.read_text("utf-8")
    assert all(any(line == kept for kept in lines) for line in HAND_WRITTEN.splitlines()), written
    after = exiftool(mine)[0]
    for key, value in before[mine].items():  # every other tag, in meaning
        if key not in OURS and not key.startswith("System:"):
            assert after[key] == value, key
    assert as_list(after["XMP-dc:Subject"]) == ["holiday", "Grandma & me", "red circle"]
    assert as_list(after["XMP-lr:HierarchicalSubject"]) == ["places|Lisbon", "clip|red circle"]
    assert as_list(after["XMP-digiKam:TagsList"]) == ["clip/red circle"]
    assert after["XMP-xmp:Rating"] == 4 and after["XMP-dc:Title"] == "At the sea"
    assert as_list(exiftool(theirs)[0]["XMP-dc:Subject"]) == ["blue square", "Grandma & me"]  # not added twice

    # a rerun: nothing to do, every byte the same, no file even rewritten
    snapshot, stamps = tree(photos), {p: p.stat().st_mtime_ns for p in photos.glob("*.xmp")}
    result, document = tag(photos / "red_circle.png", photos / "blue_square.png", "-l", LABELS)
    assert result.exit_code == 0 and {op["operation"] for op in document["results"]} == {"unchanged"}
    assert tree(photos) == snapshot and {p: p.stat().st_mtime_ns for p in photos.glob("*.xmp")} == stamps

    # a relabel: only the tags clipcli wrote are replaced; the user's "blue square" stays theirs
    result, document = tag(photos / "red_circle.png", photos / "blue_square.png", "-l", "round thing,flat thing")
    assert result.exit_code == 0, result.output
    new = chosen(document)
    red, blue = exiftool(mine)[0], exiftool(theirs)[0]
    assert as_list(red["XMP-dc:Subject"]) == ["holiday", "Grandma & me", *new["red_circle.png"]]
    assert as_list(red["XMP-lr:HierarchicalSubject"]) == ["places|Lisbon",
                                                          *(f"clip|{x}" for x in new["red_circle.png"])]
    assert as_list(red["XMP-digiKam:TagsList"]) == [f"clip/{x}" for x in new["red_circle.png"]]
    assert as_list(blue["XMP-dc:Subject"]) == ["blue square", "Grandma & me", *new["blue_square.png"]]
    record = {Path(r["path"]).name: r for r in document["results"]}["red_circle.png"]
    assert record["remove"] == ["red circle"] and record["add"] == new["red_circle.png"]
    assert "places|Lisbon" in mine.read_text("utf-8") and "darktable:history" in mine.read_text("utf-8")


def test_dry_run_lists_gains_and_losses_and_writes_nothing(photos, tmp_path):
    first, document = tag(photos, "-l", LABELS)
    assert first.exit_code == 0
    prior = chosen(document)
    snapshot = tree(photos)
    result, document = tag(photos, "-l", "red circle,blue square,green star,round thing", "--top-k", "2",
                           "--dry-run", "--manifest", tmp_path / "never.jsonl")
    assert result.exit_code == 0, result.output
    assert tree(photos) == snapshot and not (tmp_path / "never.jsonl").exists()
    assert document["dry_run"] is True
    for record in document["results"]:
        labels, before = [p["label"] for p in record["labels"]], prior[Path(record["path"]).name]
        assert len(labels) == 2 and record["add"] == [x for x in labels if x not in before]
        assert record["remove"] == [x for x in before if x not in labels]
        assert record["operation"] == ("update" if record["add"] or record["remove"] else "unchanged")
    table = cli("tag", photos, "-m", "demo", "-l", "round thing,flat thing", "--dry-run")
    assert table.exit_code == 0 and "dry run: nothing was changed" in table.stdout and "would update" in table.stdout
    csv_out = cli("tag", photos, "-m", "demo", "-l", "round thing,flat thing", "-n", "-f", "csv", "-q")
    rows = csv_out.stdout.splitlines()
    assert rows[0] == "path,target,kind,operation,labels,add,remove,note" and len(rows) == 7


def test_sidecar_naming_and_shared_sidecars(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    shapes.draw_pil("red", "circle", size=64, seed=1).save(folder / "IMG_1.png")
    shapes.draw_pil("red", "circle", size=64, seed=2).convert("RGB").save(folder / "IMG_1.jpg")
    shapes.draw_pil("blue", "square", size=64, seed=3).save(folder / "IMG_2.png")
    (folder / "IMG_2.xmp").write_text(HAND_WRITTEN, "utf-8")  # digiKam's name, already there: the one updated
    result, document = tag(folder / "IMG_2.png", "-l", LABELS)
    assert result.exit_code == 0 and not (folder / "IMG_2.png.xmp").exists()
    assert "clip|blue square" in (folder / "IMG_2.xmp").read_text("utf-8")
    result, document = tag(folder / "IMG_1.png", folder / "IMG_1.jpg", "-l", LABELS, "--sidecar-name", "digikam")
    assert result.exit_code == 1
    ops = {Path(r["path"]).name: r for r in document["results"]}
    assert ops["IMG_1.png"]["operation"] == "create" and ops["IMG_1.png"]["target"].endswith("/IMG_1.xmp")
    assert ops["IMG_1.jpg"]["operation"] == "error" and "is also the sidecar of" in ops["IMG_1.jpg"]["note"]
    assert len(errors(result)) == 1 and "--sidecar-name darktable" in errors(result)[0]
    bad = cli("tag", folder, "-m", "demo", "-l", LABELS, "--sidecar-name", "lightroom")
    assert bad.exit_code == 2 and "unknown --sidecar-name 'lightroom'" in bad.stderr


def test_other_images_get_no_label_and_lose_ours(photos):
    assert tag(photos / "red_circle.png", "-l", LABELS)[0].exit_code == 0
    assert "clip|red circle" in (photos / "red_circle.png.xmp").read_text("utf-8")
    result, document = tag(photos / "red_circle.png", "-l", LABELS, "--other", "--other-threshold", "0")
    assert result.exit_code == 0, result.output
    record = document["results"][0]
    assert record["labels"] == [] and record["remove"] == ["red circle"] and record["operation"] == "update"
    assert "red circle" not in (photos / "red_circle.png.xmp").read_text("utf-8")


@needs_exiftool
def test_sigmoid_decides_each_label_on_its_own(photos, tmp_path_factory):
    import tiny_models

    model = f"local-dir:{tiny_models.save_local_dir('siglip', tmp_path_factory.mktemp('siglip'))}"
    images = sorted(photos.glob("*.png"))
    scores = json.loads(cli("classify", *images, "-m", model, "-l", LABELS, "--score", "sigmoid", "-k", "0",
                            "-f", "json", "-q").stdout)["results"]
    every = sorted(p["score"] for r in scores for p in r["predictions"])
    floor = every[len(every) // 2]  # about half the (image, label) pairs pass, whatever the random model says
    result = cli("tag", *images, "-m", model, "-l", LABELS, "--score", "sigmoid", "--min-score", floor, "-q")
    assert result.exit_code == 0, result.output
    for record, meta in zip(scores, exiftool(*(Path(r["path"] + ".xmp") for r in scores))):
        expected = {p["label"] for p in record["predictions"] if p["score"] >= floor}
        assert set(as_list(meta.get("XMP-dc:Subject"))) == expected, record
    refused = cli("tag", *images, "-m", "demo", "-l", LABELS, "--score", "sigmoid")
    assert refused.exit_code == 2 and "--score sigmoid needs a model trained with a sigmoid loss" in refused.stderr


# --- undo -----------------------------------------------------------------------------------------------------------
def test_undo_is_byte_identical_and_removes_created_sidecars(photos, tmp_path):
    (photos / "red_circle.png.xmp").write_text(HAND_WRITTEN, "utf-8")
    original = tree(photos)
    journal = tmp_path / "journal.jsonl"
    assert tag(photos, "-l", LABELS, "--manifest", journal)[0].exit_code == 0
    assert tag(photos, "-l", "round thing,flat thing", "--manifest", journal)[0].exit_code == 0  # a second run
    if EXIFTOOL:  # and the images themselves
        assert tag(photos, "-l", LABELS, "--embed", "--manifest", journal)[0].exit_code == 0
    assert tree(photos) != original
    undone = cli("tag", "--undo", journal)
    assert undone.exit_code == 0, undone.output
    assert tree(photos) == original  # sha256 of every file; created sidecars gone
    assert not (tmp_path / "journal.backup").exists()
    again = cli("tag", "--undo", journal)
    assert again.exit_code == 0 and "undone: 0 file(s)" in again.stderr and tree(photos) == original


def test_undo_refuses_a_file_changed_since(photos, tmp_path):
    original = tree(photos)
    journal = tmp_path / "journal.jsonl"
    assert tag(photos, "-l", LABELS, "--manifest", journal)[0].exit_code == 0
    edited = photos / "green_star.png.xmp"
    edited.write_text(edited.read_text("utf-8").replace("green star</rdf:li>", "green star, edited</rdf:li>", 1))
    mine = edited.read_bytes()
    undone = cli("tag", "--undo", journal)
    assert undone.exit_code == 1
    assert errors(undone) == [f"error: {edited}: changed since clip tag wrote it; left as it is"]
    assert edited.read_bytes() == mine
    assert tree(photos) == {**original, "green_star.png.xmp": hashlib.sha256(mine).hexdigest()}
    assert cli("tag", "--undo", tmp_path / "nothing.jsonl").exit_code == 2
    (tmp_path / "other.jsonl").write_text('{"source": "x"}\n')
    wrong = cli("tag", "--undo", tmp_path / "other.jsonl")
    assert wrong.exit_code == 2 and "is not a clip tag manifest" in wrong.stderr


# --- embedded -------------------------------------------------------------------------------------------------------
# what a metadata write changes by nature: the file's size and dates, the IPTC digest (kept in step with the new
# IPTC), our own record, the WebP flags (now: "XMP, EXIF"), a TIFF's strip offsets (the image data moved along)
VOLATILE = ("System:", "File:FileSize", "File:CurrentIPTCDigest", "XMP-x:XMPToolkit", "XMP-clipcli:",
            "RIFF:WebP_Flags", "IFD0:StripOffsets")


def block(path: Path, name: str) -> bytes:
    """A metadata block's raw bytes, as exiftool extracts them (-b -EXIF, -b -ICC_Profile)."""
    return subprocess.run([EXIFTOOL, "-b", f"-{name}", str(path)], capture_output=True, timeout=60).stdout


@pytest.fixture
def rich_images(tmp_path):
    """Images with metadata of their own: EXIF, an ICC profile and a comment (JPEG), text chunks (PNG), EXIF
    (WebP, TIFF)."""
    from PIL import ImageCms, PngImagePlugin

    folder = tmp_path / "rich"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131], exif[0x010E] = "TestMake", "TestModel", "clipcli tests", "a red circle"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    red = shapes.draw_pil("red", "circle", size=64, seed=1).convert("RGB")
    red.save(folder / "red.jpg", quality=90, exif=exif, icc_profile=icc, comment=b"keep this comment")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "keep me")
    info.add_itxt("Description", "blue, with an iTXt chunk")
    shapes.draw_pil("blue", "square", size=64, seed=2).save(folder / "blue.png", pnginfo=info)
    shapes.draw_pil("green", "star", size=64, seed=3).convert("RGB").save(folder / "green.webp", lossless=True,
                                                                         exif=exif)
    shapes.draw_pil("blue", "square", size=64, seed=4).convert("RGB").save(folder / "square.tif", exif=exif)
    return folder


@needs_exiftool
def test_embedded_write_keeps_pixels_and_other_metadata(rich_images, tmp_path):
    red = rich_images / "red.jpg"  # the user's own keywords, embedded by exiftool
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP-dc:Subject=holiday", "-IPTC:Keywords=holiday",
                    str(red)], check=True)
    images = sorted(rich_images.iterdir())
    original, pixels = tree(rich_images), {p: np.asarray(Image.open(p).convert("RGBA")) for p in images}
    before = {Path(m["SourceFile"]).name: m for m in exiftool(*images)}
    blocks = {(p, name): block(p, name) for p in images for name in ("EXIF", "ICC_Profile")}
    assert blocks[(red, "EXIF")] and blocks[(red, "ICC_Profile")] and blocks[(rich_images / "green.webp", "EXIF")]
    journal = tmp_path / "journal.jsonl"
    result, document = tag(rich_images, "-l", LABELS, "--embed", "--manifest", journal)
    assert result.exit_code == 0, result.output
    picked = chosen(document)
    assert {r["kind"] for r in document["results"]} == {"embedded"} and not list(rich_images.glob("*.xmp"))
    after = {Path(m["SourceFile"]).name: m for m in exiftool(*images)}
    for image in images:
        assert np.array_equal(np.asarray(Image.open(image).convert("RGBA")), pixels[image]), image
        name, label = image.name, picked[image.name][0]
        for key, value in before[name].items():
            if key not in OURS and not key.startswith(VOLATILE):
                assert after[name].get(key) == value, (name, key)
        user = ["holiday"] if name == "red.jpg" else []
        assert as_list(after[name]["XMP-dc:Subject"]) == [*user, label]
        assert as_list(after[name]["XMP-lr:HierarchicalSubject"]) == [f"clip|{label}"]
        assert as_list(after[name]["XMP-digiKam:TagsList"]) == [f"clip/{label}"]
        assert as_list(after[name].get("IPTC:Keywords")) == ([*user, label] if name.endswith(".jpg") else [])
    assert {key: block(*key) for key in blocks} == blocks  # the EXIF and ICC blocks byte for byte
    assert after["red.jpg"]["File:Comment"] == "keep this comment" and after["blue.png"]["PNG:Comment"] == "keep me"
    assert after["red.jpg"]["IFD0:Make"] == "TestMake" and after["red.jpg"]["ICC-header:ProfileClass"]
    rerun = tag(rich_images, "-l", LABELS, "--embed", "--manifest", journal)[1]
    assert {r["operation"] for r in rerun["results"]} == {"unchanged"} and {r["note"] for r in rerun["results"]} == {""}
    (rich_images / "red.jpg.xmp").write_text(HAND_WRITTEN, "utf-8")  # a sidecar beside: managers read it first
    noted = {Path(r["path"]).name: r["note"] for r in tag(rich_images, "-l", LABELS, "--embed", "-n")[1]["results"]}
    assert noted.pop("red.jpg").startswith("red.jpg.xmp exists too") and set(noted.values()) == {""}
    (rich_images / "red.jpg.xmp").unlink()
    assert cli("tag", "--undo", journal).exit_code == 0
    assert tree(rich_images) == original


# --- bad input ------------------------------------------------------------------------------------------------------
BOMB = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
                  for i in range(1, 10))
        + ']>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>\n')


def test_bad_inputs_are_one_error_each_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for i, name in enumerate(("not_xml", "bomb", "huge", "readonly", "linked", "good", "utf16")):
        shapes.draw_pil(*KINDS[i % 3], size=48, seed=i).save(folder / f"{name}.png")
    (folder / "not_xml.png.xmp").write_bytes(b"\x89PNG this is not XML <<<")
    (folder / "bomb.png.xmp").write_text(BOMB)
    (folder / "huge.png.xmp").write_bytes(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b" " * (9 << 20) + b"</x:xmpmeta>")
    (folder / "readonly.png.xmp").write_text(HAND_WRITTEN, "utf-8")
    (folder / "readonly.png.xmp").chmod(0o444)
    elsewhere = tmp_path / "elsewhere.xmp"
    elsewhere.write_text(HAND_WRITTEN, "utf-8")
    (folder / "linked.png.xmp").symlink_to(elsewhere)
    (folder / "utf16.png.xmp").write_bytes(HAND_WRITTEN.encode("utf-16"))
    locked = tmp_path / "locked"
    locked.mkdir()
    shapes.draw_pil("red", "circle", size=48, seed=9).save(locked / "in_a_read_only_folder.png")
    locked.chmod(0o555)
    try:
        before, before_locked, outside = tree(folder), tree(locked), digest(elsewhere)
        result, document = tag(folder, locked, "-l", LABELS, "--manifest", tmp_path / "journal.jsonl")
        assert result.exit_code == 1
        lines = errors(result)
        reasons = {"not_xml": "is not UTF-8 text", "bomb": "has a DOCTYPE", "huge": "is larger than 8 MiB",
                   "readonly": "is read-only", "linked": "is a symbolic link", "utf16": "is UTF-16/32 XMP",
                   "in_a_read_only_folder": "is read-only; make it writable"}
        assert len(lines) == len(reasons), lines
        for name, why in reasons.items():
            line = next(line for line in lines if f"/{name}.png:" in line)
            assert why in line, line
        assert tree(folder) == {**before, "good.png.xmp": digest(folder / "good.png.xmp")}  # only good.png tagged
        assert tree(locked) == before_locked and digest(elsewhere) == outside
        assert (folder / "linked.png.xmp").is_symlink()
        ops = {Path(r["path"]).stem: r["operation"] for r in document["results"]}
        assert ops.pop("good") == "create" and set(ops.values()) == {"error"}
    finally:
        locked.chmod(0o755)


def test_not_well_formed_xml_sidecar(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    shapes.draw_pil("red", "circle", size=48, seed=1).save(folder / "a.png")
    (folder / "a.png.xmp").write_text(HAND_WRITTEN.replace("</dc:subject>", "</dc:subjekt>"), "utf-8")
    (folder / "a.xmp").write_text("<x/>")  # digiKam's name also there: darktable's name comes first
    before = tree(folder)
    result, _ = tag(folder / "a.png", "-l", LABELS)
    assert result.exit_code == 1 and tree(folder) == before
    assert len(errors(result)) == 1 and "is not well-formed XML (mismatched tag" in errors(result)[0]


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs, to fill up for real."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_disk_full_is_one_line_per_file_and_nothing_half_written(small_fs, tmp_path):
    for i, (colour, kind) in enumerate(KINDS):
        shapes.draw_pil(colour, kind, size=48, seed=i).save(small_fs / f"{colour}.png")
    with open(small_fs / "filler", "wb", buffering=0) as filler:  # every block taken
        try:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        except OSError:
            pass
    before = tree(small_fs)
    journal = tmp_path / "journal.jsonl"
    result, document = tag(*sorted(small_fs.glob("*.png")), "-l", LABELS, "--manifest", journal)
    assert result.exit_code == 1
    assert len(errors(result)) == 3 and all("no space left on device" in line for line in errors(result))
    assert tree(small_fs) == before and not list(small_fs.glob(".clip-tag-*"))
    (small_fs / "filler").unlink()
    result, _ = tag(*sorted(small_fs.glob("*.png")), "-l", LABELS, "--manifest", journal)
    assert result.exit_code == 0 and len(list(small_fs.glob("*.xmp"))) == 3
    assert cli("tag", "--undo", journal).exit_code == 0
    assert tree(small_fs) == {k: v for k, v in before.items() if k != "filler"}


# --- a real process killed mid-run ----------------------------------------------------------------------------------
# A `clip` command that SIGKILLs itself when os.NAME is first called with an argument containing MARKER
# (argv: NAME MARKER, then clip's own arguments).
KILL_WHEN = """
import os, signal, sys
name, marker = sys.argv[1:3]
del sys.argv[1:3]
real = getattr(os, name)
def hook(*args, **kwargs):
    if any(marker in str(arg) for arg in args):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(os, name, hook)
from clipcli.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("embed, name, marker", [
    (False, "unlink", ".clip-tag-"),  # the first sidecar in place, its temporary name not yet gone, line open
    pytest.param(True, "replace", "img_05", marks=needs_exiftool),  # the sixth image's new bytes written and its
    # backup made, not yet renamed over it
])
def test_sigkill_mid_run_then_rerun_finishes_and_undo_still_works(tmp_path, embed, name, marker):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(12):
        colour, kind = KINDS[i % 3]
        shapes.draw_pil(colour, kind, size=48, seed=i).convert("RGB").save(folder / f"img_{i:02d}.jpg")
    (folder / "img_00.jpg.xmp").write_text(HAND_WRITTEN, "utf-8")
    original = tree(folder)
    journal = tmp_path / "journal.jsonl"
    args = ["tag", str(folder), "-m", "demo", "-l", LABELS, "--manifest", str(journal), "-q", "--workers", "0",
            *(["--embed"] if embed else [])]
    killed = subprocess.run([sys.executable, "-c", KILL_WHEN, name, marker, *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert not journal.read_text().endswith("\n")  # cut mid-line: a write begun, never journaled as done
    assert tree(folder) != original
    # no file half-written: each image decodes, each sidecar is whole XMP with all three forms of its label
    for path in folder.iterdir():
        if path.suffix == ".xmp":
            xmp = XmpText(path.read_bytes(), path.name)
            ours = [v for v in xmp.values(FORMS["hierarchical"][0]) if v.startswith("clip|")]
            assert [v.replace("|", "/") for v in ours] == xmp.values(FORMS["tagslist"][0]) and len(ours) <= 1
        elif not path.name.startswith(".clip-tag-"):
            Image.open(path).load()
    rerun = subprocess.run([sys.executable, "-c", "from clipcli.cli import main; main()", *args], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(folder.glob(".clip-tag-*"))
    tagged = json.loads(subprocess.run([sys.executable, "-c", "from clipcli.cli import main; main()", *args, "-n",
                                        "-f", "json"], capture_output=True, text=True, timeout=300).stdout)
    assert {r["operation"] for r in tagged["results"]} == {"unchanged"}  # every image carries its label
    undone = subprocess.run([sys.executable, "-c", "from clipcli.cli import main; main()", "tag", "--undo",
                             str(journal)], capture_output=True, text=True, timeout=300)
    assert undone.returncode == 0, undone.stderr
    assert tree(folder) == original


ODD_SIDECARS = {  # valid XMP in the shapes other tools write, each to be merged into
    "self_closing": '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-'
                    'ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="2"/>'
                    '</rdf:RDF></x:xmpmeta>',
    "no_description": '<?xml version="1.0"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF xmlns:rdf="http://www.w3'
                      '.org/1999/02/22-rdf-syntax-ns#">\n </rdf:RDF>\n</x:xmpmeta>\n',
    "other_prefixes": '<x:xmpmeta xmlns:x="adobe:ns:meta/"><R:RDF xmlns:R="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                      # an empty <R:Bag/> just before an end tag: once taken for that end tag (items went after it)
                      '<R:Description R:about="" xmlns:D="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe'
                      '.com/xap/1.0/" xmp:Rating="3"><D:subject><R:Bag/></D:subject></R:Description>'
                      '<R:Description R:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/">'
                      '<photoshop:City>Lisbon</photoshop:City></R:Description></R:RDF></x:xmpmeta>',
}


@needs_exiftool
@pytest.mark.parametrize("shape", sorted(ODD_SIDECARS))
def test_other_valid_xmp_shapes_are_merged(tmp_path, shape):
    image = tmp_path / "a.png"
    shapes.draw_pil("red", "circle", size=48, seed=1).save(image)
    sidecar = tmp_path / "a.png.xmp"
    sidecar.write_text(ODD_SIDECARS[shape], "utf-8")
    before = exiftool(sidecar)[0]
    result, _ = tag(image, "-l", LABELS)
    assert result.exit_code == 0, result.output
    after = exiftool(sidecar)[0]
    assert as_list(after["XMP-dc:Subject"]) == ["red circle"]
    assert as_list(after["XMP-lr:HierarchicalSubject"]) == ["clip|red circle"]
    assert as_list(after["XMP-digiKam:TagsList"]) == ["clip/red circle"]
    for key, value in before.items():
        if not key.startswith("System:") and key not in OURS:
            assert after[key] == value, key
    assert tag(image, "-l", LABELS)[1]["results"][0]["operation"] == "unchanged"


def test_embed_without_exiftool_is_refused_before_the_model_loads(photos, monkeypatch):
    from clipcli import embeddings

    monkeypatch.setenv("PATH", str(photos))  # no exiftool on it
    monkeypatch.setattr(embeddings, "open_encoder", lambda *a, **k: pytest.fail("the model was loaded"))
    result = cli("tag", photos, "-m", "demo", "-l", LABELS, "--embed")
    assert result.exit_code == 2 and len(errors(result)) == 1
    assert "needs ExifTool" in result.stderr and "libimage-exiftool-perl" in result.stderr


def test_tag_through_a_store(photos, tmp_path):
    store = tmp_path / "photos.store"
    result, first = tag(photos, "-l", LABELS, "--store", store, "--dry-run")
    assert result.exit_code == 0 and store.is_dir()
    result, again = tag(photos, "-l", LABELS, "--store", store)  # embeddings read back from the store
    assert result.exit_code == 0 and chosen(again) == chosen(first)
    assert {r["operation"] for r in again["results"]} == {"create"}
    listed, whole = tag("-l", LABELS, "--store", store, "-n")  # no inputs: every image the store holds
    assert listed.exit_code == 0 and chosen(whole) == chosen(first)
    assert {r["operation"] for r in whole["results"]} == {"unchanged"}
    journals = list(tmp_path.glob("clip-tag-*.jsonl"))  # the default journal: in the current folder
    assert len(journals) == 1 and f"clip tag --undo {journals[0].name}" in result.stderr
    assert cli("tag", "--undo", journals[0]).exit_code == 0 and not list(photos.glob("*.xmp"))
