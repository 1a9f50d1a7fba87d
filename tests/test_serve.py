"""`clip serve`: the API against the CLI's own JSON (records within 1e-6), OpenAI-style embeddings against the
library, limits (413, 503 + Retry-After, 504 with the work dropped, the bomb guard), JSON errors, the API key,
CORS, --allow-dir, search and thumbnails of a store, metrics, the batcher on its own, and a real `clip serve`
process: a load test on 127.0.0.1 and SIGTERM draining in-flight requests."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="clip serve needs the serve extra: pip install '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the service tests need httpx")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from clipcli.cli import app as cli_app  # noqa: E402
from clipcli.demo import shapes  # noqa: E402
from clipcli.options import ModelOptions  # noqa: E402
from clipcli.service import ServeConfig, check_exposure, create_app  # noqa: E402
from clipcli.service.app import load_service  # noqa: E402
from clipcli.service.batcher import Batcher, DeadlineExceeded, QueueFull  # noqa: E402

LABELS = ["red circle", "blue square", "green star", "yellow triangle"]
DEMO = ServeConfig(model=ModelOptions("demo"))


def cli(*args):
    result = CliRunner().invoke(cli_app, [str(a) for a in args])
    return result


def cli_json(*args) -> dict:
    result = cli(*args, "-f", "json", "-q")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    shapes.draw_pil("red", "circle", seed=1).save(folder / "red_circle.png")
    shapes.draw_pil("blue", "square", size=96, seed=2).save(folder / "blue_square.jpg", quality=95)
    shapes.draw_pil("green", "star", seed=3).save(folder / "green_star.webp")
    shapes.draw_pil("yellow", "triangle", seed=4).save(folder / "yellow_triangle.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(DEMO)) as test_client:
        yield test_client


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def assert_same_records(served: list[dict], expected: list[dict]) -> None:
    """Records equal to the CLI's: same errors, same ranked labels, scores within 1e-6 (paths by file name)."""
    assert len(served) == len(expected)
    for got, want in zip(served, expected):
        assert Path(got["path"]).name == Path(want["path"]).name
        if "error" in want:
            assert got["error"] == want["error"]
            continue
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                   [p["score"] for p in want["predictions"]], rtol=0, atol=1e-6)


# --- classify ----------------------------------------------------------------------------------------------------
def test_multipart_records_equal_clip_classify_json(client, pictures):
    names = ["red_circle.png", "blue_square.jpg", "broken.png", "green_star.webp", "yellow_triangle.png"]
    files = [("image", (name, (pictures / name).read_bytes())) for name in names]
    response = client.post("/v1/classify", files=files, data={"labels": ",".join(LABELS), "top_k": "0"})
    assert response.status_code == 200, response.text
    served = response.json()
    expected = cli_json("classify", *(pictures / n for n in names), "-m", "demo", "-l", ",".join(LABELS), "-k", "0")
    assert_same_records(served["results"], expected["results"])
    assert {k: served[k] for k in ("model", "templates", "labels", "score")} == \
        {k: expected[k] for k in ("model", "templates", "labels", "score")}
    assert served["results"][2]["error"]["type"] == "not_an_image"  # a bad image is its record, not the request's
    assert [r["predictions"][0]["label"] for r in served["results"] if "predictions" in r] == LABELS


def test_hugging_face_json_with_a_hypothesis_template_equals_the_cli_with_that_template(client, pictures, tmp_path):
    template = "a drawing of a {}."
    body = {"inputs": {"image": [b64(pictures / "red_circle.png"),
                                 "data:image/png;base64," + b64(pictures / "yellow_triangle.png")],
                       "candidateLabels": LABELS},
            "parameters": {"hypothesis_template": template, "top_k": 3}}
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    (tmp_path / "one.yaml").write_text(json.dumps({"name": "one", "templates": [template]}))
    expected = cli_json("classify", pictures / "red_circle.png", pictures / "yellow_triangle.png", "-m", "demo",
                        "-l", ",".join(LABELS), "-k", "3", "--templates", tmp_path / "one.yaml")
    served = response.json()["results"]
    assert [r["path"] for r in served] == ["inputs.image[0]", "inputs.image[1]"]
    for record in served:  # the paths differ: the CLI names files, the request sends bytes
        record["path"] = ""
    for record in expected["results"]:
        record["path"] = ""
    assert_same_records(served, expected["results"])


