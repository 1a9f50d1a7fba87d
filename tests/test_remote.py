"""Inputs on object storage: s3:// URIs served by a real S3 protocol server (moto, on localhost), read through
pyarrow's S3 filesystem exactly as a bucket would be; records equal local files', the store keys objects by
URI and sees them change, Ray workers read them too, and sort refuses them."""

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import cli

from clipcli import remote

moto_server = pytest.importorskip("moto.server")
LABELS = "red circle,blue square,green star"


@pytest.fixture(scope="module")
def bucket():
    """A local S3 endpoint with credentials in the environment (what a user's AWS setup provides)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        import pyarrow.fs as pafs

        filesystem = pafs.S3FileSystem(endpoint_override=f"http://{host}:{port}", allow_bucket_creation=True,
                                       region="us-east-1")
        filesystem.create_dir("photos")
        yield filesystem
    remote._filesystems.clear()
    remote._listed.clear()
    server.stop()


def upload(filesystem, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with filesystem.open_output_stream(f"photos/{prefix}/{path.relative_to(local).as_posix()}") as out:
                out.write(path.read_bytes())


@pytest.fixture()
def local_set(images, tmp_path) -> Path:
    folder = tmp_path / "set"
    shutil.copytree(images, folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_classify_reads_objects_like_local_files(bucket, local_set):
    upload(bucket, local_set, "a")
    on_s3 = cli("classify", "s3://photos/a", "s3://photos/a/missing.png", "-m", "demo", "-l", LABELS, "-f", "jsonl",
                "-k", "0")
    local = cli("classify", local_set, local_set / "missing.png", "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "0")
    assert on_s3.exit_code == local.exit_code == 1  # broken.jpg and missing.png
    got, want = records(on_s3), records(local)
    # listed like a folder: sorted, images only (no notes.txt), hidden names skipped
    assert [r["path"] for r in got] == ["s3://photos/a/blue_square.jpg", "s3://photos/a/broken.jpg",
                                        "s3://photos/a/red_circle.png", "s3://photos/a/sub/green_star.webp",
                                        "s3://photos/a/missing.png"]
    assert [r["path"] for r in want] == [str(local_set / p) for p in ("blue_square.jpg", "broken.jpg",
                                                                        "red_circle.png", "sub/green_star.webp",
                                                                        "missing.png")]
    for a, b in zip(got, want):
        assert a.get("predictions") == b.get("predictions")  # the same bytes decode to the same numbers
        assert (a.get("error") or {}).get("type") == (b.get("error") or {}).get("type")
    assert [r.get("error", {}).get("type") for r in got] == [None, "not_an_image", None, None, "not_found"]
    # torch's decoding worker processes (forked after the listing made an S3 client) read objects too
    forked = cli("classify", "s3://photos/a", "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "0", "--backend", "torch",
                 "-j", "2", "-b", "1")  # several batches: decoded in worker processes
    for a, b in zip(records(forked), got[:4], strict=True):
        assert a["path"] == b["path"] and a.get("error") == b.get("error")
        for p, q in zip(a.get("predictions", []), b.get("predictions", []), strict=True):
            assert p["label"] == q["label"] and abs(p["score"] - q["score"]) <= 1e-4


def test_store_keys_objects_by_uri_and_sees_them_change(bucket, local_set, tmp_path):
    upload(bucket, local_set, "b")
    store = tmp_path / "store"
    first = cli("embed", "s3://photos/b", "--store", store, "-m", "demo")
    assert first.exit_code == 1 and "store " in first.stderr and "0 already stored, 3 encoded, 1 unreadable" in first.stderr
    again = cli("embed", "s3://photos/b", "--store", store, "-m", "demo")
    assert "4 already stored, 0 encoded" in again.stderr  # fresh by size and modification time, nothing read
    with bucket.open_output_stream("photos/b/red_circle.png") as out:  # a new version of one object
        out.write((local_set / "sub" / "green_star.webp").read_bytes())
    changed = cli("classify", "s3://photos/b/red_circle.png", "--store", store, "-m", "demo", "-l", LABELS, "-f", "jsonl")
    assert changed.exit_code == 0 and "0 already stored, 1 encoded" in changed.stderr
    assert records(changed)[0]["predictions"][0]["label"] == "green star"
    bucket.delete_file("photos/b/blue_square.jpg")
    pruned = cli("embed", "--store", store, "-m", "demo", "--prune")
    assert pruned.exit_code == 0 and "1 pruned" in pruned.stderr
    whole = cli("classify", "--store", store, "-l", LABELS, "-f", "jsonl")
    assert sorted(r["path"] for r in records(whole)) == ["s3://photos/b/broken.jpg", "s3://photos/b/red_circle.png",
                                                         "s3://photos/b/sub/green_star.webp"]


@pytest.mark.slow
def test_ray_workers_read_objects_too(bucket, local_set):
    pytest.importorskip("ray")
    upload(bucket, local_set, "c")
    local = cli("classify", "s3://photos/c", "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "0")
    on_ray = cli("classify", "s3://photos/c", "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "0", "--engine", "ray")
    import ray

    ray.shutdown()
    assert on_ray.exit_code == local.exit_code == 1
    for a, b in zip(records(on_ray), records(local), strict=True):
        assert a["path"] == b["path"] and a.get("error") == b.get("error")
        for p, q in zip(a.get("predictions", []), b.get("predictions", []), strict=True):
            assert p["label"] == q["label"] and abs(p["score"] - q["score"]) <= 1e-5


def test_sort_refuses_objects_before_any_work(bucket, tmp_path):
    result = cli("sort", "s3://photos/a", "--into", tmp_path / "sorted", "-m", "demo", "-l", LABELS)
    assert result.exit_code == 2
    assert result.output.strip() == ("error: clip sort works on local files; s3://photos/a is on object storage (copy "
                                     "it here first, or use clip classify to get its labels)")


def test_an_unreachable_endpoint_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(remote, "_filesystems", {})
    result = cli("classify", "s3://photos/x", "-m", "demo", "-l", LABELS)
    assert result.exit_code == 2 and result.output.startswith("error: cannot list s3://photos/x: ")
    assert len(result.output.strip().splitlines()) == 1


def test_options_on_the_uri_go_with_every_listed_object(bucket, local_set, monkeypatch):
    upload(bucket, local_set, "d")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint comes from the URI alone now
    monkeypatch.setattr(remote, "_filesystems", {})
    options = f"?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    result = cli("classify", f"s3://photos/d/sub{options}", "-m", "demo", "-l", LABELS, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    [record] = records(result)
    assert record["path"] == f"s3://photos/d/sub/green_star.webp{options}"
    assert record["predictions"][0]["label"] == "green star"


def test_a_video_on_object_storage_is_classified_like_the_local_file(bucket, tmp_path):
    from video_helpers import make_video

    local = make_video(tmp_path / "walk.mp4", [(3, ("red", "circle")), (3, ("blue", "square"))], size=(96, 72))
    upload(bucket, tmp_path, "videos")
    args = ("-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "1", "--every", "1")
    on_s3 = records(cli("classify", "s3://photos/videos", *args))
    here = records(cli("classify", local, *args))
    assert [r["path"] for r in on_s3] == ["s3://photos/videos/walk.mp4"] * 3  # the video, then its two shots
    assert [{k: v for k, v in r.items() if k != "path"} for r in on_s3] == \
        [{k: v for k, v in r.items() if k != "path"} for r in here]
