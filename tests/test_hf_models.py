"""Hugging Face transformers CLIP-family models (CLIPModel, ChineseCLIPModel, SiglipModel, MetaClip2Model,
Siglip2Model) as clipcli backbones.

The reference is transformers' own `pipeline("zero-shot-image-classification")` on the same saved folder, with the
same single template; tiny random-weight models built offline (tests/tiny_hf_models.py)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli

import tiny_hf_models
from clipcli.errors import ModelLoadError

pytest.importorskip("transformers")

LABELS = ["red circle", "blue square", "小笼包", "wonton", "a dog"]
TEMPLATE = "a photo of {}."


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: tiny_hf_models.save(family, root / family) for family in tiny_hf_models.FAMILIES}


@pytest.fixture(scope="session")
def one_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("templates") / "one.yaml"
    path.write_text(f'name: one\ntemplates:\n  - "{TEMPLATE}"\n', encoding="utf-8")
    return path


def pipeline_scores(folder: Path, image: Path, labels) -> dict:
    """transformers' zero-shot pipeline on the saved folder; its Pillow image processor (what clipcli reproduces)."""
    from transformers import AutoImageProcessor, AutoTokenizer, pipeline

    classify = pipeline("zero-shot-image-classification", model=str(folder),
                        tokenizer=AutoTokenizer.from_pretrained(str(folder)),
                        image_processor=AutoImageProcessor.from_pretrained(str(folder), backend="pil"))
    return {r["label"]: r["score"] for r in classify(str(image), candidate_labels=labels,
                                                      hypothesis_template=TEMPLATE)}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("family", tiny_hf_models.FAMILIES)
def test_probabilities_equal_the_transformers_pipeline(hf_dirs, one_template, images, family, backend):
    score = "sigmoid" if family.startswith("siglip") else "softmax"
    for image in (images / "red_circle.png", images / "blue_square.jpg"):
        result = cli("classify", image, "-m", f"local-dir:{hf_dirs[family]}", "-l", ",".join(LABELS), "--templates",
                     one_template, "--score", score, "-f", "json", "-k", "0", "--backend", backend, "--no-cache")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["model"]["backend"] == backend
        got = {p["label"]: p["score"] for p in document["results"][0]["predictions"]}
        want = pipeline_scores(hf_dirs[family], image, LABELS)
        assert set(got) == set(LABELS)
        for label in LABELS:
            assert got[label] == pytest.approx(want[label], abs=1e-4), (family, backend, label)
        assert max(want.values()) - min(want.values()) > 1e-3  # not a comparison of near-uniform vectors


@pytest.mark.parametrize("family", [f for f in tiny_hf_models.FAMILIES if f != "siglip2"])
def test_preprocessing_equals_the_pillow_image_processor(hf_dirs, family):
    from PIL import Image
    from transformers import AutoImageProcessor

    from clipcli.hf_models import image_transform

    transform = image_transform(hf_dirs[family])
    reference = AutoImageProcessor.from_pretrained(str(hf_dirs[family]), backend="pil")
    for shape in ((21, 13, 3), (33, 80, 3), (200, 35, 3)):  # smaller than the crop; odd offsets; tall
        image = Image.fromarray(np.random.default_rng(len(shape) + shape[0]).integers(0, 255, shape, dtype=np.uint8))
        want = np.asarray(reference(images=[image], return_tensors="np")["pixel_values"][0])
        got = transform(image)
        assert got.shape == want.shape == (3, 32, 32)
        assert float(np.abs(got - want).max()) <= 1e-6