def test_hugging_face_form_with_labels_in_parameters(client, pictures):
    body = {"inputs": b64(pictures / "blue_square.jpg"),
            "parameters": {"candidate_labels": LABELS, "hypothesis_template": "This is a photo of {}."}}
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] == "blue square"
    assert response.json()["templates"] == "hypothesis_template"
    assert client.get("/nowhere").json()["error"]["type"] == "http"  # every error has the one JSON shape


def test_label_embeddings_are_encoded_once_per_labels_and_templates(pictures):
    service = load_service(DEMO)
    texts = []
    encode_texts = service.loaded.encode_texts
    service.loaded.encode_texts = lambda batch, *args: texts.append(len(batch)) or encode_texts(batch, *args)
    files = [("image", ("r.png", (pictures / "red_circle.png").read_bytes()))]
    with TestClient(create_app(DEMO, service)) as served:
        first = served.post("/v1/classify", files=files, data={"labels": "red circle,blue square"}).json()
        encoded = len(texts)
        again = served.post("/v1/classify", files=files, data={"labels": "red circle,blue square"}).json()
        assert len(texts) == encoded  # the same labels and templates: nothing encoded again
        served.post("/v1/classify", files=files, data={"labels": "red circle,blue square", "templates": "simple"})
    assert first == again
    assert service.scorers.misses == 2  # built for (labels, imagenet) and (labels, simple); the rest from memory
    assert encoded > 0 and len(texts) > encoded  # the new template set was encoded


def test_template_set_and_other_equal_the_cli(client, pictures):
    body = {"inputs": {"image": b64(pictures / "green_star.webp"), "candidateLabels": "red circle,blue square"},
            "parameters": {"templates": "simple", "other": True, "other_threshold": 0.3, "top_k": 2}}
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    expected = cli_json("classify", pictures / "green_star.webp", "-m", "demo", "-l", "red circle,blue square",
                        "-k", "2", "--templates", "simple", "--other", "--other-threshold", "0.3")
    served = response.json()
    served["results"][0]["path"] = expected["results"][0]["path"]
    assert_same_records(served["results"], expected["results"])
    assert served["other"] == expected["other"]
    assert served["results"][0]["predictions"][0]["label"] == expected["results"][0]["predictions"][0]["label"]


