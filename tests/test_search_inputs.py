"""`clip search` refuses queries that mean nothing, takes `--like file://`, counts and lists unreadable images,
never writes `<img src="">`, and a store finds its local model from any folder (issue 30, items 10, 11, 13)."""

import json
from pathlib import Path

import pytest

from clipcli.demo import shapes
from cli_helpers import cli


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (colour, kind) in enumerate([("red", "circle"), ("blue", "square"), ("green", "star")]):
        shapes.draw_pil(colour, kind, size=48, seed=i).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture
def store(photos, tmp_path) -> Path:
    store = tmp_path / "s.store"
    assert cli("embed", photos, "--store", store, "-m", "demo", "-q").exit_code == 1  # broken.png: an error row
    return store


@pytest.mark.parametrize("query", [" ", "\t\n", "  \n "])
def test_a_blank_query_is_refused_like_an_empty_one(store, query):
    # defect: a query of only spaces, tabs or newlines was ranked (an empty one was refused)
    result = cli("search", query, "--store", store)
    assert result.exit_code == 2 and "blank" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_min_score_that_is_not_a_number_is_refused(store, value):
    # defect: --min-score nan or inf returned nothing with exit 0
    result = cli("search", "red circle", "--store", store, "--min-score", value)
    assert result.exit_code == 2 and "--min-score" in result.stderr and result.stdout == ""


def test_like_takes_a_file_uri_as_inputs_do(store, photos):
    # defect: `--like file:///...` said "file not found" while inputs accept file://
    plain = cli("search", "--like", photos / "1.png", "--store", store, "-f", "json", "-k", "2")
    uri = cli("search", "--like", f"file://{photos / '1.png'}", "--store", store, "-f", "json", "-k", "2")
    assert uri.exit_code == 0, uri.output
    assert json.loads(uri.stdout)["results"] == json.loads(plain.stdout)["results"]
    assert json.loads(uri.stdout)["results"][0]["path"] == str(photos / "1.png")


def test_searched_counts_readable_images_and_json_lists_errors(store, photos):
    # defect: "among N images" counted error rows, and search JSON had no `errors` list
    stored = json.loads(cli("search", "red circle", "--store", store, "-f", "json").stdout)
    assert stored["searched"] == 3 and stored["errors"] == []
    folders = cli("search", "red circle", "--in", photos, "-m", "demo", "-f", "json")
    assert folders.exit_code == 1
    document = json.loads(folders.stdout)
    assert document["searched"] == 3
    assert document["errors"] == [{"path": str(photos / "broken.png"), "error": "not an image Pillow can decode"}]


def test_the_report_never_writes_an_empty_image_source(store, photos, tmp_path):
    # defect: the search report wrote `<img src="">` for a file that is gone (a browser loads the page itself)
    (photos / "0.png").unlink()
    report = tmp_path / "report.html"
    assert cli("search", "red circle", "--store", store, "--report", report, "-k", "0").exit_code == 0
    page = report.read_text()
    assert 'src=""' not in page and page.count("data:image/jpeg;base64,") == 2
    assert page.count("cannot be read now") == 1


def test_a_store_finds_its_local_model_folder_from_another_folder(photos, tmp_path, monkeypatch, tiny_model_dir):
    # defect: stores remembered `local-dir:` paths relative to the working directory
    monkeypatch.chdir(tiny_model_dir.parent)
    store = tmp_path / "s.store"
    result = cli("embed", photos, "--store", store, "-m", f"local-dir:{tiny_model_dir.name}", "-q")
    assert result.exit_code == 1, result.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = cli("search", "a never cached query", "--store", store, "-f", "json", "--cache-dir", tmp_path / "c")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["searched"] == 3