def test_naflex_preprocessing_equals_the_siglip2_image_processor(hf_dirs):
    """SigLIP 2: each image's packed array unpacks to the Pillow processor's pixel_values, pixel_attention_mask and
    spatial_shapes (aspect ratio kept, at most 20 patches of 8 x 8; tiny, huge, very wide and very tall images)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor

    from clipcli.hf_models import image_transform, unpack_naflex

    transform = image_transform(hf_dirs["siglip2"])
    reference = AutoImageProcessor.from_pretrained(str(hf_dirs["siglip2"]), backend="pil")
    assert type(reference).__name__ == "Siglip2ImageProcessorPil" and transform.max_patches == 20
    shapes = ((21, 13, 3), (33, 80, 3), (200, 35, 3), (5, 300, 3), (999, 1000, 3), (8, 8, 3), (1, 1, 3))
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, shape, dtype=np.uint8))
              for i, shape in enumerate(shapes)]
    want = reference(images=images, return_tensors="np")
    packed = np.stack([transform(image) for image in images])
    assert packed.shape == (len(images), 3, 21, 64) and packed.dtype == np.float32
    got = {k: v.numpy() for k, v in unpack_naflex(torch.from_numpy(packed)).items()}
    assert np.array_equal(got["spatial_shapes"], want["spatial_shapes"])
    assert np.array_equal(got["pixel_attention_mask"], want["pixel_attention_mask"])
    assert float(np.abs(got["pixel_values"] - want["pixel_values"]).max()) <= 1e-6
    assert [tuple(s) for s in want["spatial_shapes"]] == [(5, 4), (3, 6), (10, 2), (1, 20), (4, 5), (4, 4), (4, 4)]


def test_cropping_rounds_and_pads_as_transformers_does():
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from clipcli.preprocess import HFImageTransform

    processor = CLIPImageProcessorPil(size={"shortest_edge": 41}, crop_size={"height": 30, "width": 50})
    transform = HFImageTransform.from_processor_config(processor.to_dict())
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (45, 41, 3), dtype=np.uint8))
    want = np.asarray(processor(images=[image], return_tensors="np")["pixel_values"][0])
    assert transform(image).shape == want.shape == (3, 30, 50)
    assert float(np.abs(transform(image) - want).max()) <= 1e-6


def test_identity_is_the_checkpoint_not_its_path(hf_dirs, tmp_path):
    from clipcli.models import load_model

    copy = shutil.copytree(hf_dirs["clip"], tmp_path / "elsewhere")
    first = load_model(f"local-dir:{hf_dirs['clip']}", device="cpu")
    assert load_model(f"local-dir:{copy}", device="cpu").identity_key() == first.identity_key()
    assert load_model(f"transformers:{copy}", device="cpu").identity_key() == first.identity_key()
    tiny_hf_models.save("clip", tmp_path / "reseeded", seed=1)
    assert load_model(f"local-dir:{tmp_path / 'reseeded'}", device="cpu").identity_key() != first.identity_key()
    assert first.identity["family"] == "clip" and first.identity["model"] == "transformers"


def _fake_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """The Hugging Face cache layout (models--org--name/snapshots/<commit>/..., refs/main) holding `folder`."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, entry / "snapshots" / commit)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)


def test_hf_hub_id_loads_from_the_local_cache_offline(hf_dirs, tmp_path, images, one_template):
    _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-siglip", hf_dirs["siglip"])
    args = ["classify", images / "red_circle.png", "-l", ",".join(LABELS), "--templates", one_template, "--score",
            "sigmoid", "-f", "json", "-k", "0", "--weights-dir", tmp_path / "hub", "--backend", "torch", "--no-cache"]
    from_hub = cli(*args, "-m", "hf-hub:tiny-org/tiny-siglip")
    assert from_hub.exit_code == 0, from_hub.output
    local = cli(*args, "-m", f"local-dir:{hf_dirs['siglip']}")
    assert json.loads(from_hub.stdout)["results"] == json.loads(local.stdout)["results"]
    missing = cli(*args, "-m", "transformers:tiny-org/not-cached")
    assert missing.exit_code == 3 and "not in the Hugging Face cache" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    no_folder = cli(*args, "-m", f"transformers:{tmp_path / 'nowhere'}")
    assert no_folder.exit_code == 3 and no_folder.output.strip().endswith("folder not found (and not a hub id ORG/NAME)")
    assert len(no_folder.output.strip().splitlines()) == 1