def test_chinese_labels_and_a_uploaded_exif_rotated_photo(client, pictures, tmp_path):
    from PIL import Image

    # EXIF orientation 6 (turned 90 degrees): decoded upright by the project's decode path, as the CLI does
    image = shapes.draw_pil("red", "heart", size=120, seed=9).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    files = [("image", ("turned.jpg", (tmp_path / "turned.jpg").read_bytes()))]
    response = client.post("/v1/classify", files=files, data={"labels": "red heart,红色的心,blue square"})
    assert response.status_code == 200, response.text
    expected = cli_json("classify", tmp_path / "turned.jpg", "-m", "demo", "-l", "red heart,红色的心,blue square")
    assert response.json()["labels"] == ["red heart", "红色的心", "blue square"]
    assert_same_records(response.json()["results"], expected["results"])


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ('{"inputs": {"image": "%%%", "candidateLabels": ["a"]}}', 400, "not valid base64"),
    ('{"inputs": {"image": "data:image/png,abc", "candidateLabels": ["a"]}}', 400, "base64-encoded"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": []}}', 400, "no labels"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": [" ", ""]}}', 400, "no labels"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": ["a"]}, "parameters": {"templates": "nope"}}', 400,
     "unknown template set 'nope'"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": ["a"]}, "parameters": {"templates": "/etc/x.yaml"}}',
     400, "unknown template set"),  # a request never names a server-side template file
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": ["a"]}, "parameters": {"hypothesis_template": "x"}}',
     400, "exactly one {}"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": ["a"]}, "parameters": {"top_k": -1}}', 400, "top_k"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": ["a"]}, "parameters": {"score": "sigmoid"}}', 400,
     "sigmoid loss"),
    ('{"inputs": {"image": "iVBORw0KGgo=", "candidateLabels": ["a"]}, "parameters": {"topk": 2}}', 400,
     "unknown parameter(s) topk"),
    ('{"inputs": {"candidateLabels": ["a"]}}', 400, "no image given"),
    ('[1, 2]', 400, "expected {\"inputs\""),
    ('{"inputs": {"image": {"path": "/etc/passwd"}, "candidateLabels": ["a"]}}', 403, "--allow-dir"),
    ('{"inputs": {"image": "https://example.com/a.jpg", "candidateLabels": ["a"]}}', 403, "fetches no URLs"),
])
def test_bad_requests_are_one_json_error_with_the_right_status(client, body, status, words):
    response = client.post("/v1/classify", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"]
    assert "Traceback" not in response.text


def test_too_many_images_in_one_request_is_one_400(client, pictures):
    from clipcli.service.app import MAX_IMAGES

    red = (pictures / "red_circle.png").read_bytes()
    form = client.post("/v1/classify", files=[("image", (f"{n}.png", red)) for n in range(MAX_IMAGES + 1)],
                       data={"labels": "a,b"})
    assert form.status_code == 400 and "Too many files" in form.json()["error"]["message"]
    body = {"inputs": {"image": [base64.b64encode(red).decode()] * (MAX_IMAGES + 1), "candidateLabels": ["a"]}}
    listed = client.post("/v1/classify", json=body)
    assert listed.status_code == 400 and f"at most {MAX_IMAGES}" in listed.json()["error"]["message"]


def test_a_decompression_bomb_is_that_images_error_record(pictures, tmp_path):
    from PIL import Image

    Image.new("RGB", (3000, 2000)).save(tmp_path / "big.png")  # 6 MP, above a 5 MP limit
    config = ServeConfig(model=ModelOptions("demo"), max_megapixels=5)
    with TestClient(create_app(config)) as small:
        files = [("image", ("big.png", (tmp_path / "big.png").read_bytes())),
                 ("image", ("red_circle.png", (pictures / "red_circle.png").read_bytes()))]
        response = small.post("/v1/classify", files=files, data={"labels": ",".join(LABELS)})
    assert response.status_code == 200
    big, red = response.json()["results"]
    assert big["error"]["type"] == "too_large" and "above the 5 MP limit" in big["error"]["message"]
    assert red["predictions"][0]["label"] == "red circle"


def test_an_upload_above_the_limit_is_413_with_or_without_a_length(pictures):
    config = ServeConfig(model=ModelOptions("demo"), max_upload=20_000)
    payload = json.dumps({"inputs": {"image": base64.b64encode(os.urandom(30_000)).decode(),
                                     "candidateLabels": ["a"]}}).encode()
    with TestClient(create_app(config)) as small:
        declared = small.post("/v1/classify", content=payload, headers={"Content-Type": "application/json"})

        def chunks():  # no Content-Length: the body is counted as it arrives
            for start in range(0, len(payload), 4096):
                yield payload[start:start + 4096]

        streamed = small.post("/v1/classify", content=chunks(), headers={"Content-Type": "application/json"})
        files = [("image", ("x.png", os.urandom(30_000)))]
        form = small.post("/v1/classify", files=files, data={"labels": "a"})
        fine = small.post("/v1/classify", files=[("image", ("r.png", (pictures / "red_circle.png").read_bytes()))],
                          data={"labels": "a,b"})
    for response in (declared, streamed, form):
        assert response.status_code == 413, response.text
        assert "limit of 20000 bytes" in response.json()["error"]["message"]
    assert fine.status_code == 200


# --- embeddings ---------------------------------------------------------------------------------------------------
def test_embeddings_are_openai_shaped_and_equal_the_librarys(client, pictures):
    from clipcli.embeddings import open_encoder

    body = {"input": ["a red circle", "data:image/png;base64," + b64(pictures / "red_circle.png"),
                      {"image": b64(pictures / "blue_square.jpg")}, "红色的圆"], "model": "demo"}
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "list" and answer["model"] == "demo"
    assert [d["index"] for d in answer["data"]] == [0, 1, 2, 3]
    assert answer["usage"]["prompt_tokens"] > 0 and answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"]
    with open_encoder(ModelOptions("demo")) as encoder:
        texts = np.asarray(encoder.model.encode_texts(["a red circle", "红色的圆"]))
        images = np.concatenate([f for _, f in encoder.batches([str(pictures / "red_circle.png"),
                                                                 str(pictures / "blue_square.jpg")])])
    got = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    np.testing.assert_allclose(got[[0, 3]], texts, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[[1, 2]], images, rtol=0, atol=1e-6)
    packed = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    np.testing.assert_array_equal(vectors, got)  # the same float32 values, packed little-endian


def test_embeddings_errors(client):
    assert client.post("/v1/embeddings", json={"text": "x"}).status_code == 400
    bad = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"})
    assert bad.status_code == 400 and "encoding_format" in bad.json()["error"]["message"]
    unreadable = client.post("/v1/embeddings", json={"input": ["data:image/png;base64,aGVsbG8="]})
    assert unreadable.status_code == 400 and "input[0]" in unreadable.json()["error"]["message"]


# --- the batcher on its own ------------------------------------------------------------------------------------------
class Recorder:
    """An encoder that records its batch sizes and can be held (to fill the queue)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, pixels):
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(pixels))
        return np.asarray(pixels).reshape(len(pixels), -1)[:, :2] * 2


def test_batcher_encodes_requests_that_arrive_together_in_one_call():
    encode = Recorder()
    encode.gate.clear()
    batcher = Batcher(encode, max_batch=8, max_wait=0.05, max_queue=64).start()
    first = batcher.submit(np.zeros((1, 2)))
    assert encode.entered.wait(5)  # the first job is being encoded; the next ones queue up meanwhile
    futures = [batcher.submit(np.full((1, 2), i)) for i in range(1, 11)]
    encode.gate.set()
    results = [f.result(5) for f in [first, *futures]]
    batcher.close()
    assert encode.sizes == [1, 8, 2]  # at most max_batch per call, in arrival order
    assert [r.tolist() for r in results] == [[[2 * i, 2 * i]] for i in range(11)]
    assert batcher.stats.images == 11 and batcher.stats.batches == 3


def test_batcher_queue_is_bounded_and_late_work_is_dropped():
    encode = Recorder()
    encode.gate.clear()
    batcher = Batcher(encode, max_batch=4, max_wait=0, max_queue=3).start()
    running = batcher.submit(np.zeros((1, 2)))
    assert encode.entered.wait(5)
    late = batcher.submit(np.ones((2, 2)), deadline=time.monotonic() + 0.05)
    kept = batcher.submit(np.ones((1, 2)))
    with pytest.raises(QueueFull) as full:
        batcher.submit(np.ones((1, 2)))  # 3 images queued: no room
    assert full.value.retry_after >= 1
    time.sleep(0.1)  # the late job's deadline passes while it waits
    encode.gate.set()
    running.result(5)
    assert kept.result(5).shape == (1, 2)
    with pytest.raises(DeadlineExceeded):
        late.result(5)
    batcher.close()
    assert encode.sizes == [1, 1]  # the late job was never encoded
    assert batcher.stats.dropped == 1


def test_batcher_skips_a_cancelled_job_and_close_drains_the_queue():
    encode = Recorder()
    encode.gate.clear()
    batcher = Batcher(encode, max_batch=4, max_wait=0, max_queue=8).start()
    running = batcher.submit(np.zeros((1, 2)))
    assert encode.entered.wait(5)
    gone = batcher.submit(np.ones((3, 2)))
    waiting = batcher.submit(np.ones((1, 2)))
    assert gone.cancel()
    encode.gate.set()
    batcher.close()  # encodes what is queued, then stops
    assert running.done() and waiting.result(0).shape == (1, 2)
    assert encode.sizes == [1, 1]


# --- limits over HTTP: 503 and 504 -----------------------------------------------------------------------------------
@pytest.fixture()
def held_service():
    """The demo service with an encoder that can be held: requests queue behind it."""
    config = ServeConfig(model=ModelOptions("demo"), max_batch=1, max_wait=0, max_queue=1, timeout=1.0)
    service = load_service(config)
    inner = service.batcher.encode
    hold = threading.Event()
    hold.set()
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        hold.wait(20)
        return inner(pixels)

    service.batcher = Batcher(encode, 1, 0, 1, on_batch=service.batcher.on_batch)
    yield service, hold, calls
    hold.set()


def test_a_full_queue_is_503_with_retry_after_and_a_late_request_is_504_its_work_dropped(held_service, pictures):
    service, hold, calls = held_service
    files = [("image", ("r.png", (pictures / "red_circle.png").read_bytes()))]
    with TestClient(create_app(service.config, service)) as held:
        hold.clear()
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(held.post, "/v1/classify", files=files, data={"labels": "a,b"})
            while not calls:  # the first request is in the model
                time.sleep(0.01)
            second = pool.submit(held.post, "/v1/classify", files=files, data={"labels": "a,b"})
            while service.batcher.depth < 1:  # the second waits in the queue (its one place)
                time.sleep(0.01)
            third = held.post("/v1/classify", files=files, data={"labels": "a,b"})
            assert third.status_code == 503
            assert third.headers["Retry-After"] == "1" and "busy" in third.json()["error"]["message"]
            assert first.result(10).status_code == 504  # held past its 1 s deadline
            assert second.result(10).status_code == 504
            assert "longer than 1 s" in second.result().json()["error"]["message"]
        hold.set()
        after = held.post("/v1/classify", files=files, data={"labels": "a,b"})
        assert after.status_code == 200
    assert calls == [1, 1]  # the first request and the one after: the queued, timed-out one was never encoded


# --- security --------------------------------------------------------------------------------------------------------
def test_an_api_key_guards_every_endpoint_but_health(pictures):
    config = ServeConfig(model=ModelOptions("demo"), api_key="s3cret")
    with TestClient(create_app(config)) as keyed:
        assert keyed.get("/health").status_code == 200
        for method, path in (("GET", "/"), ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/docs"),
                             ("GET", "/static/app.js"), ("POST", "/v1/classify"), ("POST", "/v1/embeddings")):
            response = keyed.request(method, path)
            assert response.status_code == 401, path
            assert response.headers["WWW-Authenticate"].startswith("Basic")  # the browser asks for it on the page
        assert keyed.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert keyed.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert keyed.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert keyed.get("/", auth=("anyone", "s3cret")).status_code == 200
        assert keyed.get("/", auth=("anyone", "s3cre")).status_code == 401


def test_any_other_address_needs_a_key():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None)
    from clipcli.errors import UsageError

    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(UsageError, match="--api-key"):
            check_exposure(host, None)
        check_exposure(host, "key")
    result = cli("serve", "--model", "demo", "--host", "0.0.0.0")  # refused before the model loads
    assert result.exit_code == 2 and "--api-key" in result.output


def test_a_port_in_use_is_one_line_before_the_model_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--model", "no-such-model", "--port", port)  # refused before the model is looked up
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output


def test_the_key_can_come_from_the_environment(monkeypatch):
    with socket.socket() as taken:  # the port is taken, so the command stops right after the key check
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        monkeypatch.delenv("CLIPCLI_API_KEY", raising=False)
        refused = cli("serve", "--model", "demo", "--host", "0.0.0.0", "--port", port)
        monkeypatch.setenv("CLIPCLI_API_KEY", "from-env")
        passed = cli("serve", "--model", "demo", "--host", "0.0.0.0", "--port", port)
    assert refused.exit_code == 2 and "--api-key" in refused.output
    assert passed.exit_code == 2 and "cannot listen on 0.0.0.0" in passed.output  # past the key check


def test_no_cors_unless_asked(pictures):
    origin = {"Origin": "http://elsewhere.example"}
    with TestClient(create_app(DEMO)) as plain:
        assert "access-control-allow-origin" not in plain.get("/v1/models", headers=origin).headers
    config = ServeConfig(model=ModelOptions("demo"), cors=("http://elsewhere.example",))
    with TestClient(create_app(config)) as open_:
        allowed = open_.get("/v1/models", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "http://elsewhere.example"
        other = open_.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_allow_dir_reads_inside_and_never_outside(pictures, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "red.png").write_bytes((pictures / "red_circle.png").read_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes((pictures / "blue_square.jpg").read_bytes())
    (allowed / "link.png").symlink_to(outside)
    config = ServeConfig(model=ModelOptions("demo"), allow_dirs=(str(allowed),))

    def ask(path):
        return served.post("/v1/classify", json={"inputs": {"image": {"path": path}, "candidateLabels": LABELS}})

    with TestClient(create_app(config)) as served:
        inside = ask("red.png")
        assert inside.status_code == 200, inside.text
        assert inside.json()["results"][0]["predictions"][0]["label"] == "red circle"
        assert ask(str(allowed / "red.png")).status_code == 200
        for escape in ("../secret.png", str(outside), "link.png", "/etc/passwd", "red.png/../../secret.png"):
            refused = ask(escape)
            assert refused.status_code == 403, escape
            assert "outside the folders" in refused.json()["error"]["message"]
        encoded = ask("..%2Fsecret.png")  # never URL-decoded: a file of that name inside, which does not exist
        assert encoded.status_code == 200
        assert encoded.json()["results"][0]["error"]["type"] == "not_found"


class _Site:
    """A local web server: /ok/red.png, /secret.png, and /ok/away (a redirect to /secret.png)."""

    def __init__(self, red: bytes, secret: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        site = self
        self.asked: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                site.asked.append(self.path)
                if self.path == "/ok/away":
                    self.send_response(302)
                    self.send_header("Location", "/secret.png")
                    self.end_headers()
                    return
                body = {"/ok/red.png": red, "/secret.png": secret}.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_allow_urls_fetches_under_the_prefix_only(pictures):
    site = _Site((pictures / "red_circle.png").read_bytes(), (pictures / "blue_square.jpg").read_bytes())
    config = ServeConfig(model=ModelOptions("demo"), allow_urls=(site.base + "/ok/",))

    def ask(url):
        return served.post("/v1/classify", json={"inputs": {"image": {"url": url}, "candidateLabels": LABELS}})

    try:
        with TestClient(create_app(config)) as served:
            fetched = ask(site.base + "/ok/red.png")
            assert fetched.status_code == 200, fetched.text
            assert fetched.json()["results"][0]["predictions"][0]["label"] == "red circle"
            for outside in (site.base + "/secret.png", site.base + "/ok/../secret.png",
                            site.base + "/ok/%2e%2e/secret.png", site.base + "/ok%2fsecret.png",
                            "http://user@" + site.base[7:] + "/ok/red.png",
                            site.base.replace("127.0.0.1", "localhost") + "/ok/red.png", "file:///etc/passwd"):
                refused = ask(outside)
                assert refused.status_code == 403, outside
            redirected = ask(site.base + "/ok/away").json()["results"][0]
            assert redirected["error"]["type"] == "fetch_failed" and "not followed" in redirected["error"]["message"]
            missing = ask(site.base + "/ok/none.png").json()["results"][0]
            assert missing["error"] == {"type": "fetch_failed", "message": "HTTP 404 from the server"}
    finally:
        site.server.shutdown()
    assert "/secret.png" not in site.asked  # never fetched, also not through the redirect
    assert site.asked == ["/ok/red.png", "/ok/away", "/ok/none.png"]


# --- search ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(pictures, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "pics.store"
    result = cli("embed", pictures, "--store", path, "-m", "demo", "-q")
    assert result.exit_code in (0, 1), result.output
    return path


def test_search_equals_clip_search_and_thumbnails_are_only_of_store_rows(store, pictures):
    config = ServeConfig(model=ModelOptions("demo"), store=str(store))
    with TestClient(create_app(config)) as served:
        response = served.post("/v1/search", json={"text": "green star", "k": 3})
        assert response.status_code == 200, response.text
        found = response.json()
        expected = cli_json("search", "green star", "--store", store, "-k", "3")
        want = expected.get("results", expected.get("hits"))
        assert [Path(h["path"]).name for h in found["results"]] == [Path(h["path"]).name for h in want]
        np.testing.assert_allclose([h["score"] for h in found["results"]], [h["score"] for h in want],
                                   rtol=0, atol=1e-6)
        assert Path(found["results"][0]["path"]).name == "green_star.webp"
        by_image = served.post("/v1/search", files={"image": ("q.png", (pictures / "red_circle.png").read_bytes())},
                               data={"k": "1"})
        assert Path(by_image.json()["results"][0]["path"]).name == "red_circle.png"
        thumb = served.get("/v1/thumbnail", params={"path": found["results"][0]["path"]})
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        for path in ("/etc/passwd", str(pictures / ".." / "x.png"), str(store / "manifest.json")):
            refused = served.get("/v1/thumbnail", params={"path": path})
            assert refused.status_code == 403 and "not an image of the served store" in refused.text
        assert served.post("/v1/search", json={}).status_code == 400
    with TestClient(create_app(DEMO)) as storeless:
        assert storeless.post("/v1/search", json={"text": "x"}).status_code == 404


# --- health, models, metrics, docs ---------------------------------------------------------------------------------
def test_health_models_docs_and_metrics(client, pictures):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "demo"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/embeddings", "/v1/search", "/health"} <= set(spec["paths"])
    before = _metric(client, 'clipcli_requests_total{endpoint="/v1/classify",status="200"}')
    files = [("image", (n, (pictures / n).read_bytes())) for n in ("red_circle.png", "blue_square.jpg")]
    assert client.post("/v1/classify", files=files, data={"labels": "a,b"}).status_code == 200
    assert _metric(client, 'clipcli_requests_total{endpoint="/v1/classify",status="200"}') == before + 1
    assert _metric(client, "clipcli_batch_images_count") >= 1
    assert _metric(client, "clipcli_images_encoded_total") >= 2
    assert _metric(client, "clipcli_queue_images") == 0
    assert _metric(client, 'clipcli_request_seconds_count{endpoint="/v1/classify"}') >= 1
    assert _metric(client, "clipcli_images_per_second") > 0


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_page_is_served_with_no_external_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>clip serve</title>" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    import re

    for name in ("index.html", "app.js", "style.css"):
        text = (Path(__file__).parent.parent / "clipcli" / "service" / "static" / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert "innerHTML" not in text, name  # labels and paths go in as text only


# --- a real process on 127.0.0.1 -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args, env=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "clipcli", "serve", "--model", "demo", "--port", str(port),
                                "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(f"clip serve ended: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("clip serve did not open its port")


@pytest.fixture(scope="module")
def server():
    process, url = start_server()
    yield url
    process.terminate()
    process.wait(30)


@pytest.mark.e2e
@pytest.mark.slow
def test_load_on_loopback_every_answer_checked(server, pictures):
    names = ["red_circle.png", "blue_square.jpg", "green_star.webp", "yellow_triangle.png", "broken.png"]
    expected = {n: r for n, r in zip(names, cli_json("classify", *(pictures / n for n in names), "-m", "demo",
                                                     "-l", ",".join(LABELS))["results"])}
    clients, per_client = 16, 12

    def one_client(index: int) -> list[tuple[str, dict]]:
        answers = []
        with httpx.Client(base_url=server, timeout=60) as http:
            for step in range(per_client):
                name = names[(index + step) % len(names)]
                response = http.post("/v1/classify", files=[("image", (name, (pictures / name).read_bytes()))],
                                     data={"labels": ",".join(LABELS)})
                assert response.status_code == 200, response.text
                answers.append((name, response.json()["results"][0]))
        return answers

    with ThreadPoolExecutor(clients) as pool:
        answers = [a for batch in pool.map(one_client, range(clients)) for a in batch]
    assert len(answers) == clients * per_client  # nothing lost
    for name, record in answers:
        assert_same_records([record], [expected[name]])
    metrics = httpx.get(server + "/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith('clipcli_requests_total{endpoint="/v1/classify"'))
    assert float(line.rsplit(" ", 1)[1]) >= clients * per_client
    sizes = next(x for x in metrics.splitlines() if x.startswith("clipcli_batch_images_count"))
    readable = sum("predictions" in record for _, record in answers)
    assert float(sizes.rsplit(" ", 1)[1]) < readable  # fewer model calls than images: some were batched together


@pytest.mark.e2e
def test_sigterm_drains_in_flight_requests_and_exits_0(pictures):
    process, url = start_server("--max-wait-ms", "1500", "--max-batch", "64")  # a request waits 1.5 s for company
    files = [("image", ("r.png", (pictures / "red_circle.png").read_bytes()))]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, url + "/v1/classify", files=files, data={"labels": ",".join(LABELS)},
                              timeout=30)
        deadline = time.monotonic() + 10
        while 'clipcli_requests_in_flight{endpoint="/v1/classify"} 1.0' not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        answer = pending.result(30)
    assert answer.status_code == 200
    assert answer.json()["results"][0]["predictions"][0]["label"] == "red circle"
    assert process.wait(30) == 0
    assert "Traceback" not in process.stderr.read()


def test_search_finds_a_stored_video_moment_and_shows_its_frame(tmp_path):
    from video_helpers import make_video

    video = make_video(tmp_path / "walk.mp4", [(4, ("red", "circle")), (4, ("blue", "square"))], size=(96, 72))
    store = tmp_path / "store"
    assert CliRunner().invoke(cli_app, ["embed", str(video), "-m", "demo", "--store", str(store), "--every",
                                        "1"]).exit_code == 0
    with TestClient(create_app(ServeConfig(model=ModelOptions("demo"), store=str(store)))) as served:
        found = served.post("/v1/search", json={"text": "blue square", "k": 1}).json()
        assert found["searched"] == 1  # one video, not its 8 frames
        (moment,) = found["results"]
        assert moment["path"] == str(video) and moment["start"] <= 4.0 <= moment["end"] and 4.0 <= moment["best"]
        frame = served.get("/v1/thumbnail", params={"path": f"{video}#t={moment['best']:.3f}"})
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        assert served.get("/v1/thumbnail", params={"path": str(video)}).status_code == 403  # not a stored row
