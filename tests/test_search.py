"""`clip search` and `clip dupes`: ranking equal to a brute-force sort, streaming top-k, text / example image /
both on drawn shapes with the demo model, near-duplicate groups on planted copies of real photos, outputs."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli
from PIL import Image

from clipcli.demo import shapes
from clipcli.search import TopK, combine_query, cosines, duplicate_groups, search

LABELS = [("red", "circle"), ("blue", "square"), ("green", "star"), ("yellow", "triangle")]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    """Four labels, five drawings each, in one folder per label."""
    root = tmp_path_factory.mktemp("drawn")
    for colour, kind in LABELS:
        folder = root / f"{colour}_{kind}"
        folder.mkdir()
        for i in range(5):
            shapes.draw_pil(colour, kind, size=64, seed=100 + i).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def drawn_store(drawn, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("st") / "drawn.store"
    result = cli("embed", drawn, "--store", store, "-m", "demo", "-q")
    assert result.exit_code == 0, result.output
    return store


# --- the ranking ------------------------------------------------------------------------------------------------
def brute_force(paths, vectors, query, k, min_score=None):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit.astype(np.float64) @ query
    order = sorted(range(len(paths)), key=lambda i: (-scores[i], paths[i]))
    if min_score is not None:
        order = [i for i in order if scores[i] >= min_score]
    return [(paths[i], scores[i]) for i in (order[:k] if k else order)]


@pytest.mark.parametrize("k,min_score", [(1, None), (7, None), (0, 0.2), (25, 0.1), (500, None)])
def test_streamed_top_k_equals_a_full_sort(k, min_score):
    rng = np.random.default_rng(k)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    vectors[10] = vectors[20]  # an exact tie: broken by path
    paths = [f"img_{i:04d}.jpg" for i in range(1000)]
    query = combine_query([rng.standard_normal(16)])
    chunks = [(paths[s:s + 96], vectors[s:s + 96]) for s in range(0, 1000, 96)]
    hits = search(chunks, query, k, min_score)
    expected = brute_force(paths, vectors, query, k, min_score)
    assert [h.path for h in hits] == [p for p, _ in expected]
    assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)


def test_cosines_of_float16_rows_are_renormalised_and_invalid_rows_never_match():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    query = combine_query([rng.standard_normal(64)])
    exact = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ query
    valid = np.ones(3000, dtype=bool)
    valid[5] = False
    got = cosines(vectors.astype(np.float16), query, valid)
    assert got[5] == -np.inf
    assert np.abs(np.delete(got, 5) - np.delete(exact, 5)).max() < 2e-3
    best = TopK(3)
    best.add(got, [f"{i}" for i in range(3000)])
    assert "5" not in [h.path for h in best.hits()]


def test_a_query_of_text_and_image_counts_both_equally():
    text, image = np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    assert np.allclose(combine_query([text, image]), [2 ** -0.5, 2 ** -0.5, 0.0])
    with pytest.raises(ValueError):
        combine_query([])


# --- clip search --------------------------------------------------------------------------------------------------
def test_text_search_over_a_store_finds_the_label_and_then_needs_no_model(drawn_store, drawn):
    first = cli("search", "red circle", "--store", drawn_store, "-k", "5", "-f", "json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert [Path(r["path"]).parent.name for r in doc["results"]] == ["red_circle"] * 5
    assert [r["rank"] for r in doc["results"]] == [1, 2, 3, 4, 5]
    assert doc["searched"] == 20 and doc["query"] == {"text": "red circle", "like": [], "templates": "simple"}
    again = json.loads(cli("search", "red circle", "--store", drawn_store, "-k", "5", "-f", "json").stdout)
    assert again["model"]["backend"] is None  # the query's embedding came from the cache: no model loaded
    assert again["results"] == doc["results"]


def test_an_example_image_is_its_own_best_match(drawn_store, drawn):
    example = drawn / "green_star" / "3.png"
    result = cli("search", "--like", example, "--store", drawn_store, "-k", "5", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert Path(hits[0]["path"]) == example.resolve() and hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert {Path(h["path"]).parent.name for h in hits} == {"green_star"}


def test_text_and_image_together_count_equally(drawn_store, drawn):
    """A text t and an example image i (unit vectors): each image x scores x.(t + i) / |t + i|, so its score is
    its text-only plus its image-only score over one constant, and the ranking follows that sum."""
    def scores(*query) -> dict[str, float]:
        result = cli("search", *query, "--store", drawn_store, "-k", "0", "-f", "json")
        assert result.exit_code == 0, result.output
        return {r["path"]: r["score"] for r in json.loads(result.stdout)["results"]}

    like = drawn / "blue_square" / "0.png"
    a, b = scores("yellow triangle"), scores("--like", like)
    result = cli("search", "yellow triangle", "--like", like, "--store", drawn_store, "-k", "0", "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 20 and list(rows[0]) == ["rank", "path", "score"]
    ratios = [float(r["score"]) / (a[r["path"]] + b[r["path"]]) for r in rows]
    assert max(ratios) - min(ratios) < 1e-4 and 0.5 < ratios[0] < 1.0  # 1 / |t + i|, with |t + i| in (1, 2)
    assert [r["path"] for r in rows] == sorted(a, key=lambda p: (-(a[p] + b[p]), p))
    assert {Path(rows[0]["path"]).parent.name, Path(rows[1]["path"]).parent.name} <= {"blue_square",
                                                                                       "yellow_triangle"}


def test_search_in_folders_without_a_store_and_min_score(drawn, tmp_path):
    result = cli("search", "yellow triangle", "--in", drawn, "-m", "demo", "--min-score", "0.5", "-k", "0",
                 "-f", "json", "--report", tmp_path / "hits.html")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["results"] and all(r["score"] >= 0.5 for r in doc["results"])
    assert Path(doc["results"][0]["path"]).parent.name == "yellow_triangle"
    page = (tmp_path / "hits.html").read_text()
    assert page.count('data-rank="') == len(doc["results"]) and page.count("data:image/jpeg;base64,") == len(doc["results"])


def test_search_table_and_errors(drawn_store, drawn, tmp_path):
    table = cli("search", "blue square", "--store", drawn_store, "-k", "2")
    assert table.exit_code == 0 and table.stdout.count("blue_square") == 2
    nothing = cli("search", "--store", drawn_store)
    assert nothing.exit_code == 2 and "give a text query, --like IMAGE, or both" in nothing.output
    assert "Traceback" not in nothing.output
    missing = cli("search", "--like", tmp_path / "nope.png", "--store", drawn_store)
    assert missing.exit_code != 0 and "--like" in missing.output and "nope.png" in missing.output
    no_store = cli("search", "cat", "--store", tmp_path / "absent.store")
    assert no_store.exit_code == 4 and "absent.store" in no_store.output


# --- clip dupes ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_dupes(tmp_path_factory) -> Path:
    """scikit-learn's two real photos, distinct framings of each (same subject), and planted copies."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("dupes")
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    china.save(root / "china.jpg", quality=95)
    flower.save(root / "flower.jpg", quality=95)
    w, h = china.size
    china.crop((0, 0, w // 2, h)).save(root / "china_left.jpg", quality=95)  # the same subject, framed otherwise
    china.crop((w // 2, 0, w, h)).save(root / "china_right.jpg", quality=95)
    flower.crop((0, 0, w // 2, h // 2)).save(root / "flower_corner.jpg", quality=95)
    copies = root / "copies"
    copies.mkdir()
    china.resize((w // 3, h // 3)).save(copies / "china_small.jpg", quality=90)
    china.save(copies / "china_q30.jpg", quality=30)
    china.crop((w // 25, h // 25, w - w // 25, h - h // 25)).save(copies / "china_cropped.png")
    flower.resize((w // 2, h // 2)).save(copies / "flower_half.jpg", quality=50)
    return root


def test_planted_copies_are_grouped_and_distinct_photos_are_not(photo_dupes, tmp_path):
    result = cli("dupes", photo_dupes, "-m", "demo", "-f", "json", "--report", tmp_path / "dupes.html")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    groups = {}
    for record in doc["results"]:
        groups.setdefault(record["group"], []).append(record)
    named = sorted(sorted(Path(r["path"]).name for r in group) for group in groups.values())
    assert named == [["china.jpg", "china_cropped.png", "china_q30.jpg", "china_small.jpg"],
                     ["flower.jpg", "flower_half.jpg"]]
    for group in groups.values():  # the best copy first: the most pixels, then the largest file
        assert group[0]["keep"] and not any(r["keep"] for r in group[1:])
        assert group[0]["width"] * group[0]["height"] == max(r["width"] * r["height"] for r in group)
        assert group[0]["similarity"] == 1.0
    assert Path(groups[1][0]["path"]).name == "china.jpg"  # as large as the PNG crop's source; the larger file wins
    page = (tmp_path / "dupes.html").read_text()
    assert page.count('data-group="') == 2 and page.count("data:image/jpeg;base64,") == 6


def test_dupes_from_a_store_equal_dupes_from_files(photo_dupes, tmp_path):
    store = tmp_path / "photos.store"
    from_files = cli("dupes", photo_dupes, "-m", "demo", "--store", store, "-f", "csv")
    from_store = cli("dupes", "--store", store, "-f", "csv")
    assert from_files.exit_code == 0 and from_store.exit_code == 0, from_store.output
    rows = list(csv.DictReader(io.StringIO(from_store.stdout)))
    assert [(r["group"], Path(r["path"]).name, r["keep"]) for r in rows] == \
        [(r["group"], Path(r["path"]).name, r["keep"]) for r in csv.DictReader(io.StringIO(from_files.stdout))]
    assert len(rows) == 6
    lines = cli("dupes", "--store", store, "-f", "jsonl").stdout.splitlines()
    assert [len(json.loads(line)["images"]) for line in lines] == [4, 2]


def test_duplicate_groups_library_and_threshold(photo_dupes):
    vectors = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.1, 0.99]], dtype=np.float32)
    groups = duplicate_groups(vectors, threshold=0.95)
    assert [[row for row, _ in g] for g in groups] == [[0, 1], [2, 3]]
    assert duplicate_groups(vectors, threshold=0.999) == []
    strict = cli("dupes", photo_dupes, "-m", "demo", "--threshold", "0.9999", "-f", "json")
    assert json.loads(strict.stdout)["results"] == []
    wrong = cli("dupes", photo_dupes, "-m", "demo", "--threshold", "3")
    assert wrong.exit_code == 2 and "--threshold" in wrong.output and "Traceback" not in wrong.output


# --- scan copies --------------------------------------------------------------------------------------------------
def _hits(result) -> list[tuple[str, float]]:
    assert result.exit_code == 0, result.output
    return [(r["path"], r["score"]) for r in json.loads(result.stdout)["results"]]


def test_scan_copies_equal_the_parquet_rows_and_follow_every_commit(tmp_path):
    from clipcli.store import SCAN_DIR, SHARD_DIR

    folder, store = tmp_path / "imgs", tmp_path / "s.store"
    folder.mkdir()
    for i, (colour, kind) in enumerate(LABELS * 2):
        shapes.draw_pil(colour, kind, size=48, seed=i).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    assert cli("embed", folder, "--store", store, "-m", "demo", "--shard-size", "3", "-q").exit_code == 1
    shards = sorted(p.name for p in (store / SHARD_DIR).glob("part-*.parquet"))
    copies = sorted(p.name for p in (store / SCAN_DIR).iterdir())
    assert len(shards) == 3 and [c.split(".parquet.")[0] + ".parquet" for c in copies] == shards
    query = ("search", "--like", folder / "2.png", "--store", store, "-k", "0", "-f", "json")
    with_copies = _hits(cli(*query))
    assert len(with_copies) == 8 and str(folder / "broken.png") not in dict(with_copies)
    for copy in (store / SCAN_DIR).iterdir():
        copy.unlink()
    from_parquet = _hits(cli(*query))
    assert [p for p, _ in from_parquet] == [p for p, _ in with_copies]
    assert np.allclose([s for _, s in from_parquet], [s for _, s in with_copies], atol=1e-6)
    # a changed image: its shard is rewritten, its copy replaced, and the missing copies are made again
    shapes.draw_pil("white", "heart", size=48, seed=99).save(folder / "2.png")
    assert cli("embed", folder, "--store", store, "-m", "demo", "-q").exit_code == 0  # the broken file: stored
    shards = sorted(p.name for p in (store / SHARD_DIR).glob("part-*.parquet"))
    copies = sorted(p.name for p in (store / SCAN_DIR).iterdir())
    assert [c.split(".parquet.")[0] + ".parquet" for c in copies] == shards
    after = _hits(cli(*query))
    assert after[0][0] == str(folder / "2.png") and after[0][1] == pytest.approx(1.0, abs=1e-5)
    assert after[1][1] < 0.999  # the old drawing is gone from the copies too


def test_linked_pairs_across_blocks_equal_the_full_matrix():
    from clipcli.search import linked_pairs

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, 4)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    full = unit @ unit.T
    want = {(i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.9}
    rows, cols, sims = linked_pairs(vectors, 0.9, block=7)
    assert set(zip(rows.tolist(), cols.tolist())) == want and len(rows) == len(want)
    assert np.allclose(sims, full[rows, cols], atol=1e-6)


def test_store_check_finds_a_scan_copy_that_differs_and_repair_lets_the_next_writer_remake_it(drawn, tmp_path):
    from clipcli.store import SCAN_DIR

    store = tmp_path / "s.store"
    assert cli("embed", drawn, "--store", store, "-m", "demo", "-q").exit_code == 0
    query = ("search", "--like", drawn / "red_circle" / "1.png", "--store", store, "-k", "3", "-f", "json")
    before = _hits(cli(*query))
    copy = next((store / SCAN_DIR).iterdir())
    original = np.load(copy)
    matrix = original[::-1].copy()  # rows swapped: a copy that no longer matches its shard
    np.save(copy, matrix)
    assert _hits(cli(*query)) == before  # search checks the copy against its shard's checksum and reads Parquet
    check = cli("store", "check", store)
    assert check.exit_code == 4 and f"{SCAN_DIR}/{copy.name}" in check.output and "differs" in check.output
    repaired = cli("store", "check", "--repair", store)
    assert repaired.exit_code == 0 and not copy.exists()
    assert _hits(cli(*query)) == before  # Parquet answers, then the next writer's copy
    assert cli("embed", drawn, "--store", store, "-m", "demo", "-q").exit_code == 0
    assert copy.exists() and np.array_equal(np.load(copy), original) and _hits(cli(*query)) == before


def test_a_search_opens_each_shard_once_and_prune_takes_the_copies_of_deleted_shards(tmp_path, monkeypatch):
    from clipcli.store import SCAN_DIR, SHARD_DIR, ImageStore

    folder, store = tmp_path / "imgs", tmp_path / "s.store"
    folder.mkdir()
    for i in range(12):
        colour, kind = LABELS[i % 4]
        shapes.draw_pil(colour, kind, size=32, seed=i).save(folder / f"{i:02d}.png")
    assert cli("embed", folder, "--store", store, "-m", "demo", "--shard-size", "2", "-q").exit_code == 0
    shards = sorted(p.name for p in (store / SHARD_DIR).glob("part-*.parquet"))
    assert len(shards) == 6
    opened = []
    original = ImageStore._open
    monkeypatch.setattr(ImageStore, "_open", lambda self, name: opened.append(name) or original(self, name))
    from clipcli.search import search_job

    found = search_job("red circle", store=store, k=3)
    assert len(found.hits) == 3
    assert sorted(set(opened)) == shards and len(opened) <= 2 * len(shards)  # once to scan, once to count rows
    monkeypatch.undo()
    for path in sorted(folder.iterdir())[:2]:  # the two images of one shard go away: prune deletes the shard
        path.unlink()
    assert cli("embed", "--store", store, "--prune", "-m", "demo", "-q").exit_code == 0
    left = sorted(p.name for p in (store / SHARD_DIR).glob("part-*.parquet"))
    copies = sorted(p.name.split(".parquet.")[0] + ".parquet" for p in (store / SCAN_DIR).iterdir())
    assert len(left) == 5 and copies == left


def test_dupes_help_states_the_library_default():
    from clipcli.search import DUPE_THRESHOLD

    text = " ".join(cli("dupes", "--help").stdout.split())
    assert f"default {DUPE_THRESHOLD}," in text