def test_unsupported_model_type_is_one_clear_error(tmp_path, images):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = cli("classify", images / "red_circle.png", "-m", f"local-dir:{folder}", "-l", "a,b")
    assert result.exit_code == 3
    assert "model type 'bert' is not a CLIP-family model" in result.output and "chinese_clip" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_transformers_names_the_extra(hf_dirs, monkeypatch):
    import importlib.util

    from clipcli.models import load_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    # the packages by name (clipcli is not on PyPI: 'clipcli[transformers]' would fetch someone else's), and the
    # checkout's extra
    with pytest.raises(ModelLoadError, match=r"pip install 'transformers>=5,<6' tokenizers .*'\.\[transformers\]'"):
        load_model(f"local-dir:{hf_dirs['clip']}", device="cpu")


def test_sigmoid_needs_siglip(hf_dirs, images):
    result = cli("classify", images / "red_circle.png", "-m", f"local-dir:{hf_dirs['clip']}", "-l", "a,b",
                 "--score", "sigmoid")
    assert result.exit_code == 2 and "needs a model trained with a sigmoid loss" in result.output


# --- the warm path imports no torch ----------------------------------------------------------------------

PROBE = ("import sys, json\nfrom clipcli.cli import main\nsys.argv = ['clip', *sys.argv[1:]]\n"
         "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
         "print(json.dumps(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'transformers') "
         "if m in sys.modules)), file=sys.stderr)\nsys.exit(code)\n")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("family", ["clip", "chinese_clip", "siglip2"])
def test_warm_path_of_a_transformers_model_imports_no_torch(hf_dirs, images, tmp_path, family):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPCLI_CACHE_DIR": str(tmp_path)}

    def run(labels):
        args = ["classify", str(images / "red_circle.png"), str(images / "sub"), "-m", f"local-dir:{hf_dirs[family]}",
                "-l", labels, "-f", "json", "-k", "0"]
        done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), json.loads(done.stderr.strip().splitlines()[-1])

    cold, cold_modules = run("红色的圆,蓝色的方形,绿色的星")
    assert "torch" in cold_modules and "transformers" in cold_modules  # exported now
    warm, warm_modules = run("红色的圆,蓝色的方形,绿色的星")
    assert warm_modules == [] and warm["results"] == cold["results"]
    relabel, relabel_modules = run("馄饨,小笼包,猫")  # labels not cached: the ONNX text tower and tokenizers
    assert relabel_modules == [] and relabel["model"]["backend"] == "onnx"


# --- end to end: every command with a transformers model ---------------------------------------------------

