"""The on-disk class-embedding cache: reuse, per-label growth, corruption, unwritable dirs, concurrency."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import tiny_models
from typer.testing import CliRunner

from clipcli.cache import EmbeddingCache, decode_entry, encode_entry
from clipcli.classifier import build_class_embeddings, open_cache
from clipcli.cli import app
from clipcli.errors import CacheWarning
from clipcli.labels import Label
from clipcli.models import LoadedModel, load_model
from clipcli.templates import load_template_set

pytestmark = pytest.mark.fresh_exports  # these tests are about the cache itself

TEMPLATES = load_template_set("imagenet-7")


@pytest.fixture
def counted(monkeypatch):
    """Counts prompts sent to the text encoder."""
    seen = []
    real = LoadedModel.encode_texts

    def encode(self, texts, progress=None):
        seen.extend(texts)
        return real(self, texts, progress)

    monkeypatch.setattr(LoadedModel, "encode_texts", encode)
    return seen


def labels(n):
    return [Label.plain(f"label {i}") for i in range(n)]


def test_second_build_reads_everything_from_cache(tiny_model, tmp_path, counted):
    loaded = load_model(tiny_model)
    cold = build_class_embeddings(loaded, labels(10), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path))
    assert len(counted) == 10 * 7
    warm = build_class_embeddings(loaded, labels(10), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path))
    assert len(counted) == 10 * 7
    assert np.array_equal(cold, warm)


def test_growing_the_label_list_encodes_only_the_new_label(tiny_model, tmp_path, counted):
    loaded = load_model(tiny_model)
    build_class_embeddings(loaded, labels(10), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path))
    counted.clear()
    grown = build_class_embeddings(loaded, labels(11), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path))
    assert counted == TEMPLATES.render("label 10")
    fresh = build_class_embeddings(loaded, labels(11), TEMPLATES, None)
    assert np.abs(grown - fresh).max() <= 1e-6


def test_other_templates_or_weights_do_not_reuse_entries(tmp_path, counted):
    first = tiny_models.save_local_dir("clip", tmp_path / "m", seed=0)
    loaded = load_model(f"local-dir:{first}")
    build_class_embeddings(loaded, labels(2), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path / "cache"))
    simple = load_template_set("simple")
    counted.clear()
    build_class_embeddings(loaded, labels(2), simple, open_cache(loaded, simple, tmp_path / "cache"))
    assert len(counted) == 2

    tiny_models.save_local_dir("clip", first, seed=1)  # same folder, new weights
    changed = load_model(f"local-dir:{first}")
    assert changed.identity_key() != loaded.identity_key()
    counted.clear()
    build_class_embeddings(changed, labels(2), TEMPLATES, open_cache(changed, TEMPLATES, tmp_path / "cache"))
    assert len(counted) == 2 * 7


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b[:-4] + b"\0\0\0\0", lambda b: b""])
def test_corrupt_entry_is_reported_once_and_rebuilt(tiny_model, tmp_path, counted, damage):
    loaded = load_model(tiny_model)
    good = build_class_embeddings(loaded, labels(3), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path))
    entries = sorted(tmp_path.rglob("*.emb"))
    assert len(entries) == 3
    for entry in entries[:2]:
        entry.write_bytes(damage(entry.read_bytes()))
    counted.clear()
    with pytest.warns(CacheWarning, match="was corrupt; rebuilding") as caught:
        again = build_class_embeddings(loaded, labels(3), TEMPLATES, open_cache(loaded, TEMPLATES, tmp_path))
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert len(counted) == 2 * 7
    assert np.abs(again - good).max() <= 1e-6
    assert all(decode_entry(e.read_bytes()) is not None for e in entries)


def test_unwritable_cache_dir_warns_and_runs_without_cache(tiny_model, tmp_path):
    loaded = load_model(tiny_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = open_cache(loaded, TEMPLATES, blocker / "cache")
    with pytest.warns(CacheWarning, match="embedding cache disabled for this run"):
        result = build_class_embeddings(loaded, labels(3), TEMPLATES, cache)
    assert result.shape[0] == 3
    assert not cache.enabled


def test_entry_format_round_trip_and_rejections():
    vector = np.random.default_rng(0).standard_normal(17).astype(np.float32)
    blob = encode_entry(vector)
    assert np.array_equal(decode_entry(blob), vector)
    assert decode_entry(blob[:-1]) is None
    assert decode_entry(b"XXXXXXXX" + blob[8:]) is None


WRITER = """
import sys
import numpy as np
from pathlib import Path
from clipcli.cache import EmbeddingCache
cache = EmbeddingCache.for_model(Path(sys.argv[1]), "model", {"model": "m"}, ["t {}"])
for round in range(40):
    for i in range(20):
        cache.put((f"label {i}",), np.full(64, float(i), dtype=np.float32))
"""


def test_two_processes_writing_at_once_leave_a_valid_cache(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = EmbeddingCache.for_model(tmp_path, "model", {"model": "m"}, ["t {}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(20):
            assert np.array_equal(cache.get((f"label {i}",)), np.full(64, float(i), dtype=np.float32))
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_info_and_clear_commands(tiny_model, images, tmp_path):
    runner = CliRunner()
    args = ["classify", str(images / "red_circle.png"), "--labels", "a,b,c", "--model", tiny_model,
            "--cache-dir", str(tmp_path), "--format", "jsonl"]
    assert runner.invoke(app, args).exit_code == 0
    info = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert f"location: {tmp_path}" in " ".join(info.stdout.split())  # a long path wraps on a narrow console
    assert "in 3 entries" in info.stdout
    assert "local-dir:" in info.stdout
    cleared = runner.invoke(app, ["cache", "clear", "--model", "no-such-model", "--cache-dir", str(tmp_path)])
    assert "removed cached embeddings of 0 model(s)" in cleared.stderr
    cleared = runner.invoke(app, ["cache", "clear", "--model", "local-dir", "--cache-dir", str(tmp_path)])
    assert "removed cached embeddings of 1 model(s)" in cleared.stderr
    assert "in 0 entries" in runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)]).stdout


def test_long_label_lists_read_one_pack_and_fall_back_when_it_is_damaged(tiny_model, tmp_path, counted):
    loaded = load_model(tiny_model)
    simple = load_template_set("simple")
    cold = build_class_embeddings(loaded, labels(70), simple, open_cache(loaded, simple, tmp_path))
    packs = list(tmp_path.rglob("*.pack"))
    assert len(packs) == 1 and len(counted) == 70
    assert np.array_equal(build_class_embeddings(loaded, labels(70), simple, open_cache(loaded, simple, tmp_path)), cold)
    packs[0].write_bytes(packs[0].read_bytes()[:100])
    counted.clear()
    grown = build_class_embeddings(loaded, labels(71), simple, open_cache(loaded, simple, tmp_path))
    assert counted == ["a photo of a label 70."]  # the other 70 come from their own entries
    assert np.array_equal(grown[:70], cold)
    assert np.array_equal(build_class_embeddings(loaded, labels(70), simple, open_cache(loaded, simple, tmp_path)), cold)