@pytest.fixture(scope="module")
def zh_dataset(tmp_path_factory):
    from clipcli.demo import shapes

    root = tmp_path_factory.mktemp("zh")
    for split, seed in (("train", 1), ("test", 2)):
        for colour, kind, name in (("red", "circle", "红色的圆"), ("blue", "square", "蓝色的方形"),
                                   ("green", "star", "绿色的星")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                shapes.draw_pil(colour, kind, size=48, seed=seed * 10 + i).save(folder / f"{i}.png")
    return root


def test_every_command_runs_with_a_transformers_model(hf_dirs, zh_dataset, tmp_path):
    model = f"local-dir:{hf_dirs['chinese_clip']}"
    labels = "红色的圆,蓝色的方形,绿色的星"
    evaluated = cli("eval", zh_dataset / "test", "-m", model, "--templates", "zh-simple", "-f", "json")
    assert evaluated.exit_code == 0, evaluated.output
    row = json.loads(evaluated.stdout)["results"][0]
    assert row["count"] == 9 and sum(map(sum, row["confusion_matrix"])) == 9

    store = tmp_path / "store"
    embedded = cli("embed", zh_dataset / "test", "--store", store, "-m", model, "--dtype", "float32")
    assert embedded.exit_code == 0, embedded.output
    info = json.loads(cli("store", "info", store, "-f", "json").stdout)
    assert info["images"] == 9
    direct = json.loads(cli("classify", zh_dataset / "test", "-m", model, "-l", labels, "-f", "json", "-k",
                            "0").stdout)
    stored = cli("classify", "--store", store, "-l", labels, "-f", "json", "-k", "0")
    assert stored.exit_code == 0, stored.output
    by_path = {r["path"]: r["predictions"] for r in direct["results"]}
    for record in json.loads(stored.stdout)["results"]:
        want = {p["label"]: p["score"] for p in by_path[record["path"]]}
        for p in record["predictions"]:
            assert p["score"] == pytest.approx(want[p["label"]], abs=1e-5)

    head = tmp_path / "head.safetensors"
    fitted = cli("fit", zh_dataset / "train", "-m", model, "-o", head, "--shots", "2", "--templates", "zh-simple")
    assert fitted.exit_code == 0, fitted.output
    with_head = json.loads(cli("classify", zh_dataset / "test", "-m", model, "--head", head, "-f", "json").stdout)
    assert {p["label"] for r in with_head["results"] for p in r["predictions"]} <= set(labels.split(","))

    sorted_out = cli("sort", zh_dataset / "test", "-m", model, "-l", labels, "--into", tmp_path / "out", "-n",
                     "-f", "jsonl")
    assert sorted_out.exit_code == 0, sorted_out.output
    moves = [json.loads(line) for line in sorted_out.stdout.splitlines()]
    assert len(moves) == 9 and {m["folder"] for m in moves} <= set(labels.split(","))


# --- languages: Chinese templates, script warnings, wide characters in tables --------------------------------

def test_chinese_template_sets_and_their_language(tmp_path):
    from clipcli.templates import load_template_set

    full, single = load_template_set("zh-imagenet"), load_template_set("zh-simple")
    assert (full.language, single.language, load_template_set("imagenet").language) == ("zh", "zh", "en")
    assert len(full.templates) == 80 and single.templates == ["一张{c}的照片。"] and single.templates[0] in full.templates
    assert "Chinese-CLIP" in full.source and "MIT" in full.source
    assert full.render("馄饨")[0] == "馄饨的照片。"
    own = tmp_path / "mine.yaml"
    own.write_text("language: ja\ntemplates:\n  - '{}の写真。'\n", encoding="utf-8")
    assert load_template_set(str(own)).language == "ja"
    own.write_text("templates:\n  - 'a {}'\n", encoding="utf-8")
    assert load_template_set(str(own)).language is None

    listed = cli("templates")
    rows = {line.split("│")[0].strip(): [c.strip() for c in line.split("│")] for line in listed.stdout.splitlines()
            if "│" in line and line.split("│")[0].strip()}
    assert rows["zh-imagenet"][1:3] == ["80", "zh"] and rows["zh-simple"][1:3] == ["1", "zh"]
    assert rows["imagenet"][1:3] == ["80", "en"]


def test_scripts_of_label_text():
    from clipcli.languages import scripts_of

    assert scripts_of("小笼包") == ["Chinese/Japanese (Han)"]
    assert scripts_of("wonton, café, Straße") == []
    assert scripts_of("пельмени 餃子 ギョーザ 만두") == ["Cyrillic", "Chinese/Japanese (Han)", "Japanese", "Korean"]


def test_cjk_labels_with_an_english_only_tokenizer_warn_once(tiny_model, hf_dirs, images, monkeypatch):
    from clipcli import languages

    monkeypatch.setattr(languages, "_warned", set())
    english = cli("eval", images, "-m", tiny_model, "--templates", "simple,imagenet-7", "-f", "json")  # no CJK
    assert "multilingual" not in english.stderr
    result = cli("classify", images / "red_circle.png", "-m", tiny_model, "-l", "馄饨,小笼包,red circle")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: labels or templates in Chinese/Japanese (Han) script (e.g. '馄饨')") == 1
    assert "--model transformers:OFA-Sys/chinese-clip-vit-base-patch16" in result.stderr
    clip_bpe = cli("classify", images / "red_circle.png", "-m", f"local-dir:{hf_dirs['clip']}", "-l", "пельмени,b")
    assert "Cyrillic script" in clip_bpe.stderr and "xlm-roberta-base-ViT-B-32" in clip_bpe.stderr
    templates = cli("classify", images / "red_circle.png", "-m", tiny_model, "-l", "dog,cat", "-t", "zh-simple")
    assert "templates in Chinese/Japanese (Han) script (e.g. '一张{c}的照片。')" in templates.stderr
    chinese = cli("classify", images / "red_circle.png", "-m", f"local-dir:{hf_dirs['chinese_clip']}", "-l",
                  "馄饨,小笼包")
    assert chinese.exit_code == 0 and "warning" not in chinese.stderr


def test_tables_align_cjk_labels(hf_dirs, images):
    from rich.cells import cell_len

    labels = "馄饨,小笼包,red circle,一只很大的红色的圆"
    result = cli("classify", images / "red_circle.png", images / "blue_square.jpg", "-m",
                 f"local-dir:{hf_dirs['chinese_clip']}", "-l", labels, "-k", "4")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if any(bar in line for bar in "│┃")]
    assert len(lines) >= 9 and any("小笼包" in line for line in lines)
    offsets = {tuple(cell_len(line[:i]) for i, ch in enumerate(line) if ch in "│┃") for line in lines}
    assert len(offsets) == 1, result.stdout  # every separator in the same screen column, wide characters or not


# --- open_clip's multilingual models load offline from the Hugging Face cache --------------------------------

@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("repo", sorted(tiny_hf_models.MULTILINGUAL_OPEN_CLIP))
def test_multilingual_open_clip_models_run_offline_once_cached(repo, images, tmp_path):
    """xlm-roberta-base-ViT-B-32 and nllb-clip-base as their hub repositories (tiny weights, their text model's
    config and tokenizer cached beside them), with HF_HUB_OFFLINE: probabilities equal open_clip's own."""
    cache = tmp_path / "hub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    labels = ["馄饨", "小笼包", "red circle"]
    image = images / "red_circle.png"
    built = subprocess.run([sys.executable, str(Path(tiny_hf_models.__file__)), str(cache), repo, str(image), *labels],
                           capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    want = json.loads(built.stdout.strip().splitlines()[-1])
    run = subprocess.run([sys.executable, "-m", "clipcli", "classify", str(image), "-m", f"hf-hub:{repo}", "-l",
                          ",".join(labels), "--templates", "simple", "-f", "json", "-k", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr  # a multilingual tokenizer: no script warning
    got = {p["label"]: p["score"] for p in json.loads(run.stdout)["results"][0]["predictions"]}
    for label, value in zip(labels, want):
        assert got[label] == pytest.approx(value, abs=1e-5)
    assert max(want) - min(want) > 1e-3


@pytest.mark.slow  # a real local Ray
def test_classify_on_ray_equals_local_with_a_transformers_model(hf_dirs, images):
    pytest.importorskip("ray")
    args = ["classify", images, "-m", f"local-dir:{hf_dirs['siglip']}", "-l", ",".join(LABELS), "-f", "json", "-k",
            "0", "--score", "sigmoid"]
    local, on_ray = cli(*args), cli(*args, "--engine", "ray")
    assert on_ray.exit_code == 0, on_ray.output
    rows = {r["path"]: r["predictions"] for r in json.loads(local.stdout)["results"]}
    results = json.loads(on_ray.stdout)["results"]
    assert sorted(r["path"] for r in results) == sorted(rows) and len(rows) == 3
    for record in results:
        want = {p["label"]: p["score"] for p in rows[record["path"]]}
        assert {p["label"]: pytest.approx(want[p["label"]], abs=1e-6) for p in record["predictions"]} == want


@pytest.mark.fresh_exports
def test_a_transformers_model_that_does_not_export_stays_on_torch_remembered(hf_dirs, monkeypatch):
    from clipcli.backends import export_hf, load_backend_model
    from clipcli.errors import ExportError

    calls = []

    def broken(loaded, path):
        calls.append(path)
        raise RuntimeError("an operator the exporter does not know")

    monkeypatch.setattr(export_hf, "_export_image", broken)
    first = load_backend_model(f"local-dir:{hf_dirs['chinese_clip']}", device="cpu")
    second = load_backend_model(f"local-dir:{hf_dirs['chinese_clip']}", device="cpu")
    assert first.backend == second.backend == "torch" and len(calls) == 1  # the failure is remembered
    with pytest.raises(ExportError, match="cannot run on ONNX Runtime"):
        load_backend_model(f"local-dir:{hf_dirs['chinese_clip']}", backend="onnx")


def test_a_slow_tokenizer_keeps_label_text_on_torch(hf_dirs, monkeypatch, tmp_path):
    """No fast tokenizer (no tokenizer.json to run without transformers): images on ONNX Runtime, text on torch."""
    from clipcli.backends import export_hf, load_backend_model
    from clipcli.models import load_model

    monkeypatch.setattr(export_hf, "_tokenizer_twin", lambda loaded, path: "tokenizer X is not a fast tokenizer")
    monkeypatch.setenv("CLIPCLI_CACHE_DIR", str(tmp_path))
    model = load_backend_model(f"local-dir:{hf_dirs['siglip']}", device="cpu", backend="onnx")
    assert model.backend == "onnx" and not model.text_on_onnx
    assert sorted(p.name for p in model.directory.iterdir()) == ["image.onnx", "model.json"]
    want = load_model(f"local-dir:{hf_dirs['siglip']}", device="cpu").encode_texts(["小笼包", "a dog"])
    assert np.abs(model.encode_texts(["小笼包", "a dog"]) - want).max() < 1e-6


def test_int8_image_tower_of_a_transformers_model(hf_dirs, images):
    args = ["classify", images, "-m", f"local-dir:{hf_dirs['clip']}", "-l", ",".join(LABELS), "-f", "json", "-k", "1"]
    fp32, int8 = cli(*args), cli(*args, "--precision", "int8")
    assert int8.exit_code == 0, int8.output
    assert json.loads(int8.stdout)["model"]["precision"] == "int8"
    assert [r["predictions"][0]["label"] for r in json.loads(int8.stdout)["results"]] == \
        [r["predictions"][0]["label"] for r in json.loads(fp32.stdout)["results"]]


def test_int8_image_tower_of_siglip2_takes_the_packed_naflex_inputs(hf_dirs, tmp_path, monkeypatch):
    """The quantiser probes the tower with random arrays of the packed shape; the int8 tower then encodes real
    images of different aspect ratios close to the fp32 one (a random tiny model: features, not labels)."""
    from PIL import Image

    from clipcli.backends import load_backend_model

    monkeypatch.setenv("CLIPCLI_CACHE_DIR", str(tmp_path))
    model = f"local-dir:{hf_dirs['siglip2']}"
    fp32 = load_backend_model(model, device="cpu", backend="onnx")
    int8 = load_backend_model(model, device="cpu", backend="onnx", precision="int8")
    assert int8.precision == "int8" and (fp32.directory / "image.int8-w7.onnx").is_file()
    rng = np.random.default_rng(3)
    pixels = np.stack([fp32.preprocess(Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)))
                       for shape in ((30, 50, 3), (90, 20, 3), (64, 64, 3))])
    cosine = np.sum(fp32.encode_pixels(pixels) * int8.encode_pixels(pixels), axis=1)
    assert cosine.min() > 0.98, cosine


def test_legacy_processor_config_with_an_int_size_is_read_as_transformers_reads_it(hf_dirs, tmp_path):
    """openai/clip-vit-base-patch32's preprocessor_config.json says `size: 224`: the shortest edge, not a square."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from clipcli.hf_models import image_transform

    folder = shutil.copytree(hf_dirs["clip"], tmp_path / "legacy")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 32}))
    transform = image_transform(folder)
    assert transform.resize == (32,) and transform.crop == (32, 32)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 90, 3), dtype=np.uint8))
    want = AutoImageProcessor.from_pretrained(str(folder), backend="pil")(images=[image], return_tensors="np")
    assert float(np.abs(transform(image) - want["pixel_values"][0]).max()) <= 1e-6
